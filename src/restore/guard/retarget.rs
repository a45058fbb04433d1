//! A dump's statements aimed at the staging schema: every place pg_dump names its schema where
//! PostgreSQL binds the name when the statement runs (a qualified name, `CREATE/COMMENT ON SCHEMA`,
//! a top-level search_path, a `'schema.seq'::regclass` or `setval('schema.seq', …)` string) is
//! rewritten from the dump's schema to the staging one, token by token, with PostgreSQL's own
//! scanner. Nothing else changes, line breaks included, so psql's line numbers stay the dump's.
//!
//! A function body is text that PostgreSQL binds only when it runs, after the swap has given the
//! staging schema the tenant's name: it is left as it is. Anything this misses is not an escape:
//! the statement is then checked with the staging schema as its own, and a name in the live
//! schema is refused like any other schema's.

use std::borrow::Cow;

use pg_query::protobuf::{KeywordKind, Token};

use super::tree::qualified_string;
use crate::pg::sql::quote_ident;

/// `text` with the schema `from` renamed `to` wherever it binds at execution; borrowed when
/// nothing changes.
pub fn retarget<'a>(text: &'a str, from: &str, to: &str) -> Cow<'a, str> {
    // Cheap first: a statement that cannot name the schema is left alone (an unquoted name is
    // folded to lower case, so compare without case).
    if !from.contains('"') && !contains_ignore_ascii_case(text, from) {
        return Cow::Borrowed(text);
    }
    let Ok(tokens) = pg_query::scan_tokens(text) else {
        return Cow::Borrowed(text); // the parser will refuse it
    };
    let kinds: Vec<(Token, bool, &str)> = tokens
        .iter()
        .filter(|t| !matches!(Token::try_from(t.token), Ok(Token::SqlComment | Token::CComment)))
        .map(|t| {
            let kind = Token::try_from(t.token).unwrap_or(Token::Nul);
            let word = t.keyword_kind != KeywordKind::NoKeyword as i32;
            let span = text.get(t.start as usize..t.end as usize).unwrap_or("");
            (kind, word, span)
        })
        .collect();
    let spans: Vec<(usize, usize)> = tokens
        .iter()
        .filter(|t| !matches!(Token::try_from(t.token), Ok(Token::SqlComment | Token::CComment)))
        .map(|t| (t.start as usize, t.end as usize))
        .collect();
    let is_name = |i: usize| {
        kinds
            .get(i)
            .is_some_and(|(k, word, span)| (*k == Token::Ident || *word) && identifier(span).as_deref() == Some(from))
    };
    let is = |i: usize, k: Token| kinds.get(i).is_some_and(|t| t.0 == k);
    let word = |i: usize, w: &str| {
        kinds
            .get(i)
            .is_some_and(|(k, kw, span)| (*k == Token::Ident || *kw) && identifier(span).as_deref() == Some(w))
    };
    // A top-level `SET [SESSION|LOCAL] search_path …`.
    let sets_path = is(0, Token::Set) && {
        let at = if word(1, "session") || word(1, "local") { 2 } else { 1 };
        word(at, "search_path")
    };
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for i in 0..kinds.len() {
        let (kind, _, span) = kinds[i];
        if is_name(i) && (is(i + 1, Token::Ascii46) || is(i.wrapping_sub(1), Token::Schema) || sets_path) {
            edits.push((spans[i].0, spans[i].1, quote_ident(to)));
            continue;
        }
        if kind != Token::Sconst || !span.starts_with('\'') {
            continue;
        }
        let content = span[1..span.len() - 1].replace("''", "'");
        // `'schema.name'::regclass` (or ::pg_catalog.regclass).
        let cast = is(i + 1, Token::Typecast)
            && (word(i + 2, "regclass")
                || (word(i + 2, "pg_catalog") && is(i + 3, Token::Ascii46) && word(i + 4, "regclass")));
        // setval/nextval/currval('schema.name', …).
        let sequence_call = i >= 2
            && is(i - 1, Token::Ascii40)
            && (word(i - 2, "setval") || word(i - 2, "nextval") || word(i - 2, "currval"));
        // set_config('search_path', '…', …) and SET search_path = 'schema'.
        let path = sets_path
            || (i >= 2
                && is(i - 1, Token::Ascii44)
                && kinds[i - 2].0 == Token::Sconst
                && kinds[i - 2].2 == "'search_path'");
        let replaced = if cast || sequence_call {
            let parts = qualified_string(&content);
            (parts.len() >= 2 && parts[0] == from).then(|| {
                let rest: Vec<String> = parts[1..].iter().map(|p| quote_ident(p)).collect();
                format!("{}.{}", quote_ident(to), rest.join("."))
            })
        } else if path {
            let entries: Vec<&str> = content.split(',').collect();
            let any = entries.iter().any(|e| identifier(e.trim()).as_deref() == Some(from));
            any.then(|| {
                entries
                    .iter()
                    .map(|e| match identifier(e.trim()).as_deref() == Some(from) {
                        true => quote_ident(to),
                        false => e.trim().to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        } else {
            None
        };
        if let Some(new) = replaced {
            edits.push((spans[i].0, spans[i].1, format!("'{}'", new.replace('\'', "''"))));
        }
    }
    if edits.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + edits.len() * to.len());
    let mut at = 0;
    for (start, end, new) in edits {
        out.push_str(&text[at..start]);
        out.push_str(&new);
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// An identifier token's name: a quoted one as written (`""` → `"`), an unquoted one folded to
/// lower case as PostgreSQL folds it.
fn identifier(span: &str) -> Option<String> {
    if let Some(inner) = span.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Some(inner.replace("\"\"", "\""));
    }
    if span.is_empty() || span.contains(['"', '\'', ' ']) {
        return None;
    }
    Some(span.to_ascii_lowercase())
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    !n.is_empty() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::retarget;

    fn r(sql: &str) -> String {
        retarget(sql, "bienestar", "bienestar__restore_x").into_owned()
    }

    #[test]
    fn qualified_names_and_schema_statements_move() {
        assert_eq!(r("CREATE SCHEMA bienestar;"), "CREATE SCHEMA \"bienestar__restore_x\";");
        assert_eq!(
            r("CREATE TABLE bienestar.t (\n    id integer DEFAULT nextval('bienestar.t_id_seq'::regclass)\n);"),
            "CREATE TABLE \"bienestar__restore_x\".t (\n    id integer DEFAULT nextval('\"bienestar__restore_x\".\"t_id_seq\"'::regclass)\n);"
        );
        assert_eq!(
            r("SELECT pg_catalog.setval('bienestar.t_id_seq', 5, true);"),
            "SELECT pg_catalog.setval('\"bienestar__restore_x\".\"t_id_seq\"', 5, true);"
        );
        assert_eq!(
            r("ALTER TABLE ONLY \"bienestar\".t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES bienestar.u(id);"),
            "ALTER TABLE ONLY \"bienestar__restore_x\".t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES \"bienestar__restore_x\".u(id);"
        );
        assert_eq!(
            r("COMMENT ON SCHEMA bienestar IS 'bienestar.t';"),
            "COMMENT ON SCHEMA \"bienestar__restore_x\" IS 'bienestar.t';"
        );
        assert_eq!(
            r("SET search_path = bienestar, pg_catalog;"),
            "SET search_path = \"bienestar__restore_x\", pg_catalog;"
        );
        assert_eq!(
            r("SELECT pg_catalog.set_config('search_path', 'bienestar, pg_catalog', false);"),
            "SELECT pg_catalog.set_config('search_path', '\"bienestar__restore_x\", pg_catalog', false);"
        );
    }

    #[test]
    fn data_bodies_and_other_schemas_stay() {
        for same in [
            "INSERT INTO mindcare.t VALUES ('bienestar.t');",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path TO 'bienestar' AS $$ SELECT count(*) FROM bienestar.t $$;",
            "CREATE TABLE x.y (a text DEFAULT 'bienestar.t');",
            "-- bienestar.t\nSELECT 1;",
        ] {
            let out = r(same);
            assert!(!out.contains("__restore_x") || same.starts_with("CREATE FUNCTION"), "{out}");
        }
        // The function's body and its SET keep the tenant's name (they bind after the swap); its
        // own name moves.
        let f = r("CREATE FUNCTION bienestar.f() RETURNS int LANGUAGE sql SET search_path TO 'bienestar' AS $$ SELECT count(*) FROM bienestar.t $$;");
        assert_eq!(
            f,
            "CREATE FUNCTION \"bienestar__restore_x\".f() RETURNS int LANGUAGE sql SET search_path TO 'bienestar' AS $$ SELECT count(*) FROM bienestar.t $$;"
        );
        assert_eq!(
            r("INSERT INTO bienestar.t VALUES ('bienestar.t');"),
            "INSERT INTO \"bienestar__restore_x\".t VALUES ('bienestar.t');"
        );
    }

    #[test]
    fn keyword_and_quoted_schema_names_move() {
        assert_eq!(
            retarget("CREATE TABLE data.t (a int);", "data", "s2").as_ref(),
            "CREATE TABLE \"s2\".t (a int);"
        );
        assert_eq!(
            retarget(
                "CREATE TABLE \"Clinic One\".t (a int DEFAULT nextval('\"Clinic One\".s'::regclass));",
                "Clinic One",
                "st"
            )
            .as_ref(),
            "CREATE TABLE \"st\".t (a int DEFAULT nextval('\"st\".\"s\"'::regclass));"
        );
        assert_eq!(
            retarget("CREATE TABLE Data.t (a int);", "Data", "st").as_ref(),
            "CREATE TABLE Data.t (a int);"
        );
    }
}
