//! Cleanup's work: expiring old backups (objects, manifests, then rows), finding and fixing
//! orphans, dropping old pre-restore schemas. What to delete is decided by
//! [`crate::policy::retention`]; this carries it out and reports each outcome. The caller holds
//! each tenant's lock, and has proven with [`Storage::probe`] that the storage can see the bucket:
//! every "already missing" below rests on that.
//!
//! What it never does: follow a row into another tenant's folder, touch a file outside the bucket,
//! delete a row whose object it could not delete, or drop a schema the tenant table lists.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Duration as Span, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::key::ObjectKey;
use crate::pg::catalog::{BackupRecord, Catalog, Tenant};
use crate::pg::lock;
use crate::pg::sql::quote_ident;
use crate::policy::retention::{find_orphans, plan, pre_restore_copies, relocate, Action, Orphan, Policy};
use crate::progress::human_size;
use crate::storage::{place, Place, Storage, StorageError};

#[derive(Serialize, Default)]
pub struct Report {
    pub dry_run: bool,
    pub backups: Vec<BackupItem>,
    pub orphans: Vec<OrphanItem>,
    pub pre_restore_schemas: Vec<SchemaItem>,
    /// Staging schemas a killed restore left (`<tenant>__restore_<mark>`), found by `--orphans`.
    pub restore_leftovers: Vec<LeftoverItem>,
    /// Backups (rows, with their objects when in the bucket) deleted, or that would be.
    pub deleted: usize,
    pub bytes_freed: u64,
    pub kept: usize,
    /// Orphans deleted (or, in a dry run, that would be).
    pub orphans_deleted: usize,
    /// Of those, history rows (the others are objects and unfinished uploads).
    pub orphan_rows_deleted: usize,
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
    pub action: Action,
    pub reason: String,
    pub result: String,
}

#[derive(Serialize)]
pub struct SchemaItem {
    pub tenant: String,
    pub schema: String,
    pub created_at: DateTime<Utc>,
    pub result: String,
}

impl Report {
    /// Every item that failed: (tenant, what went wrong).
    pub fn failures(&self) -> Vec<(&str, &str)> {
        let backups = self
            .backups
            .iter()
            .filter_map(|b| Some((b.tenant.as_str(), b.result.as_deref()?)));
        let orphans = self.orphans.iter().map(|o| (o.tenant.as_str(), o.result.as_str()));
        let schemas = self
            .pre_restore_schemas
            .iter()
            .map(|s| (s.tenant.as_str(), s.result.as_str()));
        backups
            .chain(orphans)
            .chain(schemas)
            .filter(|(_, r)| r.starts_with("FAILED"))
            .collect()
    }
}

