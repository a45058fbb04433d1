//! Cleanup's work: expiring old backups (object, manifest, then row), finding and fixing orphans,
//! dropping old pre-restore schemas. What to delete is decided by [`crate::policy::retention`];
//! this carries it out and reports each outcome. The caller holds each tenant's lock.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Duration as Days, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::key::ObjectKey;
use crate::pg::catalog::{BackupRecord, Catalog, Tenant};
use crate::pg::lock;
use crate::pg::sql::quote_ident;
use crate::policy::retention::{find_orphans, plan, pre_restore_copies, Action, Orphan, Policy};
use crate::progress::human_size;
use crate::storage::{check_key, ObjectInfo, Storage, StorageError};

#[derive(Serialize, Default)]
pub struct Report {
    pub dry_run: bool,
    pub backups: Vec<BackupItem>,
    pub orphans: Vec<OrphanItem>,
    pub pre_restore_schemas: Vec<SchemaItem>,
    pub deleted: usize,
    pub bytes_freed: u64,
    pub kept: usize,
    pub failed: usize,
}

#[derive(Serialize)]
pub struct BackupItem {
    pub tenant: String,
    pub id: i64,
    pub key: String,
    pub size: i64,
    pub backup_type: String,
    pub created_at: DateTime<Utc>,
    pub action: Action,
    pub reason: String,
    pub result: Option<String>,
}

#[derive(Serialize)]
pub struct OrphanItem {
    pub tenant: String,
    pub kind: &'static str,
    pub key: String,
    pub row_id: Option<i64>,
    pub result: String,
}

#[derive(Serialize)]
pub struct SchemaItem {
    pub tenant: String,
    pub schema: String,
    pub created_at: DateTime<Utc>,
    pub result: String,
}

/// One cleanup run over one database and bucket.
#[derive(Clone, Copy)]
pub struct Cleanup<'a> {
    pub storage: &'a dyn Storage,
    pub catalog: &'a Catalog,
    /// A session connection (the caller holds the tenants' locks on it).
    pub client: &'a Client,
    pub now: DateTime<Utc>,
    pub dry_run: bool,
}

