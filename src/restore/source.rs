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
use crate::backup::spool::sha256_of;
use crate::crypto::TenantKey;
use crate::error::UsageError;
use crate::pg::catalog::{schema_state, BackupRecord, Catalog, Tenant};
use crate::progress::{Counting, Shown};
use crate::storage::{place, Place, Storage, StorageError};

/// Which backup to restore.
#[derive(Clone, Debug)]
pub enum Which {
    Id(i64),
    Latest,
    Key(String),
    /// A file on the operator's disk (`--path`): see [`super::local`].
    Path(std::path::PathBuf),
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
    /// The tenant's key, when the object is encrypted (set by [`super::access::check_access`]).
    #[serde(skip)]
    pub decrypt: Option<TenantKey>,
    /// The file on the operator's disk it is read from (`--path`), instead of the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
}

/// Finds the backup and checks it belongs to `tenant` (or to `from_tenant`, when given). The
/// history is read if it is there; when it is not (the schema or its history table was dropped),
/// `--latest` is the newest backup the bucket's manifests know of. A row dated after `now` is never
/// "the latest".
pub async fn resolve_at(
    catalog: &Catalog,
    client: &Client,
    storage: &dyn Storage,
    tenant: &Tenant,
    which: &Which,
    from_tenant: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Source> {
    let schema = &tenant.schema_name;
    if let Which::Path(path) = which {
        return super::local::source(path, schema, from_tenant);
    }
    let history_of = from_tenant.unwrap_or(schema);
    let (_, has_history) = schema_state(client, catalog, history_of).await?;
    let records = if has_history {
        Some(catalog.records(client, history_of).await?)
    } else {
        None
    };
    let record: Option<BackupRecord> = match (which, &records) {
        (Which::Id(id), Some(records)) => Some(records.iter().find(|r| r.id == *id).cloned().ok_or_else(|| {
            UsageError::new(format!(
                "backup id {id} not found in {history_of}'s history: run `tenant-backup list --tenant {history_of}`"
            ))
        })?),
        (Which::Id(_), None) => {
            return Err(UsageError::new(format!(
                "{history_of} has no {} table (was its schema dropped?), so there are no ids to choose from: restore with --latest (the newest backup the bucket holds for it) or --file KEY",
                catalog.records_table
            ))
            .into())
        }
        (Which::Latest, Some(records)) => {
            let latest = records.iter().find(|r| r.created_at <= now).cloned();
            if latest.is_none() {
                let why = if records.is_empty() { "has no backups yet" } else { "has only backups dated in the future" };
                return Err(UsageError::new(format!("{history_of} {why}: nothing to restore (choose one with --file KEY)")).into());
            }
            latest
        }
        (Which::Latest, None) => None,
        (Which::Key(key), Some(records)) => records.iter().find(|r| &r.file_path == key).cloned(),
        (Which::Key(_), None) => None,
        (Which::Path(_), _) => None, // read above
    };
    let key = match (&record, which) {
        (Some(r), _) => r.file_path.clone(),
        (None, Which::Key(k)) => k.clone(),
        (None, _) => {
            let newest = bucket_backups(storage, history_of)
                .await?
                .into_iter()
                .find(|m| m.started_at <= now)
                .ok_or_else(|| {
                    UsageError::new(format!(
                        "{history_of} has no {} table and the bucket ({}) holds no backup of it with a manifest: restore one with --file KEY",
                        catalog.records_table,
                        storage.describe()
                    ))
                })?;
            tracing::info!(
                "{history_of} has no {} table: the newest backup in the bucket is {}",
                catalog.records_table,
                newest.key
            );
            newest.key
        }
    };
    follow_only_own_folder(&key, history_of, record.as_ref(), storage)?;
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
        decrypt: None,
        path: None,
    })
}

