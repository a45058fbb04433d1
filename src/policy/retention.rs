//! Which backups `cleanup` deletes, which objects and rows are orphans, which schemas are old
//! pre-restore copies. Pure functions of (history, now, policy), so its rules are
//! tested with a fixed clock: automatic backups older than N days go, manual ones stay unless asked,
//! and the K newest are never deleted however old — when backups have been failing for weeks,
//! retention must not remove the only copies left.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde::Serialize;

use crate::pg::catalog::{BackupKind, BackupRecord, Tenant};
use crate::storage::{place, ObjectInfo, Place, Unfinished};

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
    /// A row that points outside its tenant's folder: reported, never followed, never deleted.
    Refuse,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub record: BackupRecord,
    pub action: Action,
    pub reason: String,
}

/// Decides for every row of `schema`, newest first. Rows that point into another tenant's folder
/// are refused (and do not count towards `--keep-last`); rows whose file is outside the bucket
/// (the old application's) follow the policy like any other: only their row can go.
pub fn plan(schema: &str, records: &[BackupRecord], now: DateTime<Utc>, policy: &Policy) -> Vec<Verdict> {
    let mut rows: Vec<&BackupRecord> = records.iter().collect();
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let cutoff = days_before(now, policy.days);
    let mut candidates_seen = 0u32;
    rows.into_iter()
        .map(|r| {
            let candidate = r.kind() == Some(BackupKind::Automatic) || policy.include_manual;
            let (action, reason) = if let Some(why) = foreign(r, schema) {
                (Action::Refuse, why)
            } else if !candidate {
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

/// Why a row is refused: it points into a folder that is not its tenant's.
fn foreign(r: &BackupRecord, schema: &str) -> Option<String> {
    match place(&r.file_path, schema) {
        p @ Place::Foreign(_) => p.refusal(schema),
        _ => None,
    }
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

/// What `cleanup --orphans` finds under a tenant's folder and in its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Orphan {
    /// An object directly in the folder that no row points to (a manifest counts as part of its
    /// object). `old_enough`: false while it may be a backup in flight (its object is written a
    /// moment before its row): younger than the grace period, or of unknown age.
    Object { key: String, old_enough: bool },
    /// An object in a sub-folder of the tenant's folder: this tool never writes there, so it is
    /// reported and never touched.
    Nested { key: String },
    /// A row whose object is not in the bucket.
    Missing { id: i64, key: String, manual: bool },
    /// A row whose object is not under this storage's prefix but under another prefix of the
    /// same bucket (`""`: its root): the storage URL's prefix was changed. Never deleted as
    /// missing.
    Elsewhere { id: i64, key: String, prefix: String },
    /// A row whose file is outside the bucket (the old application's).
    Outside { id: i64, key: String, manual: bool },
    /// A row that points into another tenant's folder: never followed.
    Foreign { id: i64, key: String },
    /// An upload that never finished (an S3 multipart upload, a local `.partial` file).
    Unfinished { upload: Unfinished, old_enough: bool },
    /// Something in the folder that is not an object (a local symbolic link or special file):
    /// never read, never touched, named so someone removes it.
    Stray { key: String, what: String },
}

impl Orphan {
    /// What it is, as the report says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Orphan::Object { .. } => "object without row",
            Orphan::Nested { .. } => "object in a sub-folder",
            Orphan::Missing { .. } => "row without object",
            Orphan::Elsewhere { .. } => "row in another prefix",
            Orphan::Outside { .. } => "row outside the bucket",
            Orphan::Foreign { .. } => "row in another folder",
            Orphan::Unfinished { .. } => "unfinished upload",
            Orphan::Stray { .. } => "not an object",
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Orphan::Object { key, .. }
            | Orphan::Nested { key }
            | Orphan::Missing { key, .. }
            | Orphan::Elsewhere { key, .. }
            | Orphan::Outside { key, .. }
            | Orphan::Foreign { key, .. }
            | Orphan::Stray { key, .. } => key,
            Orphan::Unfinished { upload, .. } => &upload.key,
        }
    }

    pub fn row_id(&self) -> Option<i64> {
        match self {
            Orphan::Missing { id, .. }
            | Orphan::Elsewhere { id, .. }
            | Orphan::Outside { id, .. }
            | Orphan::Foreign { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// What `--fix` does with it, and why: the same answer for a dry run and for the run.
    pub fn decide(&self, schema: &str, include_manual: bool, grace: Duration) -> (Action, String) {
        let hours = grace.num_hours();
        let young = format!("less than {hours} hours old (may be a backup in flight; see --grace-hours)");
        let manual = "manual (add --include-manual to delete manual rows)".to_string();
        match self {
            Orphan::Object { old_enough: true, .. } | Orphan::Unfinished { old_enough: true, .. } => {
                (Action::Delete, "no row points to it".into())
            }
            Orphan::Object { .. } | Orphan::Unfinished { .. } => (Action::Keep, young),
            Orphan::Nested { .. } => (
                Action::Keep,
                format!("not one of this tool's objects (they lie directly in {schema}/): never touched"),
            ),
            Orphan::Missing { manual: true, .. } | Orphan::Outside { manual: true, .. } if !include_manual => {
                (Action::Keep, manual)
            }
            Orphan::Missing { .. } => (Action::Delete, "its object is not in the bucket".into()),
            Orphan::Elsewhere { prefix, .. } => (Action::Keep, elsewhere_reason(prefix)),
            Orphan::Outside { key, .. } => (
                Action::Delete,
                format!("{key} is outside the bucket; only the row goes, the file is not touched"),
            ),
            Orphan::Foreign { key, .. } => (Action::Refuse, Place::Foreign(key).refusal(schema).unwrap_or_default()),
            Orphan::Stray { what, .. } => (Action::Refuse, what.clone()),
        }
    }
}

/// Why a row whose object lies under another prefix of the bucket is kept.
pub fn elsewhere_reason(prefix: &str) -> String {
    let place = if prefix.is_empty() {
        "at the bucket's root".to_string()
    } else {
        format!("under {prefix}/")
    };
    format!(
        "its object is {place} in the same bucket, not under this storage's prefix (the storage URL's prefix was changed?): never deleted as missing; point --storage at that prefix to restore it or clean it up (docs/storage.md, A changed prefix)"
    )
}

/// The rows [`find_orphans`] calls missing whose object `elsewhere` (from
/// [`Storage::elsewhere`](crate::storage::Storage::elsewhere)) finds under another prefix of the
/// same bucket, made [`Orphan::Elsewhere`].
pub fn relocate(found: Vec<Orphan>, elsewhere: &HashMap<String, String>) -> Vec<Orphan> {
    found
        .into_iter()
        .map(|o| match o {
            Orphan::Missing { id, key, .. } if elsewhere.contains_key(&key) => Orphan::Elsewhere {
                id,
                prefix: elsewhere[&key].clone(),
                key,
            },
            other => other,
        })
        .collect()
}

/// Orphans of tenant `schema`: `objects` and `unfinished` are what its folder (`<schema>/`) holds
/// (`modified`/`started`: when each was written, as far as anyone can tell); `grace` is how old
/// an unreferenced object or unfinished upload must be before `--fix` may delete it.
pub fn find_orphans(
    schema: &str,
    records: &[BackupRecord],
    objects: &[ObjectInfo],
    unfinished: &[Unfinished],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<Orphan> {
    let folder = format!("{schema}/");
    let listed: BTreeSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let referenced: BTreeSet<&str> = records
        .iter()
        .filter(|r| matches!(place(&r.file_path, schema), Place::Tenant(_)))
        .map(|r| r.file_path.as_str())
        .collect();
    // A grace reaching back before the calendar's start: nothing is that old.
    let cutoff = now.checked_sub_signed(grace);
    let old = |t: Option<DateTime<Utc>>| t.zip(cutoff).is_some_and(|(w, cut)| w <= cut);
    let mut out = Vec::new();
    for o in objects {
        let Some(rel) = o.key.strip_prefix(&folder) else {
            continue;
        };
        if rel.contains('/') {
            out.push(Orphan::Nested { key: o.key.clone() });
            continue;
        }
        let orphan = match o.key.strip_suffix(".manifest.json") {
            Some(b) => !listed.contains(b) && !referenced.contains(b),
            None => !referenced.contains(o.key.as_str()),
        };
        if orphan {
            out.push(Orphan::Object {
                key: o.key.clone(),
                old_enough: old(o.modified),
            });
        }
    }
    for r in records {
        let manual = r.kind() != Some(BackupKind::Automatic);
        match place(&r.file_path, schema) {
            Place::Tenant(k) if !listed.contains(k) => out.push(Orphan::Missing {
                id: r.id,
                key: k.to_string(),
                manual,
            }),
            Place::Tenant(_) => {}
            Place::Outside(p) => out.push(Orphan::Outside {
                id: r.id,
                key: p.to_string(),
                manual,
            }),
            Place::Foreign(p) => out.push(Orphan::Foreign {
                id: r.id,
                key: p.to_string(),
            }),
        }
    }
    for u in unfinished.iter().filter(|u| u.key.starts_with(&folder)) {
        out.push(Orphan::Unfinished {
            upload: u.clone(),
            old_enough: old(u.started),
        });
    }
    out
}

/// A tenant's `__pre_restore_` copy (exactly the name restore gives, as restore cuts it).
#[derive(Clone, Debug)]
pub struct PreRestoreCopy<'t> {
    pub name: String,
    pub tenant: &'t Tenant,
    pub at: DateTime<Utc>,
    /// The name is itself listed in the tenant table: a live tenant's schema, never dropped
    /// however much it looks like a copy.
    pub listed: bool,
}

/// Which of `schemas` are a tenant's `__pre_restore_` copies; `listed` is every `schema_name` in
/// the tenant table.
pub fn pre_restore_copies<'t>(schemas: &[String], tenants: &'t [Tenant], listed: &[String]) -> Vec<PreRestoreCopy<'t>> {
    schemas
        .iter()
        .filter_map(|name| {
            let (_, at) = parse_pre_restore(name)?;
            let tenant = tenants.iter().find(|t| pre_restore_name(&t.schema_name, at) == *name)?;
            Some(PreRestoreCopy {
                name: name.clone(),
                tenant,
                at,
                listed: listed.iter().any(|l| l == name),
            })
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
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), [1, 3]);
        let p = Policy {
            include_manual: true,
            ..p
        };
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), [1, 2, 3]);
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
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), [1, 2, 3, 4]);
        let p = Policy { keep_last: 3, ..p };
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), [1, 2]);
        let p = Policy { keep_last: 0, ..p };
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), [1, 2, 3, 4, 5]);
        let p = Policy { keep_last: 10, ..p };
        assert!(deleted(&plan("t", &rows, at(NOW), &p)).is_empty());
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
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), [1]);
    }

    #[test]
    fn a_grace_longer_than_the_calendar_keeps_every_orphan() {
        let now = at(NOW);
        let objects = [ObjectInfo {
            key: "t/old.sql".into(),
            size: 1,
            modified: Some(now - Duration::days(3)),
        }];
        let grace = Duration::hours(u32::MAX.into());
        let found = find_orphans("t", &[], &objects, &[], now, grace);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].decide("t", false, grace).0, Action::Keep);
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
        assert_eq!(deleted(&plan("t", &rows, at(NOW), &p)), Vec::<i64>::new());
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

    fn at_rec(id: i64, kind: &str, path: &str) -> BackupRecord {
        BackupRecord {
            file_path: path.into(),
            ..rec(id, kind, "2026-01-01T00:00:00Z")
        }
    }

    #[test]
    fn rows_outside_their_folder_are_refused_and_do_not_count_for_keep_last() {
        let rows = vec![
            at_rec(1, "automatic", "t/a.sql"),
            at_rec(2, "automatic", "other/b.sql"),
            at_rec(3, "automatic", "/var/backups/t/c.sql.gz"),
        ];
        let p = Policy {
            days: 30,
            keep_last: 1,
            include_manual: false,
        };
        let v = plan("t", &rows, at(NOW), &p);
        let action = |id: i64| v.iter().find(|v| v.record.id == id).unwrap().action.clone();
        assert_eq!(action(2), Action::Refuse);
        // Ties by id: 3 is the newest candidate (kept), 1 goes; the foreign row protected nothing.
        assert_eq!((action(3), action(1)), (Action::Keep, Action::Delete));
    }

    #[test]
    fn orphans_are_decided_the_same_for_a_dry_run_and_a_run() {
        let now = at(NOW);
        let grace = Duration::hours(24);
        let objects = vec![
            ObjectInfo {
                key: "t/old.sql".into(),
                size: 1,
                modified: Some(now - Duration::days(3)),
            },
            ObjectInfo {
                key: "t/young.sql".into(),
                size: 1,
                modified: Some(now - Duration::hours(1)),
            },
            ObjectInfo {
                key: "t/sub/x.sql".into(),
                size: 1,
                modified: Some(now - Duration::days(30)),
            },
        ];
        let rows = vec![
            at_rec(1, "automatic", "t/gone.sql"),
            at_rec(2, "manual", "/var/backups/t/x.sql.gz"),
            at_rec(3, "automatic", "u/y.sql"),
        ];
        let unfinished = vec![
            Unfinished {
                key: "t/big.sql".into(),
                id: "u1".into(),
                started: Some(now - Duration::days(2)),
            },
            Unfinished {
                key: "t/now.sql".into(),
                id: "u2".into(),
                started: None,
            },
            Unfinished {
                key: "u/other.sql".into(),
                id: "u3".into(),
                started: Some(now - Duration::days(9)),
            },
        ];
        let found = find_orphans("t", &rows, &objects, &unfinished, now, grace);
        let decided: Vec<(String, Action)> = found
            .iter()
            .map(|o| (o.key().to_string(), o.decide("t", false, grace).0))
            .collect();
        let want = |k: &str| decided.iter().find(|(key, _)| key == k).map(|(_, a)| a.clone());
        assert_eq!(want("t/old.sql"), Some(Action::Delete));
        assert_eq!(want("t/young.sql"), Some(Action::Keep));
        assert_eq!(want("t/sub/x.sql"), Some(Action::Keep), "sub-folders are never touched");
        assert_eq!(want("t/gone.sql"), Some(Action::Delete));
        assert_eq!(want("/var/backups/t/x.sql.gz"), Some(Action::Keep), "manual: kept");
        assert_eq!(want("u/y.sql"), Some(Action::Refuse));
        assert_eq!(want("t/big.sql"), Some(Action::Delete));
        assert_eq!(want("t/now.sql"), Some(Action::Keep), "of unknown age: kept");
        assert_eq!(want("u/other.sql"), None, "another folder's upload is not ours");
        let manual = found.iter().find(|o| o.key() == "/var/backups/t/x.sql.gz").unwrap();
        assert_eq!(manual.decide("t", true, grace).0, Action::Delete);
    }

    #[test]
    fn a_schema_the_tenant_table_lists_is_never_a_copy_to_drop() {
        let tenant = |name: &str| Tenant {
            id: 1,
            schema_name: name.into(),
            name: name.into(),
            backup_schedule: crate::pg::catalog::Schedule::Daily,
            last_backup_at: None,
            next_scheduled_backup: None,
        };
        let tenants = vec![tenant("zz"), tenant("zz__pre_restore_20200101000000")];
        let schemas = vec![
            "zz__pre_restore_20200101000000".to_string(),
            "zz__pre_restore_20200202000000".to_string(),
        ];
        let listed = vec!["zz".to_string(), "zz__pre_restore_20200101000000".to_string()];
        let copies = pre_restore_copies(&schemas, &tenants, &listed);
        let listed_of = |n: &str| copies.iter().find(|c| c.name == n).map(|c| c.listed);
        assert_eq!(listed_of("zz__pre_restore_20200101000000"), Some(true));
        assert_eq!(listed_of("zz__pre_restore_20200202000000"), Some(false));
    }
}
