//! The SQL around the dump. Every name is quoted in Rust and every decision (does the schema
//! exist, which name does the previous one get) is taken in Rust, under the tenant's lock, from
//! [`Facts`]: no name is ever spliced into a dollar-quoted block, so any schema name works.

use std::time::Duration;

use super::source::Source;
use super::state::{Facts, Target};
use crate::pg::catalog::{insert_history, Catalog};
use crate::pg::sql::{literal, quote_ident};

#[derive(Clone, Debug)]
pub struct Plan {
    /// The load's transaction, around the dump: it creates everything in the staging schema.
    pub prologue: String,
    /// Its end: COMMIT (the staging schema, still invisible to the application, holds the
    /// restore), or for verify every table's row count and ROLLBACK.
    pub epilogue: String,
    /// The schema the dump is loaded into (created, empty, before the load).
    pub staging: String,
    /// The swap, one short transaction once the load is committed: the live schema renamed aside,
    /// the staging schema renamed in, the history carried over. Empty for verify.
    pub swap: String,
    /// The renamed previous schema, when one is kept.
    pub kept_as: Option<String>,
    /// Starts every line the scripts print, so nothing the dump prints can pass for one.
    pub mark: String,
}

/// `s`, cut at a character boundary so that `s` + `suffix` fits PostgreSQL's 63 bytes.
pub fn with_suffix(s: &str, suffix: &str) -> String {
    let mut cut = 63usize.saturating_sub(suffix.len()).min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &s[..cut])
}

/// What separates a tenant's name from a restore's mark in its staging schema's name.
pub const STAGING: &str = "__restore_";

/// The staging schema of the restore marked `mark` into `schema`: `bienestar__restore_tb-…`.
pub fn staging_name(schema: &str, mark: &str) -> String {
    with_suffix(schema, &format!("{STAGING}{mark}"))
}

pub fn plan(
    source: &Source,
    target: &Target,
    catalog: &Catalog,
    facts: &Facts,
    lock_timeout: Duration,
    mark: &str,
) -> Plan {
    // Named after a tenant whose lock the restore holds throughout (`cleanup --orphans` tells a
    // killed restore's leftover by that lock being free).
    let staging = match target {
        Target::Replace { schema, .. } => staging_name(schema, mark),
        Target::Into { .. } | Target::Scratch => staging_name(&source.source_schema, mark),
    };
    let timeout = format!(
        "SET LOCAL lock_timeout = '{}ms';\n",
        crate::pg::lock::timeout_ms(lock_timeout)
    );
    let rename = |from: &str, to: &str| format!("ALTER SCHEMA {} RENAME TO {};\n", quote_ident(from), quote_ident(to));
    // Names are resolved in pg_catalog only, whatever search_path the dump left behind.
    let reset_path = "SELECT pg_catalog.set_config('search_path', '', true);\n";
    let pro = format!(
        "BEGIN;\n{timeout}SET LOCAL standard_conforming_strings = on;\n{reset_path}\
         SELECT '{mark}|xid|' || pg_catalog.txid_current();\n\
         SELECT pg_catalog.set_config('client_connection_check_interval', '1000', true) \
         WHERE pg_catalog.current_setting('server_version_num')::int >= 140000;\n"
    );
    let mut epi = format!("\n{reset_path}");
    let mut swap = String::new();
    let mut kept_as = None;
    match target {
        Target::Replace { schema: t, .. } | Target::Into { schema: t } => {
            epi.push_str("COMMIT;\n");
            swap.push_str(&format!("BEGIN;\n{timeout}{reset_path}"));
            // With --drop-previous the previous schema is dropped after the swap, and only when
            // the application wrote nothing to it meanwhile (see `restore::writes`): what it
            // wrote during the restore is never destroyed silently.
            let previous = match target {
                Target::Replace { .. } if facts.target_exists => {
                    Some(facts.previous.clone().expect("a free name for the previous schema"))
                }
                _ => None,
            };
            if let Some(p) = &previous {
                swap.push_str(&rename(t, p));
            }
            swap.push_str(&rename(&staging, t));
            if matches!(target, Target::Replace { .. }) {
                swap.push_str(&history(catalog, t, previous.as_deref(), source, facts));
            }
            swap.push_str("COMMIT;\n");
            kept_as = previous;
        }
        Target::Scratch => {
            epi.push_str(&format!(
                "SELECT '{mark}|count|' || c.relname || '|' || (pg_catalog.xpath('/row/n/text()', pg_catalog.query_to_xml(pg_catalog.format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relkind IN ('r', 'p') ORDER BY 1;\n",
                literal(&staging)
            ));
            epi.push_str("ROLLBACK;\n");
        }
    }
    Plan {
        prologue: pro,
        epilogue: epi,
        staging,
        swap,
        kept_as,
        mark: mark.to_string(),
    }
}

/// The restored history: the dump's rows, plus every row of the previous history the dump lacks
/// (by id, whatever its date) — or, when there was no history table, every backup of the tenant
/// the bucket's manifests know and the dump's history does not. A backup of another tenant
/// (`--from-tenant`) brings that tenant's history, which is replaced by the target's own.
fn history(catalog: &Catalog, target: &str, previous: Option<&str>, source: &Source, facts: &Facts) -> String {
    let restored = catalog.records_in(target);
    let mut sql = String::new();
    if source.source_schema != target {
        sql.push_str(&format!("DELETE FROM {restored};\n"));
    }
    match previous {
        Some(old) if facts.records_exist => {
            let users = catalog.users_in(target);
            sql.push_str(&insert_history(
                &restored,
                &users,
                &format!("{} o", catalog.records_in(old)),
            ));
        }
        _ if !facts.bucket_rows.is_empty() => {
            let rows: Vec<String> = facts
                .bucket_rows
                .iter()
                .map(|r| {
                    format!(
                        "({}, {}, {}::bigint, {}, {}::timestamptz)",
                        literal(r.key.rsplit('/').next().unwrap_or(&r.key)),
                        literal(&r.key),
                        r.size,
                        literal(r.kind.as_db()),
                        literal(&r.created_at.to_rfc3339())
                    )
                })
                .collect();
            sql.push_str(&format!(
                "INSERT INTO {restored} (file_name, file_path, file_size, backup_type, created_at) \
                 SELECT v.* FROM (VALUES {}) v (file_name, file_path, file_size, backup_type, created_at) \
                 WHERE NOT EXISTS (SELECT 1 FROM {restored} r WHERE r.file_path = v.file_path);\n",
                rows.join(", ")
            ));
        }
        _ => {}
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_cut_names_at_character_boundaries() {
        let long = format!("{}ñb", "a".repeat(48));
        let held = with_suffix(&long, "__restore_hold");
        assert!(held.len() <= 63 && held.ends_with("__restore_hold"), "{held}");
        assert!(held.starts_with(&"a".repeat(48)));
        assert_eq!(with_suffix("bienestar", "__restore_hold"), "bienestar__restore_hold");
        let staging = staging_name(&"ñ".repeat(40), "tb-abcdefghijkl");
        assert!(
            staging.len() <= 63 && staging.ends_with("__restore_tb-abcdefghijkl"),
            "{staging}"
        );
    }
}
