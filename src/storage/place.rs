//! Where a history row's `file_path` points, seen from the tenant whose row it is. A row is only
//! ever followed into its own tenant's folder (`<schema>/`, whole path segments, below the
//! storage's own prefix); the history table is not trusted (DESIGN §10).

use serde::Serialize;

use super::check_key;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "place", content = "path", rename_all = "snake_case")]
pub enum Place<'a> {
    /// A key in this storage, under the tenant's own folder: safe to follow.
    Tenant(&'a str),
    /// A file outside any bucket (the old application's `/var/backups/…`, a URL): this storage
    /// cannot see it, so it is neither read nor deleted.
    Outside(&'a str),
    /// A key that is not under the tenant's folder (another tenant's, or one that would escape):
    /// never followed.
    Foreign(&'a str),
}

impl Place<'_> {
    pub fn path(&self) -> &str {
        match self {
            Place::Tenant(p) | Place::Outside(p) | Place::Foreign(p) => p,
        }
    }

    /// Why a row is not followed, for messages; `None` for a row that is.
    pub fn refusal(&self, schema: &str) -> Option<String> {
        match self {
            Place::Tenant(_) => None,
            Place::Outside(p) => Some(format!("{p} is outside the bucket")),
            Place::Foreign(p) => Some(format!(
                "{p} is not under {schema}/, {schema}'s own folder: a row is never followed into another tenant's objects"
            )),
        }
    }
}

/// Where `file_path`, a row of tenant `schema`, points.
pub fn place<'a>(file_path: &'a str, schema: &str) -> Place<'a> {
    let absolute = file_path.starts_with('/')
        || file_path.starts_with('\\')
        || file_path.contains("://")
        || file_path.starts_with("file:")
        || file_path.as_bytes().get(1) == Some(&b':') && file_path.as_bytes()[0].is_ascii_alphabetic();
    if absolute {
        return Place::Outside(file_path);
    }
    let in_folder = !schema.is_empty()
        && !schema.contains('/')
        && file_path
            .strip_prefix(schema)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty());
    if in_folder && check_key(file_path).is_ok() {
        Place::Tenant(file_path)
    } else {
        Place::Foreign(file_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_segments_of_the_tenants_own_folder_are_followed() {
        assert_eq!(
            place("bienestar/backup-sql-bienestar-2026-11-22-220101.sql.zst", "bienestar"),
            Place::Tenant("bienestar/backup-sql-bienestar-2026-11-22-220101.sql.zst")
        );
        for foreign in [
            "mindcare/backup-sql-mindcare-2026-11-22-220101.sql.zst",
            "bienestar2/x.sql",
            "bienestarx.sql",
            "Bienestar/x.sql",
            "bienestar/../mindcare/x.sql",
            "bienestar//x.sql",
            "bienestar/",
            "bienestar",
            "",
            "./bienestar/x",
        ] {
            assert!(matches!(place(foreign, "bienestar"), Place::Foreign(_)), "{foreign:?}");
        }
        for outside in [
            "/var/backups/clinic/bienestar/bienestar_20250603_154512.sql.gz",
            "file:///var/backups/x.sql",
            "s3://other/bienestar/x.sql",
            "C:\\backups\\x.sql",
        ] {
            assert!(matches!(place(outside, "bienestar"), Place::Outside(_)), "{outside:?}");
        }
        // A tenant name with a slash has no folder of its own.
        assert!(matches!(place("bienestar/x/y.sql", "bienestar/x"), Place::Foreign(_)));
    }
}
