//! Which backups `cleanup` deletes, which objects and rows are orphans, which schemas are old
//! pre-restore copies. Pure functions of (history, now, policy), so its rules are
//! tested with a fixed clock: automatic backups older than N days go, manual ones stay unless asked,
//! and the K newest are never deleted however old — when backups have been failing for weeks,
//! retention must not remove the only copies left.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde::Serialize;

use crate::pg::catalog::{BackupKind, BackupRecord, Tenant};
use crate::storage::{check_key, ObjectInfo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub days: u32,
    pub keep_last: u32,
    pub include_manual: bool,
}

/// `days` before `now`; a cutoff before the calendar's start when that is further back than
/// chrono can count (nothing is that old).
pub fn days_before(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now.checked_sub_signed(Duration::days(days.into()))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Delete,
    Keep,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub record: BackupRecord,
    pub action: Action,
    pub reason: String,
}

/// Decides for every row, newest first.
pub fn plan(records: &[BackupRecord], now: DateTime<Utc>, policy: &Policy) -> Vec<Verdict> {
    let mut rows: Vec<&BackupRecord> = records.iter().collect();
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let cutoff = days_before(now, policy.days);
    let mut candidates_seen = 0u32;
    rows.into_iter()
        .map(|r| {
            let candidate = r.kind() == Some(BackupKind::Automatic) || policy.include_manual;
            let (action, reason) = if !candidate {
                (
                    Action::Keep,
                    "manual (add --include-manual to delete manual backups)".to_string(),
                )
            } else {
                candidates_seen += 1;
                if candidates_seen <= policy.keep_last {
                    (
                        Action::Keep,
                        format!("one of the newest {} (--keep-last)", policy.keep_last),
                    )
                } else if r.created_at < cutoff {
                    (Action::Delete, format!("older than {} days", policy.days))
                } else {
                    (Action::Keep, format!("newer than {} days", policy.days))
                }
            };
            Verdict {
                record: r.clone(),
                action,
                reason,
            }
        })
        .collect()
}

/// `bienestar__pre_restore_20261122223000`, cut to PostgreSQL's 63-byte limit.
pub fn pre_restore_name(schema: &str, at: DateTime<Utc>) -> String {
    let suffix = format!("__pre_restore_{}", at.format("%Y%m%d%H%M%S"));
    let mut cut = 63 - suffix.len();
    while !schema.is_char_boundary(cut.min(schema.len())) {
        cut -= 1;
    }
    format!("{}{suffix}", &schema[..cut.min(schema.len())])
}

/// The time in a `…__pre_restore_YYYYMMDDHHMMSS` schema name, and the part before it.
pub fn parse_pre_restore(name: &str) -> Option<(&str, DateTime<Utc>)> {
    let (prefix, stamp) = name.rsplit_once("__pre_restore_")?;
    if stamp.len() != 14 || prefix.is_empty() {
        return None;
    }
    let at = NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S").ok()?;
    Some((prefix, at.and_utc()))
}

/// What `cleanup --orphans` finds: an object no history row points to, or a row whose object is
/// not in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Orphan {
    Object {
        key: String,
        /// False while it may be a backup in flight (its object is written a moment before its
        /// row): younger than the grace period, or of unknown age.
        old_enough: bool,
    },
    Row {
        id: i64,
        key: String,
    },
}

