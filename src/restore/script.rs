//! The SQL around the dump: every name quoted, the backup time a literal we format ourselves.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::source::Source;
use crate::pg::catalog::{insert_history, Catalog};
use crate::pg::sql::{literal, quote_ident};
use crate::policy::retention::pre_restore_name;

/// Where the restored schema goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// Replace the tenant's schema; the old one is renamed aside (and dropped when asked).
    Replace {
        schema: String,
        exists: bool,
        drop_previous: bool,
    },
    /// A new schema, leaving everything else untouched.
    Into { schema: String },
    /// Restore, count every table's rows, roll back: `verify`.
    Scratch,
}

pub struct Plan {
    pub prologue: String,
    pub epilogue: String,
    /// The renamed previous schema, when one is kept.
    pub kept_as: Option<String>,
}

pub(super) const COUNT_MARK: &str = "tenant-backup-count";

/// The SQL around the dump. Every name is quoted; the backup time is a literal we format ourselves.
pub fn plan(
    source: &Source,
    target: &Target,
    catalog: &Catalog,
    records_exist: bool,
    lock_timeout: Duration,
    now: DateTime<Utc>,
) -> Plan {
    let s = &source.source_schema;
    let hold = format!("{}__restore_hold", &s[..s.len().min(40)]);
    let q_s = quote_ident(s);
    let mut pro = format!("BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n", lock_timeout.as_millis());
    let mut epi = String::from("\n");
    let mut kept_as = None;
    // If the dump creates a schema other than the target, move the live one of that name aside
    // for the duration, and give the restored one the target's name.
    let rename_result = |target: &str, epi: &mut String| {
        if target != s {
            epi.push_str(&format!("ALTER SCHEMA {q_s} RENAME TO {};\n", quote_ident(target)));
            epi.push_str(&rename_if_exists(&hold, s));
        }
    };
    let hold_source = |target: &str, pro: &mut String| {
        if target != s {
            pro.push_str(&rename_if_exists(s, &hold));
        }
    };
    match target {
        Target::Replace {
            schema: t,
            exists,
            drop_previous,
        } => {
            let old = pre_restore_name(t, now);
            if *exists {
                pro.push_str(&format!(
                    "ALTER SCHEMA {} RENAME TO {};\n",
                    quote_ident(t),
                    quote_ident(&old)
                ));
            }
            hold_source(t, &mut pro);
            rename_result(t, &mut epi);
            if *exists && records_exist {
                epi.push_str(&carry_history(catalog, t, &old, source, t != s));
            }
            if *exists {
                if *drop_previous {
                    epi.push_str(&format!("DROP SCHEMA {} CASCADE;\n", quote_ident(&old)));
                } else {
                    kept_as = Some(old);
                }
            }
            epi.push_str("COMMIT;\n");
        }
        Target::Into { schema: t } => {
            hold_source(t, &mut pro);
            if t == s {
                unreachable!("--into names a new schema");
            }
            rename_result(t, &mut epi);
            epi.push_str("COMMIT;\n");
        }
        Target::Scratch => {
            pro.push_str(&rename_if_exists(s, &hold));
            epi.push_str(&format!(
                "SELECT '{COUNT_MARK}|' || c.relname || '|' || (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relkind IN ('r', 'p') ORDER BY 1;\n",
                literal(s)
            ));
            epi.push_str("ROLLBACK;\n");
        }
    }
    Plan {
        prologue: pro,
        epilogue: epi,
        kept_as,
    }
}

/// Copies into the restored history every row of the previous one that is newer than the backup
/// (all of them when the backup came from another tenant), dropping `created_by_id`s whose user
/// does not exist in the restored users table, and moves the identity past them.
fn carry_history(catalog: &Catalog, target: &str, old: &str, source: &Source, cross_tenant: bool) -> String {
    let new_t = catalog.records_in(target);
    let old_t = catalog.records_in(old);
    let users = catalog.users_in(target);
    let since = source.created_at.format("%Y-%m-%d %H:%M:%S%.6f+00");
    let mut sql = String::new();
    let filter = if cross_tenant {
        sql.push_str(&format!("DELETE FROM {new_t};\n"));
        String::new()
    } else {
        format!("WHERE o.created_at >= '{since}'::timestamptz")
    };
    sql.push_str(&insert_history(&new_t, &users, &format!("{old_t} o {filter}")));
    sql
}

/// `ALTER SCHEMA from RENAME TO to`, when `from` exists.
fn rename_if_exists(from: &str, to: &str) -> String {
    format!(
        "DO $tb$ BEGIN IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {}) THEN EXECUTE {}; END IF; END $tb$;\n",
        literal(from),
        literal(&format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ))
    )
}
