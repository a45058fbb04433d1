//! SQL identifiers: always quoted, never formatted into SQL raw.

use std::fmt;

use crate::error::UsageError;

/// `"name"` with embedded quotes doubled, as PostgreSQL's `quote_ident` does (but always quoted).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether django-tenants would accept `name` as a schema name (its `_is_valid_schema_name`:
/// `^[_a-zA-Z][_a-zA-Z0-9]{,62}$`, and not starting with `pg_` in any case). Such a name is also
/// one path segment, so no tenant's folder can lie inside another's.
pub fn is_tenant_schema_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0] == b'_' || b[0].is_ascii_alphabetic())
        && b.iter().all(|c| *c == b'_' || c.is_ascii_alphanumeric())
        && !b[..b.len().min(3)].eq_ignore_ascii_case(b"pg_")
}

/// [`is_tenant_schema_name`] as a usage error that says what django-tenants accepts.
pub fn check_tenant_schema_name(name: &str) -> Result<(), UsageError> {
    if is_tenant_schema_name(name) {
        return Ok(());
    }
    Err(UsageError::new(format!(
        "{name:?} is not a schema name django-tenants accepts (a letter or _ first, then letters, digits and _, 63 at most, not starting with pg_): refused, nothing was touched"
    )))
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"schema"."name"`, the one way a qualified name reaches SQL.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A `schema.table` name as given in configuration (`public.tenants_clinic`, or `tenants_clinic`
/// meaning `public.tenants_clinic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn parse(raw: &str) -> Result<Self, UsageError> {
        let raw = raw.trim();
        let (schema, name) = match raw.split_once('.') {
            Some((s, n)) => (s, n),
            None => ("public", raw),
        };
        let valid = |s: &str| !s.is_empty() && s.len() <= 63 && !s.contains('.');
        if !valid(schema) || !valid(name) {
            return Err(UsageError::new(format!(
                "invalid table name {raw:?}: expected `schema.table` or `table` (at most 63 bytes each)"
            )));
        }
        Ok(QualifiedName {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }

    /// `"schema"."table"`, ready to put into SQL.
    pub fn quoted(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_names() {
        assert_eq!(
            quote_ident(r#"x"; DROP SCHEMA public; --"#),
            r#""x""; DROP SCHEMA public; --""#
        );
        assert_eq!(quote_ident("bienestar"), "\"bienestar\"");
    }

    #[test]
    fn tenant_names_follow_django_tenants() {
        for ok in ["bienestar", "clinica_demo", "_x", "A1", &"a".repeat(63)] {
            assert!(is_tenant_schema_name(ok), "{ok}");
        }
        for bad in [
            "",
            "bienestar/x",
            "1abc",
            "pg_toast",
            "PG_x",
            "a-b",
            "a b",
            "ñ",
            "a\n",
            &"a".repeat(64),
            "bienestar\n",
        ] {
            assert!(!is_tenant_schema_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parses_qualified_names() {
        let q = QualifiedName::parse("public.tenants_clinic").unwrap();
        assert_eq!(q.quoted(), "\"public\".\"tenants_clinic\"");
        assert_eq!(QualifiedName::parse("clinics").unwrap().schema, "public");
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse("").is_err());
    }
}
