//! The one core: back up one tenant. dump → compress → checksum → spool → store → manifest → row.
//! The row is written only after the object and its manifest are stored and their size checked, so a
//! backup that is listed really is there.

pub mod compress;
pub mod env;
pub mod format;
pub mod key;
pub mod manifest;
pub mod prefetch;
mod pump;
pub mod runner;
pub mod spool;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::key::ObjectKey;
use crate::backup::manifest::{Encryption, Manifest, MANIFEST_VERSION};
use crate::backup::spool::{dump_to_spool, spool_stream, Spool, SpoolError, SpoolOptions, Spooled};
use crate::jsonl::JsonLinesReader;
use crate::pg::catalog::{check_backupable, BackupKind, InsertError, NewRecord, Tenant};
use crate::pg::tools::{dump_command, PgDumpFormat};
use crate::pg::xact::committed;
use crate::storage::{GrowingFile, Storage, StorageError};
pub use env::BackupEnv;
use format::DumpFormat;

#[derive(Clone, Debug)]
pub struct BackupRequest {
    pub tenant: Tenant,
    pub kind: BackupKind,
    pub created_by_id: Option<i64>,
    pub max_size: Option<u64>,
    /// After the row, end the tenant's one-shot `scheduled` schedule (cron ticks), if the row still
    /// holds the time that was due.
    pub finish_schedule: bool,
    /// Raw bytes dumped so far, for whoever shows progress.
    pub progress: Option<Arc<AtomicU64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupOutcome {
    pub tenant: String,
    pub id: i64,
    pub key: String,
    pub size: u64,
    pub uncompressed_size: u64,
    pub sha256: String,
    pub backup_type: BackupKind,
    pub created_at: DateTime<Utc>,
    #[serde(rename = "duration_seconds", serialize_with = "as_secs")]
    pub duration: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Backs up one tenant. `client` is a connection of the caller's own (a transaction is run on it).
pub async fn back_up_tenant(env: &BackupEnv, client: &Client, req: &BackupRequest) -> Result<BackupOutcome> {
    let started = Instant::now();
    let started_at = env.clock.now();
    let schema = req.tenant.schema_name.clone();
    // A tenant that cannot take its history row is found out before it is dumped.
    check_backupable(client, &env.catalog, &schema).await?;

    // The tenant's key before the dump starts: a key table the role cannot create fails fast.
    // It is in the bucket before any object that needs it: the bucket alone restores the tenant.
    let recipient = match &env.seal {
        Some(seal) => {
            let stored = seal
                .store
                .recipient_for(client, &schema, &seal.master)
                .await
                .context("getting the tenant's encryption key")?;
            crate::crypto::bucket::publish(env.storage.as_ref(), &schema, &stored.wrapped, &stored.wrapped_to).await?;
            Some(stored.recipient)
        }
        None => None,
    };
    let ext = format!(
        "{}{}{}",
        env.format.key_name(),
        env.compression.ext_suffix(),
        if recipient.is_some() { ".age" } else { "" }
    );
    let base = ObjectKey::new(&schema, req.kind, env.format.key_name(), &ext, started_at);
    // Deleted again unless the row gets written, also when a stop drops this backup midway.
    let mut unrecorded = Unrecorded {
        storage: env.storage.clone(),
        keys: Vec::new(),
    };
    let (spooled, key) = spool_and_store(env, client, req, recipient.clone(), &base, &mut unrecorded).await?;

    let manifest_key = ObjectKey::manifest_key(&key);
    unrecorded.keys.push(manifest_key.clone());
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        tool: "tenant-backup".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        tenant: schema.clone(),
        kind: req.kind,
        format: env.format,
        compression: env.compression,
        key: key.clone(),
        size: spooled.size,
        sha256: spooled.sha256.clone(),
        uncompressed_size: spooled.uncompressed_size,
        pg_dump_version: env.pg_dump.as_ref().map(|p| p.version.clone()),
        server_version: env.server_version.clone(),
        started_at,
        finished_at: env.clock.now(),
        row_counts: spooled.row_counts.clone(),
        encryption: recipient.map(|r| Encryption {
            scheme: "age-x25519".into(),
            recipient: r.to_string(),
        }),
        signature: None,
    };
    if let Some(key) = &env.signing_key {
        manifest.signature = Some(crate::crypto::sign::sign(key.expose(), &manifest.canonical()));
    }
    if let Err(e) = env.storage.put_bytes(&manifest_key, manifest.to_bytes()).await {
        remove_quietly(env.storage.as_ref(), &[&key]).await;
        unrecorded.keys.clear();
        return Err(anyhow::Error::new(e).context(format!("storing the manifest {manifest_key}")));
    }

    let file_name = key.rsplit('/').next().unwrap_or(&key).to_string();
    let record = NewRecord {
        file_name: &file_name,
        file_path: &key,
        file_size: spooled.size as i64,
        kind: req.kind,
        created_at: started_at,
        created_by_id: req.created_by_id,
    };
    // From the row on, a stop waits: the row and the tenant's row are written and reported together.
    let Some(_commit) = crate::stop::shield() else {
        return Err(anyhow::Error::new(crate::stop::Stopped));
    };
    let id = match env.catalog.insert_record(client, &schema, &record).await {
        Ok(id) => id,
        Err(InsertError::Failed(e)) => {
            remove_quietly(env.storage.as_ref(), &[&key, &manifest_key]).await;
            unrecorded.keys.clear();
            return Err(e.context("the object and manifest were removed again"));
        }
        // The answer to COMMIT was lost: the server says what happened, and the object follows.
        Err(InsertError::CommitLost { id, xid, source }) => match committed(&env.dump_target, xid).await {
            Ok(Some(true)) => {
                tracing::warn!(
                    "{schema}: the connection was lost after COMMIT was sent; the server says BackupRecord row {id} committed, so the backup is recorded and its object kept"
                );
                id
            }
            Ok(Some(false)) => {
                remove_quietly(env.storage.as_ref(), &[&key, &manifest_key]).await;
                return Err(source.context("the row was not committed; the object and manifest were removed again"));
            }
            _ => {
                return Err(source.context(format!(
                    "the connection was lost at COMMIT and the server could not be asked whether BackupRecord row {id} committed: the object {key} and its manifest are kept; check with `tenant-backup list --tenant {schema}` (`cleanup --orphans` finds an object without a row)"
                )))
            }
        },
    };
    unrecorded.keys.clear();
    if req.kind == BackupKind::Automatic {
        if let Err(e) = env.catalog.mark_backed_up(client, req.tenant.id, env.clock.now()).await {
            tracing::warn!(
                "{schema}: backup {id} is stored and recorded, but {e:#}; the next tick may back it up again"
            );
        }
    }
    if req.finish_schedule {
        let was = req.tenant.next_scheduled_backup;
        if let Err(e) = env.catalog.finish_scheduled(client, req.tenant.id, was).await {
            tracing::warn!("{schema}: backup {id} is recorded, but {e:#}");
        }
    }
    Ok(BackupOutcome {
        tenant: schema,
        id,
        key,
        size: spooled.size,
        uncompressed_size: spooled.uncompressed_size,
        sha256: spooled.sha256,
        backup_type: req.kind,
        created_at: started_at,
        duration: started.elapsed(),
    })
}

/// Dumps into the spool and stores it at the same time: storage follows the spool as it grows (a
/// remote upload overlaps the dump) and makes the object appear only once the dump is known whole.
/// The spool is written where storage wants it (a local directory: the object's own folder, so it
/// becomes the object without a copy), else in the temporary directory.
async fn spool_and_store(
    env: &BackupEnv,
    client: &Client,
    req: &BackupRequest,
    encrypt: Option<age::x25519::Recipient>,
    base: &ObjectKey,
    unrecorded: &mut Unrecorded,
) -> Result<(Spooled, String)> {
    let first_key = base.as_key();
    let object_name = first_key.rsplit('/').next().unwrap_or(&first_key).to_string();
    let (dir, durable) = match env.storage.spool_dir(&first_key) {
        Some(dir) => (dir, true),
        None => (env.spool_dir.clone(), false),
    };
    let (spool, growing) = spool::create(&dir, &object_name, durable).map_err(anyhow::Error::new)?;
    let storage = env.storage.as_ref();
    let (spooled, stored) = futures::join!(
        produce(env, client, req, encrypt, spool, &dir),
        store_without_overwrite(storage, base, growing, unrecorded)
    );
    // A failed dump explains more than the abandoned upload it caused, except when storage refused
    // the object for good: then the dump was stopped because of it.
    if let Err(e) = &stored {
        if matches!(e.downcast_ref::<StorageError>(), Some(StorageError::Rejected(_))) {
            return Err(stored.unwrap_err());
        }
    }
    let spooled = spooled?;
    let key = stored?;
    let size = storage
        .size(&key)
        .await
        .with_context(|| format!("checking the size of {key}"))?;
    if size != Some(spooled.size) {
        remove_quietly(storage, &[&key]).await;
        unrecorded.keys.clear();
        anyhow::bail!(
            "{} holds {size:?} bytes for {key} but {} were written; the object was removed",
            storage.describe(),
            spooled.size
        );
    }
    Ok((spooled, key))
}

/// Runs the dump (pg_dump, or the native dumper) into the spool.
async fn produce(
    env: &BackupEnv,
    client: &Client,
    req: &BackupRequest,
    encrypt: Option<age::x25519::Recipient>,
    spool: Spool,
    dir: &std::path::Path,
) -> Result<Spooled> {
    // What a restore would check the dump against: the backup checks it first.
    let scope = match env.format {
        DumpFormat::Custom => None,
        DumpFormat::Plain | DumpFormat::Json => Some(env.guard_scope(client, &req.tenant.schema_name).await?),
    };
    let Some(pg_dump) = &env.pg_dump else {
        // The native format: our own dumper streams into the same compress → checksum → spool path.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let spooler = spawn_spool(env, req, encrypt, None, dir, move |opts| {
            spool_stream(JsonLinesReader::new(rx), spool, opts)
        });
        let prefetched = env.prefetch.take(client, &req.tenant.schema_name).await;
        let counts = crate::jsonl::dump(
            client,
            &req.tenant.schema_name,
            &env.server_version,
            env.clock.now(),
            scope.as_ref().map(|scope| crate::jsonl::SelfCheck {
                scope,
                passed: &env.passed_shapes,
            }),
            prefetched,
            tx,
        )
        .await;
        // The spool's error explains more (e.g. --max-size) than the dumper's "the spool stopped".
        let mut spooled = spooler
            .await
            .context("the spool task panicked")?
            .map_err(anyhow::Error::new)?;
        spooled.row_counts = Some(counts?);
        return Ok(spooled);
    };
    let pg_format = match env.format {
        DumpFormat::Custom => PgDumpFormat::Custom,
        DumpFormat::Plain | DumpFormat::Json => PgDumpFormat::Plain,
    };
    let cmd = dump_command(
        pg_dump,
        &env.dump_target,
        &req.tenant.schema_name,
        pg_format,
        env.inserts,
    );
    spawn_spool(env, req, encrypt, scope, dir, move |opts| {
        dump_to_spool(cmd, spool, opts)
    })
    .await
    .context("the dump task panicked")?
    .map_err(anyhow::Error::new)
}

