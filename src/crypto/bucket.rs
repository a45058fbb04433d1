//! Tenant keys in the bucket too, so that the bucket, the master identity and the signing key
//! restore every tenant after the database is gone: each tenant's identity, wrapped to a master
//! recipient exactly as in the key table, is stored as `.keys/<tenant>/<master recipient>.age`
//! before the first object that needs it. The folder is hidden: no tenant's folder holds it, so
//! listings, cleanup and orphans never see it as a backup. `keys forget` deletes every copy.

use anyhow::{Context as _, Result};

use super::keys::{unwrap, KeyError};
use super::MasterIdentity;
use crate::storage::{Storage, StorageError};

/// The bucket's folder of tenant keys.
pub const FOLDER: &str = ".keys";

/// Where the tenant's key wrapped to `wrapped_to` (a master recipient) lives in the bucket.
pub fn key_of(tenant: &str, wrapped_to: &str) -> String {
    format!("{FOLDER}/{tenant}/{wrapped_to}.age")
}

/// Stores the tenant's wrapped key in the bucket unless the very same bytes are there. Something
/// else under that name (a key made before a `keys forget`, or planted) is replaced: the key table
/// is the source of truth while the database lives.
pub async fn publish(storage: &dyn Storage, tenant: &str, wrapped: &[u8], wrapped_to: &str) -> Result<()> {
    let key = key_of(tenant, wrapped_to);
    let stored =
        |e: StorageError| anyhow::Error::new(e).context(format!("storing {tenant}'s key in the bucket as {key}"));
    match storage.put_bytes(&key, wrapped.to_vec()).await {
        Ok(()) => {}
        Err(StorageError::AlreadyExists(_)) => {
            if storage.get_bytes(&key).await.map_err(stored)? == wrapped {
                return Ok(());
            }
            tracing::warn!("{key} in the bucket is not {tenant}'s key in the key table: replacing it");
            storage.delete(&key).await.map_err(stored)?;
            storage.put_bytes(&key, wrapped.to_vec()).await.map_err(stored)?;
        }
        Err(e) => return Err(stored(e)),
    }
    tracing::info!("{tenant}: key stored in the bucket ({key})");
    Ok(())
}

/// Every copy of the tenant's key in the bucket.
pub async fn copies(storage: &dyn Storage, tenant: &str) -> Result<Vec<String>> {
    let prefix = format!("{FOLDER}/{tenant}/");
    let found = storage
        .list(&prefix)
        .await
        .with_context(|| format!("listing {tenant}'s keys in the bucket ({prefix})"))?;
    Ok(found.into_iter().map(|o| o.key).collect())
}

/// The tenant's identity from its bucket copy wrapped to `master`'s recipient; `Ok(None)` when
/// the bucket holds no copy at all.
pub async fn identity_for(
    storage: &dyn Storage,
    tenant: &str,
    master: &MasterIdentity,
) -> Result<Option<age::x25519::Identity>> {
    let ours = master.recipient().as_string();
    let key = key_of(tenant, &ours);
    match storage.get_bytes(&key).await {
        Ok(wrapped) => unwrap(&wrapped, master)
            .map(Some)
            .with_context(|| format!("{key} in the bucket cannot be unwrapped with this identity")),
        Err(StorageError::NotFound(_)) => match copies(storage, tenant).await?.first() {
            Some(other) => Err(KeyError::OtherMaster {
                tenant: tenant.to_string(),
                wrapped_to: other
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.strip_suffix(".age"))
                    .unwrap_or(other)
                    .to_string(),
                ours,
            }
            .into()),
            None => Ok(None),
        },
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {tenant}'s key from the bucket"))),
    }
}

/// Deletes every copy of the tenant's key from the bucket, and what an interrupted write of one
/// left (a local `.partial` file, an S3 multipart upload); how many copies there were.
pub async fn forget(storage: &dyn Storage, tenant: &str) -> Result<usize> {
    let found = copies(storage, tenant).await?;
    for key in &found {
        match storage.delete(key).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("deleting {key} from the bucket"))),
        }
    }
    let prefix = format!("{FOLDER}/{tenant}/");
    for upload in storage.unfinished(&prefix).await? {
        match storage.discard_unfinished(&upload).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {} from the bucket", upload.key))),
        }
    }
    Ok(found.len())
}