/// The manifest was written for this object, of this tenant, and for the row that named it: its
/// key is the key being read (the row's `file_path`, or `--file`), its tenant the tenant whose
/// folder holds it (the bytes' size and sha256 are checked against it by [`fetch_verified`]). A signature proves the tool wrote a manifest, not that it is this
/// backup's: without these checks an older signed backup copied (object and manifest) over a
/// newer one would pass as the newer one.
pub fn check_claims(source: &Source) -> Result<()> {
    let Some(m) = &source.manifest else {
        return Ok(());
    };
    let key = &source.key;
    if m.key != *key {
        anyhow::bail!(
            "{key}: its manifest is the manifest of {}: a backup was copied over another (or renamed); nothing was read",
            m.key
        );
    }
    if m.tenant != source.source_schema || !matches!(place(key, &m.tenant), Place::Tenant(_)) {
        anyhow::bail!(
            "{key}: its manifest is the manifest of a backup of {}, not of {} in {}/: nothing was read",
            m.tenant,
            source.source_schema,
            source.source_schema
        );
    }
    Ok(())
}

/// A row (or `--file`) is followed only into its tenant's own folder; a file outside the bucket
/// (the old application's `/var/backups/…`) is said to be so, with what to do.
fn follow_only_own_folder(
    key: &str,
    schema: &str,
    record: Option<&BackupRecord>,
    storage: &dyn Storage,
) -> Result<(), UsageError> {
    let what = match record {
        Some(r) => format!("backup {} of {schema} ({key})", r.id),
        None => key.to_string(),
    };
    match place(key, schema) {
        Place::Tenant(_) => Ok(()),
        Place::Outside(path) => {
            let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
            Err(UsageError::new(format!(
                "{what} is not in the configured storage ({}): {path} is a file outside the bucket, as the old application wrote them. \
                 To use it, restore it from this machine's disk with --path {path} (if it is here), or copy it into the bucket under {schema}/ (e.g. as {schema}/{name}) and pass --file {schema}/{name}, or point --storage at the storage that holds it",
                storage.describe()
            )))
        }
        Place::Foreign(_) => {
            let folder = key.split('/').next().unwrap_or("");
            let hint = if record.is_none() && crate::pg::sql::is_tenant_schema_name(folder) && folder != schema {
                format!(": it is a backup of tenant {folder}, not {schema}: add --from-tenant {folder} to restore it into {schema} anyway")
            } else {
                ": a row is never followed into another tenant's objects; fix or remove that row".to_string()
            };
            Err(UsageError::new(format!(
                "{what} is not under {schema}/, {schema}'s own folder{hint}"
            )))
        }
    }
}

/// Downloads the object to a temporary file and checks it against its manifest before anything
/// runs. Backups without a manifest (made by the old application) pass with a warning.
pub async fn fetch_verified(storage: &dyn Storage, source: &Source, progress: &Shown) -> Result<NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("tenant-backup-restore-")
        .tempfile()
        .context("creating a temporary file")?;
    let size = match &source.path {
        Some(path) => super::local::copy(path, file.path()).await?,
        None => storage
            .get_to_file(&source.key, file.path())
            .await
            .with_context(|| format!("downloading {} from {}", source.key, storage.describe()))?,
    };
    match &source.manifest {
        Some(m) => {
            let stored = Counting::new(
                std::fs::File::open(file.path())?,
                progress.start("checksummed", Some(size)),
            );
            let sha = tokio::task::spawn_blocking(move || sha256_of(stored)).await??;
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

/// Every backup of `schema` the bucket holds a manifest for, newest first.
pub async fn bucket_backups(storage: &dyn Storage, schema: &str) -> Result<Vec<Manifest>> {
    let objects = storage
        .list(&format!("{schema}/"))
        .await
        .with_context(|| format!("listing {schema}/ in {}", storage.describe()))?;
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.key.ends_with(".manifest.json")) {
        let object = o.key.trim_end_matches(".manifest.json");
        let Ok(bytes) = storage.get_bytes(&o.key).await else {
            continue;
        };
        match Manifest::from_bytes(&bytes) {
            // Only what is under its own name, about this tenant, with its object there.
            Ok(m) if m.tenant == schema && m.key == object && objects.iter().any(|x| x.key == object) => out.push(m),
            Ok(_) => {}
            Err(e) => tracing::warn!("{}: not a manifest ({e}); skipped", o.key),
        }
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.key.cmp(&a.key)));
    Ok(out)
}