#[derive(Serialize)]
pub struct LeftoverItem {
    pub tenant: String,
    pub schema: String,
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

/// How deleting one backup's object went.
enum ObjectGone {
    /// Deleted now.
    Deleted,
    /// Already missing (proven: the storage can see the bucket).
    Missing,
    /// Outside the bucket: never touched.
    Outside(String),
}

impl Cleanup<'_> {
    /// Deletes the backups `policy` says go: their objects (in bulk), then their manifests, then
    /// the rows of those whose object is gone. A row whose object could not be deleted stays.
    /// `records` is the tenant's history (read under its lock, unless this is a dry run). The rows
    /// that went (or, in a dry run, would go). A dry run counts the bytes of the
    /// objects that are really there, as the run frees them (one listing of the folder).
    pub async fn expire(
        &self,
        schema: &str,
        records: &[BackupRecord],
        policy: &Policy,
        report: &mut Report,
    ) -> Result<Vec<BackupRecord>> {
        let Cleanup {
            storage,
            catalog,
            client,
            now,
            dry_run,
            ..
        } = *self;
        let mut verdicts = plan(schema, records, now, policy);
        // What the folder holds (one listing), for a dry run's bytes and for the rows that go
        // whose object is not there: one under another prefix of the bucket (the storage URL's
        // prefix changed) is kept, so that its object is not left behind without a row.
        let in_bucket = |r: &BackupRecord| matches!(place(&r.file_path, schema), Place::Tenant(_));
        let stored: std::collections::HashSet<String> = if verdicts
            .iter()
            .any(|v| v.action == Action::Delete && in_bucket(&v.record))
        {
            storage
                .list(&format!("{schema}/"))
                .await?
                .into_iter()
                .map(|o| o.key)
                .collect()
        } else {
            Default::default()
        };
        let not_here: Vec<String> = verdicts
            .iter()
            .filter(|v| v.action == Action::Delete && in_bucket(&v.record) && !stored.contains(&v.record.file_path))
            .map(|v| v.record.file_path.clone())
            .collect();
        if !not_here.is_empty() {
            let elsewhere = storage.elsewhere(&not_here).await?;
            for v in verdicts.iter_mut().filter(|v| v.action == Action::Delete) {
                if let Some(prefix) = elsewhere.get(&v.record.file_path) {
                    v.action = Action::Keep;
                    v.reason = crate::policy::retention::elsewhere_reason(prefix);
                }
            }
        }
        let doomed: Vec<&BackupRecord> = verdicts
            .iter()
            .filter(|v| v.action == Action::Delete)
            .map(|v| &v.record)
            .collect();
        if !dry_run {
            // The plan goes to the log before anything is deleted.
            let bytes: i64 = doomed.iter().map(|r| r.file_size.max(0)).sum();
            tracing::info!(
                "{schema}: deleting {} backups ({}), keeping {}",
                doomed.len(),
                human_size(bytes as u64),
                verdicts.len() - doomed.len()
            );
            for v in verdicts.iter().filter(|v| v.action == Action::Delete) {
                tracing::info!("{schema}: will delete {} ({})", v.record.file_path, v.reason);
            }
        }
        let gone = if dry_run {
            Vec::new()
        } else {
            self.delete_objects(schema, &doomed).await
        };
        let mut went = Vec::new();
        let mut gone = gone.into_iter();
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
                Action::Refuse => {
                    report.failed += 1;
                    item.result = Some(format!("refused: {}", v.reason));
                }
                Action::Delete if dry_run => {
                    report.deleted += 1;
                    went.push(v.record.clone());
                    if stored.contains(&v.record.file_path) {
                        report.bytes_freed += v.record.file_size.max(0) as u64;
                    }
                }
                Action::Delete => {
                    let outcome = match gone.next() {
                        Some(Ok(how)) => catalog.delete_record(client, schema, v.record.id).await.map(|()| how),
                        Some(Err(e)) => Err(e),
                        None => Err(anyhow::anyhow!("internal: no outcome for {}", v.record.file_path)),
                    };
                    match outcome {
                        Ok(how) => {
                            report.deleted += 1;
                            went.push(v.record.clone());
                            item.result = Some(match how {
                                ObjectGone::Deleted => {
                                    report.bytes_freed += v.record.file_size.max(0) as u64;
                                    "deleted".into()
                                }
                                ObjectGone::Missing => "row deleted; the object was already missing".into(),
                                ObjectGone::Outside(p) => {
                                    format!("row deleted; its file {p} is outside the bucket and was not touched")
                                }
                            });
                        }
                        Err(e) => {
                            tracing::error!("{schema}: {e:#}");
                            report.failed += 1;
                            item.result = Some(format!("FAILED: {e:#}; the row is kept"));
                        }
                    }
                }
            }
            report.backups.push(item);
        }
        Ok(went)
    }

    /// Deletes the objects of `doomed` in bulk, then the manifests of those that are gone; one
    /// outcome per row, in order.
    async fn delete_objects(&self, schema: &str, doomed: &[&BackupRecord]) -> Vec<Result<ObjectGone>> {
        let keys: Vec<String> = doomed
            .iter()
            .filter_map(|r| match place(&r.file_path, schema) {
                Place::Tenant(k) => Some(k.to_string()),
                _ => None,
            })
            .collect();
        let mut results = self.storage.delete_many(&keys).await.into_iter();
        let mut out = Vec::with_capacity(doomed.len());
        let mut manifests = Vec::new();
        for r in doomed {
            out.push(match place(&r.file_path, schema) {
                Place::Tenant(k) => match results.next() {
                    Some(Ok(())) => {
                        manifests.push(ObjectKey::manifest_key(k));
                        Ok(ObjectGone::Deleted)
                    }
                    Some(Err(StorageError::NotFound(_))) => {
                        manifests.push(ObjectKey::manifest_key(k));
                        Ok(ObjectGone::Missing)
                    }
                    Some(Err(e)) => Err(anyhow::Error::new(e).context(format!("deleting {k}"))),
                    None => Err(anyhow::anyhow!("deleting {k}: no answer")),
                },
                Place::Outside(p) => Ok(ObjectGone::Outside(p.to_string())),
                Place::Foreign(p) => Err(anyhow::anyhow!("{p} is not under {schema}/: not followed")),
            });
        }
        for (key, result) in manifests.iter().zip(self.storage.delete_many(&manifests).await) {
            match result {
                Ok(()) | Err(StorageError::NotFound(_)) => {}
                Err(e) => tracing::warn!(
                    "{key}: its object is deleted but the manifest is not ({e}); `cleanup --orphans --fix` removes it later"
                ),
            }
        }
        out
    }

    /// Objects in the tenant's folder that no row points to, rows whose object is not in the
    /// bucket, unfinished uploads; with `fix` (and not a dry run) those `decide` says go are
    /// deleted. A dry run reports exactly what the run would do.
    /// `records` is the tenant's history as it is now (after [`Cleanup::expire`], if that ran);
    /// in a dry run, `expired` is what expiring would have deleted (its rows are already left out
    /// of `records`), whose objects and manifests are then left out of the folder's listing.
    pub async fn orphans(
        &self,
        schema: &str,
        records: &[BackupRecord],
        expired: &[BackupRecord],
        opts: &OrphanOptions,
        report: &mut Report,
    ) -> Result<()> {
        let Cleanup {
            storage, now, dry_run, ..
        } = *self;
        let folder = format!("{schema}/");
        let mut objects = storage.list(&folder).await?;
        objects.retain(|o| {
            let base = o.key.strip_suffix(".manifest.json").unwrap_or(&o.key);
            !expired.iter().any(|r| r.file_path == base)
        });
        // When the backend cannot say when an object was written, its name can.
        for o in &mut objects {
            let base = o.key.strip_suffix(".manifest.json").unwrap_or(&o.key);
            o.modified = o
                .modified
                .or_else(|| ObjectKey::parse(base).map(|k| k.created.and_utc()));
        }
        let unfinished = storage.unfinished(&folder).await?;
        let strays = storage.strays(&folder).await?.into_iter().map(|s| Orphan::Stray {
            key: s.key,
            what: s.what,
        });
        let found = find_orphans(schema, records, &objects, &unfinished, now, opts.grace);
        // A row "missing" here may point into another prefix of the bucket (the storage URL's
        // prefix changed): that one is reported as such and never deleted.
        let missing: Vec<String> = found
            .iter()
            .filter(|o| matches!(o, Orphan::Missing { .. }))
            .map(|o| o.key().to_string())
            .collect();
        let found = match missing.is_empty() {
            true => found,
            false => relocate(found, &storage.elsewhere(&missing).await?),
        };
        let decided: Vec<_> = found
            .into_iter()
            .chain(strays)
            .map(|o| {
                let d = o.decide(schema, opts.include_manual, opts.grace);
                (o, d)
            })
            .collect();
        // The objects that go, deleted in bulk (up to the backend's batch limit a call), not one
        // request each.
        let mut deleted_objects = std::collections::HashMap::new();
        let mut deleted_manifests = std::collections::HashMap::new();
        let mut reappeared = std::collections::HashSet::new();
        if opts.fix && !dry_run {
            let keys: Vec<String> = decided
                .iter()
                .filter(|(o, (action, _))| *action == Action::Delete && matches!(o, Orphan::Object { .. }))
                .map(|(o, _)| o.key().to_string())
                .collect();
            if !keys.is_empty() {
                let results = storage.delete_many(&keys).await;
                deleted_objects.extend(keys.into_iter().zip(results));
            }
            // Rows whose object is missing: checked again with one fresh listing of the folder
            // (the first one is a moment old), and the manifests of those still missing deleted
            // in bulk; not a check and a delete per row.
            let missing: Vec<&str> = decided
                .iter()
                .filter(|(o, (action, _))| *action == Action::Delete && matches!(o, Orphan::Missing { .. }))
                .map(|(o, _)| o.key())
                .collect();
            if !missing.is_empty() {
                let now_listed: std::collections::HashSet<String> =
                    storage.list(&folder).await?.into_iter().map(|o| o.key).collect();
                let manifests: Vec<String> = missing
                    .iter()
                    .filter(|k| !now_listed.contains(**k))
                    .map(|k| ObjectKey::manifest_key(k))
                    .collect();
                let results = storage.delete_many(&manifests).await;
                deleted_manifests.extend(manifests.into_iter().zip(results));
                reappeared.extend(
                    missing
                        .iter()
                        .filter(|k| now_listed.contains(**k))
                        .map(|k| k.to_string()),
                );
            }
        }
        for (orphan, (action, reason)) in decided {
            let result = match (&action, opts.fix, dry_run) {
                (Action::Refuse, _, _) => {
                    report.failed += 1;
                    format!("refused: {reason}")
                }
                (Action::Keep, false, _) => format!("found (--fix keeps it: {reason})"),
                (Action::Keep, true, _) => format!("kept: {reason}"),
                (Action::Delete, false, _) => format!("found (--fix deletes it: {reason})"),
                (Action::Delete, true, true) => {
                    report.orphans_deleted += 1;
                    report.orphan_rows_deleted += usize::from(orphan.row_id().is_some());
                    format!("would delete: {reason}")
                }
                (Action::Delete, true, false) => match self
                    .fix(
                        schema,
                        &orphan,
                        &mut deleted_objects,
                        &mut deleted_manifests,
                        &reappeared,
                    )
                    .await
                {
                    Ok((true, done)) => {
                        report.orphans_deleted += 1;
                        report.orphan_rows_deleted += usize::from(orphan.row_id().is_some());
                        done
                    }
                    Ok((false, kept)) => kept,
                    Err(e) => {
                        tracing::error!("{schema}: {e:#}");
                        report.failed += 1;
                        format!("FAILED: {e:#}")
                    }
                },
            };
            report.orphans.push(OrphanItem {
                tenant: schema.into(),
                kind: orphan.kind(),
                key: orphan.key().to_string(),
                row_id: orphan.row_id(),
                action,
                reason,
                result,
            });
        }
        Ok(())
    }

    /// Deletes one orphan; whether it went, and what was done.
    async fn fix(
        &self,
        schema: &str,
        orphan: &Orphan,
        deleted: &mut std::collections::HashMap<String, Result<(), StorageError>>,
        manifests: &mut std::collections::HashMap<String, Result<(), StorageError>>,
        reappeared: &std::collections::HashSet<String>,
    ) -> Result<(bool, String)> {
        let done = |what: &str| Ok((true, what.to_string()));
        let Cleanup {
            storage,
            catalog,
            client,
            ..
        } = *self;
        match orphan {
            Orphan::Object { key, .. } => match match deleted.remove(key.as_str()) {
                Some(result) => result,
                None => storage.delete(key).await,
            } {
                Ok(()) => done("deleted"),
                Err(StorageError::NotFound(_)) => done("already gone"),
                Err(e) => Err(e.into()),
            },
            Orphan::Unfinished { upload, .. } => {
                storage.discard_unfinished(upload).await?;
                done("aborted, its parts removed")
            }
            Orphan::Missing { id, key, .. } => {
                // Checked again (a listing is a moment old): by the fresh listing made for all
                // of them, else by itself.
                let there = match reappeared.contains(key.as_str()) {
                    true => true,
                    false if manifests.contains_key(&ObjectKey::manifest_key(key)) => false,
                    false => storage.size(key).await?.is_some(),
                };
                if there {
                    return Ok((false, "kept: the object is there after all".into()));
                }
                let manifest = ObjectKey::manifest_key(key);
                let result = match manifests.remove(&manifest) {
                    Some(result) => result,
                    None => storage.delete(&manifest).await,
                };
                match result {
                    Ok(()) | Err(StorageError::NotFound(_)) => {}
                    Err(e) => anyhow::bail!("deleting the manifest of {key}: {e}; the row is kept"),
                }
                catalog.delete_record(client, schema, *id).await?;
                done("row deleted")
            }
            Orphan::Outside { id, key, .. } => {
                catalog.delete_record(client, schema, *id).await?;
                done(&format!("row deleted; {key} is outside the bucket and was not touched"))
            }
            Orphan::Nested { .. } | Orphan::Foreign { .. } | Orphan::Stray { .. } | Orphan::Elsewhere { .. } => {
                anyhow::bail!("internal: {} is never deleted", orphan.key())
            }
        }
    }

    /// Drops `<tenant>__pre_restore_<time>` schemas older than `days`, for tenants in the tenant
    /// table only, and never a schema the tenant table itself lists (`listed`).
    pub async fn pre_restore(
        &self,
        tenants: &[Tenant],
        listed: &[String],
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
        let cutoff = crate::policy::retention::days_before(now, days);
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for copy in pre_restore_copies(&names, tenants, listed) {
            let result = if copy.listed {
                "kept: the tenant table lists this schema as a tenant of its own".to_string()
            } else if copy.at >= cutoff {
                format!("kept: newer than {days} days")
            } else if dry_run {
                "would drop".to_string()
            } else {
                lock::lock_with_timeout(client, &copy.tenant.schema_name, timeout).await?;
                let dropped = client
                    .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&copy.name)))
                    .await;
                lock::unlock(client, &copy.tenant.schema_name).await?;
                match dropped {
                    Ok(()) => "dropped".to_string(),
                    Err(e) => {
                        report.failed += 1;
                        format!("FAILED: {}", crate::pg::connect::describe_pg_error(&e))
                    }
                }
            };
            report.pre_restore_schemas.push(SchemaItem {
                tenant: copy.tenant.schema_name.clone(),
                schema: copy.name,
                created_at: copy.at,
                result,
            });
        }
        Ok(())
    }
}

