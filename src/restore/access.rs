//! What reading a stored backup needs beyond its bytes: a signature that proves the tool wrote the
//! manifest (when a signing key is configured) and, for an encrypted object, the tenant's identity,
//! unwrapped with the master identity. Both are settled before anything is downloaded or run.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Result;
use tokio_postgres::Client;

use super::source::{check_claims, Source};
use crate::backup::compress::Compression;
use crate::crypto::bucket;
use crate::crypto::keys::{KeyError, KeyStore};
use crate::crypto::{sign, KeyConfig, TenantKey};
use crate::error::UsageError;
use crate::storage::Storage;

/// Signature refused: the manifest is missing, unsigned, or signed with another key.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "{0} is not signed, and BACKUP_SIGNING_KEY is set: it was not written by this tool with that key (or predates signing); nothing was read. Pass --allow-unsigned to read it anyway (the old application's backups)"
    )]
    Unsigned(String),
    #[error(
        "{0}: the manifest's signature does not match BACKUP_SIGNING_KEY: the object or its manifest was changed by someone without the key; nothing was read"
    )]
    Mismatch(String),
}

/// An unencrypted object, unsigned, for a tenant whose backups are encrypted.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} is not encrypted, but {1} has an encryption key and nothing vouches for the object (no valid signature): it may be a forgery put in place of an encrypted backup; nothing was read. Pass --allow-unencrypted to read it anyway (backups taken before encryption was turned on)"
)]
pub struct DowngradeError(String, String);

/// What a reader lets through that it otherwise refuses.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// `--allow-unsigned`: a manifest without a signature although a signing key is set.
    pub unsigned: bool,
    /// `--allow-unencrypted`: an unencrypted object of a tenant that has a key, its manifest not
    /// signed.
    pub unencrypted: bool,
}

/// Every check a read makes before anything is downloaded or run, in one place: the manifest is
/// this object's, this tenant's and this row's ([`check_claims`]); its signature (when a signing
/// key is set); an unencrypted object of a tenant that has a key is a downgrade unless a valid
/// signature vouches for it; an encrypted object's tenant key unwraps and is the one the manifest
/// names. Returns the tenant identity to decrypt with, if the object is encrypted.
pub async fn check_access(
    source: &Source,
    keys: &KeyConfig,
    store: &KeyStore,
    client: &Client,
    storage: &dyn Storage,
    allow: Allow,
) -> Result<Option<TenantKey>> {
    let allow_unsigned = allow.unsigned;
    let mut signed = false;
    if let Some(key) = &keys.signing_key {
        match source.manifest.as_ref().map(|m| (m, m.signature.as_deref())) {
            None | Some((_, None)) if allow_unsigned => {
                tracing::warn!("{} is not signed; reading it anyway (--allow-unsigned)", source.key)
            }
            None | Some((_, None)) => return Err(SignatureError::Unsigned(source.key.clone()).into()),
            Some((m, Some(sig))) => {
                if !sign::verify(key.expose(), &m.canonical(), sig) {
                    return Err(SignatureError::Mismatch(source.key.clone()).into());
                }
                tracing::debug!("{}: signature ok", source.key);
                signed = true;
            }
        }
    }
    check_claims(source)?;
    let encrypted = source
        .manifest
        .as_ref()
        .map_or(source.key.ends_with(".age"), |m| m.encryption.is_some());
    let owner = source
        .manifest
        .as_ref()
        .map(|m| m.tenant.as_str())
        .unwrap_or(source.source_schema.as_str());
    if !encrypted {
        let has_key = store.has_key(client, owner).await? || !bucket::copies(storage, owner).await?.is_empty();
        if !signed && has_key {
            if !allow.unencrypted {
                return Err(DowngradeError(source.key.clone(), owner.to_string()).into());
            }
            tracing::warn!(
                "{} is not encrypted although {owner} has a key; reading it anyway (--allow-unencrypted)",
                source.key
            );
        }
        return Ok(None);
    }
    let master = keys.identity.as_ref().ok_or_else(|| {
        UsageError::new(format!(
            "{} is encrypted: reading it needs the master identity: set BACKUP_AGE_IDENTITY or pass --identity FILE (a cron job holds only BACKUP_AGE_RECIPIENT, on purpose)",
            source.key
        ))
    })?;
    let identity = match store.identity_for(client, owner, master).await {
        Ok(id) => id,
        // No key in this database (a new one, after a disaster): the bucket's copy.
        Err(e) if matches!(e.downcast_ref(), Some(KeyError::Forgotten(_))) => {
            match bucket::identity_for(storage, owner, master).await? {
                Some(id) => {
                    tracing::info!("{owner}: no key in {}; using the bucket's copy", store.table);
                    id
                }
                None => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let named = source.manifest.as_ref().and_then(|m| m.encryption.as_ref());
    if let Some(e) = named.filter(|e| e.recipient != identity.to_public().to_string()) {
        anyhow::bail!(
            "{}: encrypted to {}, which is not {owner}'s key: the object or its manifest is not {owner}'s; nothing was read",
            source.key,
            e.recipient
        );
    }
    Ok(Some(TenantKey(identity)))
}

/// The stored bytes at `path` as the dump they hold: decrypted (when `decrypt` is given), then
/// decompressed, streaming.
pub fn open_plain(
    path: &Path,
    compression: Compression,
    decrypt: Option<&TenantKey>,
) -> io::Result<Box<dyn BufRead + Send>> {
    read_plain(std::fs::File::open(path)?, compression, decrypt)
}

/// `stored` (an object's bytes) as the dump they hold; see [`open_plain`].
pub fn read_plain(
    stored: impl Read + Send + 'static,
    compression: Compression,
    decrypt: Option<&TenantKey>,
) -> io::Result<Box<dyn BufRead + Send>> {
    let file = BufReader::with_capacity(256 * 1024, stored);
    let clear: Box<dyn BufRead + Send> = match decrypt {
        None => Box::new(file),
        Some(id) => Box::new(BufReader::with_capacity(
            256 * 1024,
            crate::crypto::stream::decrypting(&id.0, file)?,
        )),
    };
    let plain: Box<dyn Read + Send> = compression.decoder(clear)?;
    Ok(Box::new(BufReader::with_capacity(256 * 1024, plain)))
}

/// The stored bytes at `path` decrypted but still compressed (what `download` writes without
/// `--decompress`).
pub fn open_decrypted(path: &Path, decrypt: Option<&TenantKey>) -> io::Result<Box<dyn Read + Send>> {
    let file = BufReader::with_capacity(256 * 1024, std::fs::File::open(path)?);
    Ok(match decrypt {
        None => Box::new(file),
        Some(k) => crate::crypto::stream::decrypting(&k.0, file)?,
    })
}
