//! A backup holds its structure to the restore guard before it is called OK ([`Structure::check`]).
//! The guard parses every statement, and in a fleet run that was half of the tool's own CPU: a
//! hundred statements a tenant, the same hundred for every tenant but for the schema's name
//! (django-tenants migrates them all alike). [`PassedShapes`] remembers, for one run, the
//! structures the guard has passed with the schema's name taken out, and a tenant whose structure
//! has the same shape is not parsed again.
//!
//! Why a shape's verdict holds for every schema of that shape: the shape is the statements' exact
//! text with each `schema.` qualifier (the name as a whole word, followed by a dot) replaced by a
//! NUL byte, which no SQL text holds, and a text has a shape only if what is left names the
//! schema in no other way: not in any case, quoted or not, nor inside a string, and with no
//! backslash escape or `U&` spelling anywhere. Two structures of one shape are then the same
//! statements with one name in the same places, and neither name anywhere else. The guard judges
//! a statement by its names against the scope: the scope's own schema, and the run's
//! [`guard::Names`], which are the same for every tenant of a run. What `Names` says about the
//! schema's own name (is it a schema the database has, does an extension or an allowed function
//! live there, is the word also a catalog function's, relation's or shared function's name) and
//! the name's length (the guard bounds a statement's bytes) are part of the shape too. Only plain
//! lower-case names that are no keyword (read alike quoted or bare) are remembered; any other
//! tenant is checked in full, as are all of them when a shape fails.

use std::collections::HashSet;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::structure::Structure;
use crate::restore::guard::{self, Scope};

/// Shapes kept at most: a fleet has a few (one per migration state), and memory stays flat.
const MAX_SHAPES: usize = 256;

/// What a dump checks its structure against: the restore's scope, and the shapes passed so far.
#[derive(Clone, Copy)]
pub struct SelfCheck<'a> {
    pub scope: &'a Scope,
    pub passed: &'a PassedShapes,
}

/// The structures' shapes the guard has passed in this run (see the module's comment). Holds for
/// one run's [`guard::Names`] only: keep it beside them.
#[derive(Default)]
pub struct PassedShapes {
    passed: Mutex<HashSet<[u8; 32]>>,
}

impl PassedShapes {
    /// [`Structure::check`], unless a structure of the same shape passed already in this run.
    pub fn check(&self, structure: &Structure, scope: &Scope) -> Result<(), String> {
        let Some(shape) = shape(structure, scope) else {
            return structure.check(scope);
        };
        if self.passed.lock().unwrap_or_else(|e| e.into_inner()).contains(&shape) {
            return Ok(());
        }
        structure.check(scope)?;
        let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        if passed.len() < MAX_SHAPES {
            passed.insert(shape);
        }
        Ok(())
    }
}

/// The structure's shape under `scope`, or None when its schema's name is not a plain one.
fn shape(structure: &Structure, scope: &Scope) -> Option<[u8; 32]> {
    let schema = scope.schema.as_str();
    let plain = schema
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain || scope.dumped_as.is_some() || !one_plain_word(schema) {
        return None;
    }
    let mut h = Sha256::new();
    let names: &guard::Names = &scope.names;
    let mut own: Vec<String> = names
        .extension_members
        .iter()
        .filter(|(s, _)| s == schema)
        .map(|(_, n)| format!("x:{n}"))
        .chain(
            names
                .functions
                .iter()
                .filter(|(s, _)| s == schema)
                .map(|(_, n)| format!("f:{n}")),
        )
        .collect();
    own.sort();
    let facts = [
        names.schemas.contains(schema),
        names.catalog_functions.contains(schema),
        names.shared_functions.contains(schema),
        names.catalog_relations.contains(schema),
    ];
    h.update(facts.map(u8::from));
    h.update(scope.lock_timeout_ms.to_le_bytes());
    h.update((schema.len() as u64).to_le_bytes());
    for n in &own {
        piece(&mut h, n.as_bytes());
    }
    h.update([0xff]);
    let texts = structure
        .pre_data
        .iter()
        .chain(&structure.post_data)
        .map(|d| d.sql.as_str())
        .chain(structure.schema_comment.as_deref());
    for sql in texts {
        let text = without_schema(sql, schema);
        if names_it_otherwise(&text, schema) {
            return None;
        }
        piece(&mut h, &text);
    }
    Some(h.finalize().into())
}