/// Runs `work` on a blocking thread with this backup's spool options.
fn spawn_spool(
    env: &BackupEnv,
    req: &BackupRequest,
    encrypt: Option<age::x25519::Recipient>,
    check: Option<crate::restore::guard::Scope>,
    dir: &std::path::Path,
    work: impl FnOnce(&SpoolOptions<'_>) -> Result<Spooled, SpoolError> + Send + 'static,
) -> tokio::task::JoinHandle<Result<Spooled, SpoolError>> {
    let spool_dir = dir.to_path_buf();
    let (format, compression, max_size, progress) = (env.format, env.compression, req.max_size, req.progress.clone());
    let target = env.dump_target.clone();
    tokio::task::spawn_blocking(move || {
        let scrub = move |s: &str| target.scrub(s);
        work(&SpoolOptions {
            format,
            compression,
            max_size,
            spool_dir: &spool_dir,
            progress,
            scrub: &scrub,
            encrypt,
            check,
        })
    })
}

/// Stores the spool, as it grows, under the first free name (`…-2`, `…-3` when taken). An upload
/// that began while the dump ran and failed gets one more try from the finished spool, without
/// dumping again.
async fn store_without_overwrite(
    storage: &dyn Storage,
    base: &ObjectKey,
    growing: GrowingFile,
    unrecorded: &mut Unrecorded,
) -> Result<String> {
    for n in 1..=100u32 {
        let key = if n == 1 {
            base.as_key()
        } else {
            base.with_suffix(n).as_key()
        };
        let began_while_dumping = !growing.is_complete();
        let mut outcome = storage.put_growing(&key, growing.clone()).await;
        if let Err(StorageError::Rejected(_)) = &outcome {
            // No retry fixes it: the dump is stopped rather than run to its end for nothing.
            growing.give_up();
        }
        if let Err(e) = &outcome {
            let retry = began_while_dumping
                && !matches!(
                    e,
                    StorageError::AlreadyExists(_) | StorageError::Abandoned(_) | StorageError::Rejected(_)
                )
                && crate::stop::requested().is_none();
            if retry && growing.clone().complete().await.is_ok() {
                tracing::warn!("storing {key} while dumping failed ({e}); storing it again from the finished spool");
                outcome = storage.put_file(&key, growing.path()).await;
            }
        }
        match outcome {
            Ok(()) => {
                unrecorded.keys.push(key.clone());
                return Ok(key);
            }
            Err(StorageError::AlreadyExists(_)) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("storing {key} in {}", storage.describe())));
            }
        }
    }
    anyhow::bail!(
        "100 objects named like {} already exist; is the clock stuck?",
        base.as_key()
    )
}

/// Objects stored for a backup whose row is not written yet: a stop that drops the backup deletes
/// them again (before the process exits).
struct Unrecorded {
    storage: Arc<dyn Storage>,
    keys: Vec<String>,
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let (storage, keys) = (self.storage.clone(), std::mem::take(&mut self.keys));
        crate::stop::defer(async move {
            let mut all_gone = true;
            for key in keys {
                match storage.delete(&key).await {
                    Ok(()) | Err(StorageError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::error!("could not remove {key} of a stopped backup: {e}; delete it by hand");
                        all_gone = false;
                    }
                }
            }
            all_gone
        });
    }
}

async fn remove_quietly(storage: &dyn Storage, keys: &[&str]) {
    for key in keys {
        if let Err(e) = storage.delete(key).await {
            if !matches!(e, StorageError::NotFound(_)) {
                tracing::error!("could not remove {key} after a failed backup: {e}; delete it by hand");
            }
        }
    }
}
