//! Which backup to restore: resolved from the history or the bucket, fetched, and checked.

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tempfile::NamedTempFile;
use tokio_postgres::Client;

use crate::backup::compress::Compression;
use crate::backup::format::DumpFormat;
use crate::backup::key::ObjectKey;
use crate::backup::manifest::Manifest;
use crate::backup::spool::sha256_file;
use crate::error::UsageError;
use crate::pg::catalog::{BackupRecord, Catalog, Tenant};
use crate::storage::{Storage, StorageError};

/// Which backup to restore.
#[derive(Clone, Debug)]
pub enum Which {
    Id(i64),
    Latest,
    Key(String),
}

/// A backup, resolved and described.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub key: String,
    pub record_id: Option<i64>,
    /// When the backup was taken: rows of the history newer than this are carried over.
    pub created_at: DateTime<Utc>,
    /// The schema the dump creates.
    pub source_schema: String,
    #[serde(skip)]
    pub format: DumpFormat,
    #[serde(skip)]
    pub compression: Compression,
    pub size: Option<u64>,
    pub manifest: Option<Manifest>,
}

/// Finds the backup and checks it belongs to `tenant` (or to `from_tenant`, when given).
pub async fn resolve(
    catalog: &Catalog,
    client: &Client,
    storage: &dyn Storage,
    tenant: &Tenant,
    which: &Which,
    from_tenant: Option<&str>,
) -> Result<Source> {
    let schema = &tenant.schema_name;
    let history_of = from_tenant.unwrap_or(schema);
    let records = match catalog.records_if_present(client, history_of).await? {
        Some(records) => records,
        // A dropped schema took its history with it: the object named is all there is.
        None if matches!(which, Which::Key(_)) => Vec::new(),
        None => {
            return Err(UsageError::new(format!(
                "{history_of} has no history table {} (was the schema dropped?): name the backup with --file KEY (the objects are under {history_of}/ in the bucket)",
                catalog.records_in(history_of)
            ))
            .into())
        }
    };
    let record: Option<BackupRecord> = match which {
        Which::Id(id) => Some(records.iter().find(|r| r.id == *id).cloned().ok_or_else(|| {
            UsageError::new(format!(
                "backup id {id} not found in {history_of}'s history: run `tenant-backup list --tenant {history_of}`"
            ))
        })?),
        Which::Latest => Some(
            records
                .first()
                .cloned()
                .ok_or_else(|| UsageError::new(format!("{history_of} has no backups yet: nothing to restore")))?,
        ),
        Which::Key(key) => records.iter().find(|r| &r.file_path == key).cloned(),
    };
    let key = match (&record, which) {
        (Some(r), _) => r.file_path.clone(),
        (None, Which::Key(k)) => k.clone(),
        (None, _) => unreachable!("ids and latest always resolve to a record"),
    };
    let manifest = match storage.get_bytes(&ObjectKey::manifest_key(&key)).await {
        Ok(bytes) => Some(Manifest::from_bytes(&bytes).with_context(|| format!("reading the manifest of {key}"))?),
        Err(StorageError::NotFound(_)) => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading the manifest of {key}"))),
    };
    let parsed = ObjectKey::parse(&key);
    let owner = manifest
        .as_ref()
        .map(|m| m.tenant.clone())
        .or_else(|| parsed.as_ref().map(|p| p.schema.clone()));
    let source_schema = match (&owner, from_tenant) {
        (Some(o), Some(f)) if o != f => {
            return Err(UsageError::new(format!("{key} is a backup of {o}, not of {f} (--from-tenant)")).into())
        }
        (Some(o), None) if o != schema => {
            return Err(UsageError::new(format!(
            "{key} is a backup of tenant {o}, not {schema}: add --from-tenant {o} to restore it into {schema} anyway"
        ))
            .into())
        }
        (Some(o), _) => o.clone(),
        (None, Some(f)) => f.to_string(),
        (None, None) if record.is_some() => schema.clone(),
        (None, None) => {
            return Err(UsageError::new(format!(
                "cannot tell which tenant {key} belongs to (no manifest, unknown name): add --from-tenant SCHEMA"
            ))
            .into())
        }
    };
    // The manifest says how the object is read back; only objects without one (the old
    // application's) are judged by their name.
    let (format, compression) = match &manifest {
        Some(m) => (m.format, m.compression),
        None => (DumpFormat::from_key(&key), Compression::from_ext(&key)),
    };
    let created_at = record
        .as_ref()
        .map(|r| r.created_at)
        .or_else(|| manifest.as_ref().map(|m| m.started_at))
        .or_else(|| parsed.as_ref().map(|p| p.created.and_utc()))
        .with_context(|| format!("cannot tell when {key} was taken"))?;
    Ok(Source {
        compression,
        record_id: record.as_ref().map(|r| r.id),
        size: manifest
            .as_ref()
            .map(|m| m.size)
            .or(record.as_ref().map(|r| r.file_size as u64)),
        key,
        created_at,
        source_schema,
        format,
        manifest,
    })
}

/// Downloads the object to a temporary file and checks it against its manifest before anything
/// runs. Backups without a manifest (made by the old application) pass with a warning.
pub async fn fetch_verified(storage: &dyn Storage, source: &Source) -> Result<NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("tenant-backup-restore-")
        .tempfile()
        .context("creating a temporary file")?;
    let size = storage
        .get_to_file(&source.key, file.path())
        .await
        .with_context(|| format!("downloading {} from {}", source.key, storage.describe()))?;
    match &source.manifest {
        Some(m) => {
            let path = file.path().to_path_buf();
            let sha = tokio::task::spawn_blocking(move || sha256_file(&path)).await??;
            if size != m.size || sha != m.sha256 {
                anyhow::bail!(
                    "{} does not match its manifest (size {size} vs {}, sha256 {sha} vs {}): the object is corrupt or was changed; nothing was restored",
                    source.key,
                    m.size,
                    m.sha256
                );
            }
            tracing::info!("checksum ok: {} ({} bytes, sha256 {})", source.key, size, &sha[..16]);
        }
        None => tracing::warn!(
            "{} has no manifest (an old backup): there is no checksum to verify it against",
            source.key
        ),
    }
    Ok(file)
}