impl Cleanup<'_> {
    /// The staging schemas restores of `tenants` left behind when they were killed: a restore
    /// holds its tenant's lock from before it creates its staging schema until the schema is
    /// swapped in or dropped, so a staging schema whose tenant's lock is free is a leftover. With
    /// `fix` (and not a dry run) each is dropped, under the tenant's lock. Never a schema the
    /// tenant table lists.
    pub async fn restore_leftovers(
        &self,
        tenants: &[Tenant],
        listed: &[String],
        fix: bool,
        report: &mut Report,
    ) -> Result<()> {
        let Cleanup { client, dry_run, .. } = *self;
        let pattern = crate::restore::STAGING;
        let rows = client
            .query_typed(
                "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE strpos(nspname, $1) > 0 ORDER BY 1",
                &[(&pattern, tokio_postgres::types::Type::TEXT)],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let Some(mark) = name.rsplit_once(pattern).map(|(_, m)| m) else {
                continue;
            };
            let Some(tenant) = tenants
                .iter()
                .find(|t| crate::restore::staging_name(&t.schema_name, mark) == name)
            else {
                continue;
            };
            if listed.contains(&name) {
                continue;
            }
            let result = if !lock::try_lock(client, &tenant.schema_name).await? {
                "kept: a restore of this tenant is running".to_string()
            } else {
                let result = if !fix {
                    "left by a restore that did not finish (--fix drops it)".to_string()
                } else if dry_run {
                    "would drop".to_string()
                } else {
                    match client
                        .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&name)))
                        .await
                    {
                        Ok(()) => "dropped".to_string(),
                        Err(e) => {
                            report.failed += 1;
                            format!("FAILED: {}", crate::pg::connect::describe_pg_error(&e))
                        }
                    }
                };
                lock::unlock(client, &tenant.schema_name).await?;
                result
            };
            report.restore_leftovers.push(LeftoverItem {
                tenant: tenant.schema_name.clone(),
                schema: name,
                result,
            });
        }
        Ok(())
    }
}

/// How `cleanup --orphans` runs.
#[derive(Clone, Copy, Debug)]
pub struct OrphanOptions {
    /// Delete what [`Orphan::decide`] says goes.
    pub fix: bool,
    pub include_manual: bool,
    /// How old an unreferenced object or unfinished upload must be before it is deleted.
    pub grace: Span,
}