/// Objects are under the tenant's folder (`modified`: when each was written, as far as anyone can
/// tell); manifests count as part of their object. `grace` is how
/// old an unreferenced object must be before `--fix` may delete it.
pub fn find_orphans(
    records: &[BackupRecord],
    objects: &[ObjectInfo],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<Orphan> {
    let listed: BTreeSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let referenced: BTreeSet<&str> = records.iter().map(|r| r.file_path.as_str()).collect();
    let mut out = Vec::new();
    for o in objects {
        let base = o.key.strip_suffix(".manifest.json");
        let orphan = match base {
            Some(b) => !listed.contains(b) && !referenced.contains(b),
            None => !referenced.contains(o.key.as_str()),
        };
        if !orphan {
            continue;
        }
        out.push(Orphan::Object {
            key: o.key.clone(),
            old_enough: o.modified.is_some_and(|w| w <= now - grace),
        });
    }
    for r in records {
        let in_bucket = check_key(&r.file_path).is_ok() && listed.contains(r.file_path.as_str());
        if !in_bucket {
            out.push(Orphan::Row {
                id: r.id,
                key: r.file_path.clone(),
            });
        }
    }
    out
}

/// Which of `schemas` are a tenant's `__pre_restore_` copies (exactly the name restore gives, as
/// restore cuts it), with the tenant and when the copy was made.
pub fn pre_restore_copies<'t>(schemas: &[String], tenants: &'t [Tenant]) -> Vec<(String, &'t Tenant, DateTime<Utc>)> {
    schemas
        .iter()
        .filter_map(|name| {
            let (_, at) = parse_pre_restore(name)?;
            let tenant = tenants.iter().find(|t| pre_restore_name(&t.schema_name, at) == *name)?;
            Some((name.clone(), tenant, at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn pre_restore_names_fit_in_63_bytes() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 22, 30, 0).unwrap();
        assert_eq!(
            pre_restore_name("bienestar", at),
            "bienestar__pre_restore_20261122223000"
        );
        let long = "ñ".repeat(31); // 62 bytes
        let name = pre_restore_name(&long, at);
        assert!(
            name.len() <= 63 && name.ends_with("__pre_restore_20261122223000"),
            "{name}"
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rec(id: i64, kind: &str, created: &str) -> BackupRecord {
        BackupRecord {
            id,
            file_name: format!("f{id}"),
            file_path: format!("t/f{id}"),
            file_size: 10,
            backup_type: kind.into(),
            created_at: at(created),
            created_by_id: None,
            created_by_email: None,
        }
    }

    fn deleted(v: &[Verdict]) -> Vec<i64> {
        let mut ids: Vec<i64> = v
            .iter()
            .filter(|v| v.action == Action::Delete)
            .map(|v| v.record.id)
            .collect();
        ids.sort();
        ids
    }

    const NOW: &str = "2026-11-22T12:00:00Z";

    #[test]
    fn deletes_old_automatic_backups_only() {
        let rows = vec![
            rec(1, "automatic", "2026-09-01T00:00:00Z"),
            rec(2, "manual", "2026-09-02T00:00:00Z"),
            rec(3, "automatic", "2026-10-23T11:59:59Z"), // 30 days and 1 s ago
            rec(4, "automatic", "2026-10-23T12:00:01Z"), // just inside
            rec(5, "automatic", "2026-11-22T00:00:00Z"),
        ];
        let p = Policy {
            days: 30,
            keep_last: 1,
            include_manual: false,
        };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), [1, 3]);
        let p = Policy {
            include_manual: true,
            ..p
        };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), [1, 2, 3]);
    }

    #[test]
    fn keep_last_protects_the_newest_even_when_all_are_old() {
        let rows: Vec<_> = (1..=5)
            .map(|i| rec(i, "automatic", &format!("2026-0{i}-01T00:00:00Z")))
            .collect();
        let p = Policy {
            days: 30,
            keep_last: 1,
            include_manual: false,
        };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), [1, 2, 3, 4]);
        let p = Policy { keep_last: 3, ..p };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), [1, 2]);
        let p = Policy { keep_last: 0, ..p };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), [1, 2, 3, 4, 5]);
        let p = Policy { keep_last: 10, ..p };
        assert!(deleted(&plan(&rows, at(NOW), &p)).is_empty());
    }

    #[test]
    fn ties_are_broken_by_id() {
        let rows = vec![
            rec(1, "automatic", "2026-01-01T00:00:00Z"),
            rec(2, "automatic", "2026-01-01T00:00:00Z"),
        ];
        let p = Policy {
            days: 30,
            keep_last: 1,
            include_manual: false,
        };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), [1]);
    }

    #[test]
    fn more_days_than_the_calendar_holds_delete_nothing() {
        let rows = vec![
            rec(1, "automatic", "2020-01-01T00:00:00Z"),
            rec(2, "automatic", "2021-01-01T00:00:00Z"),
        ];
        let p = Policy {
            days: u32::MAX,
            keep_last: 0,
            include_manual: true,
        };
        assert_eq!(deleted(&plan(&rows, at(NOW), &p)), Vec::<i64>::new());
        assert_eq!(days_before(at(NOW), u32::MAX), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn pre_restore_names_parse() {
        let (p, t) = parse_pre_restore("bienestar__pre_restore_20261122223000").unwrap();
        assert_eq!((p, t), ("bienestar", at("2026-11-22T22:30:00Z")));
        assert!(parse_pre_restore("bienestar").is_none());
        assert!(parse_pre_restore("bienestar__pre_restore_2026").is_none());
        assert!(parse_pre_restore("__pre_restore_20261122223000").is_none());
    }
}
