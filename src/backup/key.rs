//! Object keys, the application's convention, so old and new backups sort together:
//! `<schema>/<kind>-<format>-<schema>-<YYYY-MM-DD-HHMMSS>[-N].<ext>`.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::pg::catalog::BackupKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub schema: String,
    pub kind: BackupKind,
    pub format: String,
    pub created: NaiveDateTime,
    /// `2` for the second backup that would have had the same name, and so on.
    pub suffix: Option<u32>,
    pub ext: String,
}

impl ObjectKey {
    pub fn new(schema: &str, kind: BackupKind, format: &str, ext: &str, at: DateTime<Utc>) -> Self {
        ObjectKey {
            schema: schema.to_string(),
            kind,
            format: format.to_string(),
            created: at.naive_utc(),
            suffix: None,
            ext: ext.to_string(),
        }
    }

    pub fn with_suffix(&self, n: u32) -> Self {
        ObjectKey {
            suffix: Some(n),
            ..self.clone()
        }
    }

    pub fn file_name(&self) -> String {
        let prefix = match self.kind {
            BackupKind::Manual => "backup",
            BackupKind::Automatic => "auto",
        };
        let stamp = self.created.format("%Y-%m-%d-%H%M%S");
        let suffix = self.suffix.map(|n| format!("-{n}")).unwrap_or_default();
        format!("{prefix}-{}-{}-{stamp}{suffix}.{}", self.format, self.schema, self.ext)
    }

    pub fn as_key(&self) -> String {
        format!("{}/{}", self.schema, self.file_name())
    }

    /// The manifest stored beside an object.
    pub fn manifest_key(key: &str) -> String {
        format!("{key}.manifest.json")
    }

    /// Reads a key back, including those written by the old application. `None` for anything that
    /// does not follow the convention.
    pub fn parse(key: &str) -> Option<ObjectKey> {
        let (schema, file) = key.rsplit_once('/')?;
        let (kind, rest) = if let Some(r) = file.strip_prefix("backup-") {
            (BackupKind::Manual, r)
        } else if let Some(r) = file.strip_prefix("auto-") {
            (BackupKind::Automatic, r)
        } else {
            return None;
        };
        let (format, rest) = rest.split_once('-')?;
        let rest = rest.strip_prefix(schema)?.strip_prefix('-')?;
        // 2026-11-22-220101[-N].ext...
        if rest.len() < 17 {
            return None;
        }
        let (stamp, tail) = rest.split_at(17);
        let created = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d-%H%M%S").ok()?;
        let (suffix, ext) = match tail.strip_prefix('-') {
            Some(t) => {
                let (n, ext) = t.split_once('.')?;
                (Some(n.parse().ok()?), ext)
            }
            None => (None, tail.strip_prefix('.')?),
        };
        Some(ObjectKey {
            schema: schema.to_string(),
            kind,
            format: format.to_string(),
            created,
            suffix,
            ext: ext.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 22, 1, 1).unwrap()
    }

    #[test]
    fn follows_the_application_convention() {
        let k = ObjectKey::new("bienestar", BackupKind::Manual, "sql", "sql.zst", at());
        assert_eq!(k.as_key(), "bienestar/backup-sql-bienestar-2026-11-22-220101.sql.zst");
        let a = ObjectKey::new("mindcare", BackupKind::Automatic, "sql", "sql", at()).with_suffix(2);
        assert_eq!(a.as_key(), "mindcare/auto-sql-mindcare-2026-11-22-220101-2.sql");
    }

    #[test]
    fn parses_its_own_keys_and_legacy_ones() {
        for key in [
            "bienestar/backup-sql-bienestar-2026-11-22-220101.sql.zst",
            "mind_care/auto-json-mind_care-2026-11-22-220101-3.json.zst",
            "bienestar/backup-sql-bienestar-2024-01-02-030405.sql",
        ] {
            let parsed = ObjectKey::parse(key).unwrap_or_else(|| panic!("{key}"));
            assert_eq!(parsed.as_key(), key);
        }
        assert!(ObjectKey::parse("bienestar/random.sql").is_none());
        assert!(ObjectKey::parse("other/backup-sql-bienestar-2026-11-22-220101.sql").is_none());
    }
}