/// Does a text with its qualifiers taken out still name `schema` somehow, or spell a name in a
/// way not read here (backslash escapes, `U&`)?
fn names_it_otherwise(text: &[u8], schema: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    memchr::memchr(b'\\', &lower).is_some()
        || memchr::memmem::find(&lower, b"u&").is_some()
        || memchr::memmem::find(&lower, schema.as_bytes()).is_some()
}

/// Is `name` one identifier to the parser, and no keyword (which bare would read otherwise)?
fn one_plain_word(name: &str) -> bool {
    use pg_query::protobuf::KeywordKind;
    matches!(pg_query::scan_tokens(name).as_deref(), Ok([t]) if t.keyword_kind == KeywordKind::NoKeyword as i32
        && t.start == 0 && t.end as usize == name.len())
}

/// A length, then the bytes: no two sequences of pieces hash alike by running together.
fn piece(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// `sql` with every `schema.` and `"schema".` that starts a word replaced by `\0.` and `"\0".`.
fn without_schema(sql: &str, schema: &str) -> Vec<u8> {
    let (text, name) = (sql.as_bytes(), schema.as_bytes());
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'"' || b >= 0x80;
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let here = &text[i..];
        let starts_word = i == 0 || !word(text[i - 1]);
        let quoted =
            here.first() == Some(&b'"') && here[1..].starts_with(name) && here[1 + name.len()..].starts_with(b"\".");
        if starts_word && quoted {
            out.extend_from_slice(b"\"\0\"");
            i += name.len() + 2;
        } else if starts_word && here.starts_with(name) && here.get(name.len()) == Some(&b'.') {
            out.push(0);
            i += name.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_schema_as_a_qualifier_is_taken_out() {
        assert_eq!(
            without_schema(
                "CREATE TABLE c1.t (x int DEFAULT nextval('c1.s'::regclass)) -- xc1.t c10.t c1",
                "c1"
            ),
            b"CREATE TABLE \0.t (x int DEFAULT nextval('\0.s'::regclass)) -- xc1.t c10.t c1".to_vec()
        );
        assert_eq!(
            without_schema("\"c1\".\"t\" é c1.t x\"c1\".t \"c1\"\".t", "c1"),
            "\"\0\".\"t\" é \0.t x\"c1\".t \"c1\"\".t".as_bytes()
        );
    }

    #[test]
    fn two_tenants_of_one_migration_share_a_shape_and_a_changed_one_does_not() {
        let names = std::sync::Arc::new(guard::Names::default());
        let ddl = |schema: &str, extra: &str| Structure {
            pre_data: vec![super::super::Ddl {
                object: "table t".into(),
                sql: format!("CREATE TABLE {schema}.t (id bigint{extra})"),
            }],
            ..Default::default()
        };
        let (a, b) = (names.scope("clinic_a", 0), names.scope("clinic_b", 0));
        assert_eq!(shape(&ddl("clinic_a", ""), &a), shape(&ddl("clinic_b", ""), &b));
        assert_ne!(shape(&ddl("clinic_a", ""), &a), shape(&ddl("clinic_b", ", x int"), &b));
        // Another schema named where the own one was: not the same shape.
        assert_ne!(shape(&ddl("clinic_a", ""), &a), shape(&ddl("clinic_a", ""), &b));
        // As a qualifier inside a string, it is the same name in the same place: one shape.
        let seq = |s: &str| format!(", y int DEFAULT nextval('\"{s}\".s'::regclass)");
        assert_eq!(
            shape(&ddl("clinic_a", &seq("clinic_a")), &a),
            shape(&ddl("clinic_b", &seq("clinic_b")), &b)
        );
        assert!(shape(&ddl("Clinic", ""), &names.scope("Clinic", 0)).is_none());
        assert!(shape(&ddl("current_user", ""), &names.scope("current_user", 0)).is_none());
        assert!(shape(&ddl("name", ""), &names.scope("name", 0)).is_none());
        // The name spelled any other way: no shape, a full check.
        for other in [
            ", CHECK (x <> 'clinic_a')",
            ", CHECK (\"clinic_a\" IS NOT NULL)",
            ", CHECK (CLINIC_A.f(x))",
            ", CHECK (x <> E'\\x63')",
            ", CHECK (x <> U&'d')",
        ] {
            assert!(shape(&ddl("clinic_a", other), &a).is_none(), "{other}");
        }
    }
}
