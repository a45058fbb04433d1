//! What a stored backup is: its dump format. Written into the manifest and the object key, parsed
//! once, carried as a type.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DumpFormat {
    /// pg_dump's plain SQL, restored with psql.
    #[serde(rename = "sql")]
    Plain,
    /// pg_dump's custom archive, restored with pg_restore.
    #[serde(rename = "dump")]
    Custom,
    /// The native JSON Lines format (no pg_dump; see `jsonl`).
    #[serde(rename = "json")]
    Json,
}

impl DumpFormat {
    /// The format's name in object keys and manifests.
    pub fn key_name(self) -> &'static str {
        match self {
            DumpFormat::Plain => "sql",
            DumpFormat::Custom => "dump",
            DumpFormat::Json => "json",
        }
    }

    /// For objects without a manifest (the old application's): the format their name says.
    pub fn from_key(key: &str) -> DumpFormat {
        let file = key.rsplit('/').next().unwrap_or(key);
        let has = |ext: &str| file.ends_with(&format!(".{ext}")) || file.contains(&format!(".{ext}."));
        if has("dump") {
            DumpFormat::Custom
        } else if has("json") {
            DumpFormat::Json
        } else {
            DumpFormat::Plain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_round_trip_and_keys_guess() {
        for f in [DumpFormat::Plain, DumpFormat::Custom, DumpFormat::Json] {
            let s = serde_json::to_string(&f).unwrap();
            assert_eq!(s, format!("\"{}\"", f.key_name()));
            assert_eq!(serde_json::from_str::<DumpFormat>(&s).unwrap(), f);
        }
        assert_eq!(
            DumpFormat::from_key("a/backup-dump-a-2026-01-01-000000.dump"),
            DumpFormat::Custom
        );
        assert_eq!(
            DumpFormat::from_key("a/auto-json-a-2026-01-01-000000.json.zst"),
            DumpFormat::Json
        );
        assert_eq!(DumpFormat::from_key("/var/backups/clinic/x.sql.gz"), DumpFormat::Plain);
    }
}