impl Cleanup<'_> {
    /// Deletes the backups `policy` says go (object, manifest, then row).
    pub async fn expire(&self, schema: &str, policy: &Policy, report: &mut Report) -> Result<()> {
        let records = self.catalog.records(self.client, schema).await?;
        self.expire_from(schema, &records, policy, report).await
    }

    /// [`Cleanup::expire`] with the tenant's history already read (a dry run reads every
    /// tenant's at once).
    pub async fn expire_from(
        &self,
        schema: &str,
        records: &[BackupRecord],
        policy: &Policy,
        report: &mut Report,
    ) -> Result<()> {
        let Cleanup {
            storage,
            catalog,
            client,
            now,
            dry_run,
        } = *self;
        let verdicts = plan(records, now, policy);
        if !dry_run {
            // The plan goes to the log before anything is deleted.
            let doomed: Vec<_> = verdicts.iter().filter(|v| v.action == Action::Delete).collect();
            let bytes: i64 = doomed.iter().map(|v| v.record.file_size.max(0)).sum();
            tracing::info!(
                "{schema}: deleting {} backups ({}), keeping {}",
                doomed.len(),
                human_size(bytes as u64),
                verdicts.len() - doomed.len()
            );
            for v in &doomed {
                tracing::info!("{schema}: will delete {} ({})", v.record.file_path, v.reason);
            }
        }
        for v in verdicts {
            let mut item = BackupItem {
                tenant: schema.to_string(),
                id: v.record.id,
                key: v.record.file_path.clone(),
                size: v.record.file_size,
                backup_type: v.record.backup_type.clone(),
                created_at: v.record.created_at,
                action: v.action.clone(),
                reason: v.reason.clone(),
                result: None,
            };
            match v.action {
                Action::Keep => report.kept += 1,
                Action::Delete if dry_run => {
                    report.deleted += 1;
                    report.bytes_freed += v.record.file_size.max(0) as u64;
                }
                Action::Delete => match delete_backup(storage, catalog, client, schema, &v.record).await {
                    Ok(how) => {
                        report.deleted += 1;
                        if how == Deleted::All {
                            report.bytes_freed += v.record.file_size.max(0) as u64;
                            item.result = Some("deleted".into());
                        } else {
                            item.result = Some("row deleted; the object was already missing".into());
                        }
                    }
                    Err(e) => {
                        tracing::error!("{schema}: {e:#}");
                        report.failed += 1;
                        item.result = Some(format!("FAILED: {e:#}"));
                    }
                },
            }
            report.backups.push(item);
        }
        Ok(())
    }

    /// Objects under the tenant's prefix that no row points to, and rows whose object is missing;
    /// with `fix` (never in a dry run) they are deleted.
    pub async fn orphans(&self, schema: &str, fix: bool, report: &mut Report) -> Result<()> {
        let records = self.catalog.records(self.client, schema).await?;
        let objects = self.storage.list(&format!("{schema}/")).await?;
        self.orphans_from(schema, &records, objects, fix, report).await
    }

    /// [`Cleanup::orphans`] with the history and the objects under `<schema>/` already read. Only
    /// a dry run may pass what it read before taking the tenant's lock: a fix must compare what
    /// it read under the lock, or a backup finishing in between would look like an orphan row.
    pub async fn orphans_from(
        &self,
        schema: &str,
        records: &[BackupRecord],
        mut objects: Vec<ObjectInfo>,
        fix: bool,
        report: &mut Report,
    ) -> Result<()> {
        let Cleanup {
            storage,
            catalog,
            client,
            now,
            dry_run,
        } = *self;
        let fix = fix && !dry_run;
        // When the backend cannot say when an object was written, its name can.
        for o in &mut objects {
            let base = o.key.strip_suffix(".manifest.json").unwrap_or(&o.key);
            o.modified = o
                .modified
                .or_else(|| ObjectKey::parse(base).map(|k| k.created.and_utc()));
        }
        for orphan in find_orphans(records, &objects, now, Days::days(1)) {
            match orphan {
                Orphan::Object { key, old_enough } => {
                    let result = if !fix {
                        "found".to_string()
                    } else if !old_enough {
                        "kept: less than a day old (may be a backup in flight)".to_string()
                    } else {
                        match storage.delete(&key).await {
                            Ok(()) | Err(StorageError::NotFound(_)) => "deleted".to_string(),
                            Err(e) => {
                                report.failed += 1;
                                format!("FAILED: {e}")
                            }
                        }
                    };
                    report.orphans.push(OrphanItem {
                        tenant: schema.into(),
                        kind: "object without row",
                        key,
                        row_id: None,
                        result,
                    });
                }
                Orphan::Row { id, key } => {
                    let result = if fix {
                        if check_key(&key).is_ok() {
                            let _ = storage.delete(&ObjectKey::manifest_key(&key)).await;
                        }
                        match catalog.delete_record(client, schema, id).await {
                            Ok(()) => "row deleted".to_string(),
                            Err(e) => {
                                report.failed += 1;
                                format!("FAILED: {e:#}")
                            }
                        }
                    } else {
                        "found".to_string()
                    };
                    report.orphans.push(OrphanItem {
                        tenant: schema.into(),
                        kind: "row without object",
                        key,
                        row_id: Some(id),
                        result,
                    });
                }
            }
        }
        Ok(())
    }

    /// Drops `<tenant>__pre_restore_<time>` schemas older than `days`, for tenants in the tenant table only.
    pub async fn pre_restore(
        &self,
        tenants: &[Tenant],
        days: u32,
        timeout: Duration,
        report: &mut Report,
    ) -> Result<()> {
        let Cleanup {
            client, now, dry_run, ..
        } = *self;
        let rows = client
            .query_typed(
                "SELECT nspname::text FROM pg_namespace WHERE strpos(nspname, '__pre_restore_') > 0 ORDER BY 1",
                &[],
            )
            .await?;
        let cutoff = now - Days::days(days as i64);
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for (name, tenant, at) in pre_restore_copies(&names, tenants) {
            let result = if at >= cutoff {
                format!("kept: newer than {days} days")
            } else if dry_run {
                "would drop".to_string()
            } else {
                lock::lock_with_timeout(client, &tenant.schema_name, timeout).await?;
                let dropped = client
                    .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&name)))
                    .await;
                lock::unlock(client, &tenant.schema_name).await?;
                match dropped {
                    Ok(()) => "dropped".to_string(),
                    Err(e) => {
                        report.failed += 1;
                        format!("FAILED: {}", crate::pg::connect::describe_pg_error(&e))
                    }
                }
            };
            report.pre_restore_schemas.push(SchemaItem {
                tenant: tenant.schema_name.clone(),
                schema: name,
                created_at: at,
                result,
            });
        }
        Ok(())
    }
}

/// How a deletion went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Deleted {
    /// Object, manifest and row are gone.
    All,
    /// The object was already missing (or lives outside this bucket, as the old application's
    /// `/var/backups/…` paths do); the row is gone.
    RowOnly,
}

/// Deletes one backup in the safe order: object, manifest, then the row. If the object cannot be
/// deleted, the row stays, so nothing becomes an orphan without a trace.
pub async fn delete_backup(
    storage: &dyn Storage,
    catalog: &Catalog,
    client: &Client,
    schema: &str,
    record: &BackupRecord,
) -> Result<Deleted> {
    let key = &record.file_path;
    let outcome = if check_key(key).is_err() {
        Deleted::RowOnly
    } else {
        match storage.delete(key).await {
            Ok(()) => Deleted::All,
            Err(StorageError::NotFound(_)) => Deleted::RowOnly,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("deleting {key}; its row is kept"))),
        }
    };
    if outcome == Deleted::All || check_key(key).is_ok() {
        match storage.delete(&ObjectKey::manifest_key(key)).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) => tracing::warn!(
                "{key} is deleted but its manifest is not ({e}); `cleanup --orphans --fix` removes it later"
            ),
        }
    }
    catalog.delete_record(client, schema, record.id).await?;
    Ok(outcome)
}
