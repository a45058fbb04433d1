//! What a run of backups shares, and where it is decided: the format (`--format auto` picks plain
//! SQL when a pg_dump at least as new as the server exists, else the native json format, saying
//! why), the compression, and the pg_dump to use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use tokio_postgres::Client;

use super::compress::Compression;
use super::format::DumpFormat;
use crate::clock::Clock;
use crate::crypto::keys::KeyStore;
use crate::crypto::MasterRecipient;
use crate::error::UsageError;
use crate::pg::catalog::Catalog;
use crate::pg::target::DbTarget;
use crate::pg::tools::{server_version, PgDump};
use crate::secret::Secret;
use crate::storage::Storage;

/// The format the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatChoice {
    Auto,
    Sql,
    Custom,
    Json,
}

/// The compression the operator asked for; `Auto` is zstd, or none for custom archives (pg_dump
/// compresses those itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionChoice {
    Auto,
    Zstd,
    Gzip,
    None,
}

/// How to dump, as asked (flags), before the server has been seen.
#[derive(Clone, Copy, Debug)]
pub struct DumpRequest {
    pub format: FormatChoice,
    pub inserts: bool,
    pub compression: CompressionChoice,
    pub level: Option<i32>,
}

impl DumpRequest {
    /// Everything a user can get wrong in the dump flags, checked before anything is touched.
    pub fn check(&self) -> Result<(), UsageError> {
        if self.level.is_some() && self.compression == CompressionChoice::None {
            return Err(UsageError::new("--level needs --compress zstd or gzip"));
        }
        if self.inserts && matches!(self.format, FormatChoice::Custom | FormatChoice::Json) {
            return Err(UsageError::new("--inserts applies to --format sql only"));
        }
        self.compression_for(DumpFormat::Plain)?;
        Ok(())
    }

    pub fn compression_for(&self, format: DumpFormat) -> Result<Compression, UsageError> {
        let name = match (self.compression, format) {
            (CompressionChoice::Auto, DumpFormat::Custom) => "none",
            (CompressionChoice::Auto, _) | (CompressionChoice::Zstd, _) => "zstd",
            (CompressionChoice::Gzip, _) => "gzip",
            (CompressionChoice::None, _) => "none",
        };
        Compression::from_name(name, self.level)
    }
}

/// What every backup of one run shares.
pub struct BackupEnv {
    pub storage: Arc<dyn Storage>,
    pub catalog: Catalog,
    /// Session-mode connection target for pg_dump.
    pub dump_target: DbTarget,
    /// None for the native json format, which needs no pg_dump.
    pub pg_dump: Option<PgDump>,
    pub format: DumpFormat,
    pub inserts: bool,
    pub compression: Compression,
    pub server_version: String,
    pub clock: Arc<dyn Clock>,
    pub spool_dir: PathBuf,
    /// Set: every backup is encrypted to its tenant's key (created on first use, wrapped to the
    /// master recipient).
    pub seal: Option<Seal>,
    /// Set: every manifest is signed.
    pub signing_key: Option<Secret<Vec<u8>>>,
}

/// Where tenant keys come from when backups are encrypted.
pub struct Seal {
    pub master: MasterRecipient,
    pub store: KeyStore,
}

/// The format, the pg_dump for it, and the server's version, as settled for one run.
pub struct Tools {
    pub format: DumpFormat,
    pub pg_dump: Option<PgDump>,
    pub server_version: String,
}

/// Asks the server its version, finds a pg_dump that can dump it, and settles the format.
pub async fn choose_tools(client: &Client, req: &DumpRequest, explicit_pg_dump: Option<&Path>) -> Result<Tools> {
    let (version, major) = server_version(client).await?;
    let (format, pg_dump) = match req.format {
        FormatChoice::Json => (DumpFormat::Json, None),
        requested => match PgDump::find(explicit_pg_dump, major) {
            Ok(p) => {
                tracing::debug!("using {} ({}) for PostgreSQL {version}", p.path.display(), p.version);
                let format = if requested == FormatChoice::Custom {
                    DumpFormat::Custom
                } else {
                    DumpFormat::Plain
                };
                (format, Some(p))
            }
            Err(e) if requested == FormatChoice::Auto => {
                tracing::info!("using the native json format (no pg_dump needed): {e}");
                (DumpFormat::Json, None)
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context("--format sql and custom need pg_dump; --format json or auto do not")
                )
            }
        },
    };
    Ok(Tools {
        format,
        pg_dump,
        server_version: version,
    })
}
