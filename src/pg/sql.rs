//! SQL identifiers: always quoted, never formatted into SQL raw.

use std::fmt;

use crate::error::UsageError;

/// `"name"` with embedded quotes doubled, as PostgreSQL's `quote_ident` does (but always quoted).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
    fn parses_qualified_names() {
        let q = QualifiedName::parse("public.tenants_clinic").unwrap();
        assert_eq!(q.quoted(), "\"public\".\"tenants_clinic\"");
        assert_eq!(QualifiedName::parse("clinics").unwrap().schema, "public");
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse("").is_err());
    }
}
