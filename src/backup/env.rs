//! What a run of backups shares, and where it is decided: the format, the compression, and the
//! pg_dump to use.
//!
//! `--format auto` picks plain SQL (pg_dump) for a database of at most [`NATIVE_ABOVE_TENANTS`]
//! tenants when a pg_dump at least as new as the server exists, and the native json format
//! otherwise, saying why. pg_dump reads the catalog of the whole database even for one schema, so
//! its cost per tenant grows with the number of tenants (0.12 s at 10 tenants, 1.1 s at 1,000, 6 s
//! at 10,000 on a 2-core machine); the native format reads only the tenant's own catalog rows,
//! through indexes, and costs the same at any size. Its version 3 carries the schema's structure,
//! so a dropped tenant restores from it as from pg_dump's dump.

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

/// Above this many tenants `--format auto` writes the native format. pg_dump's catalog read costs
/// about 0.6 ms per tenant in the database (`cargo bench --bench fleet`: `pg_dump -n` takes 0.06 s
/// at 10 tenants, 0.68 s at 1,000), so up to 100 tenants a plain SQL backup stays within 1.5x of
/// what it costs at 10 tenants (0.14 s), and past that it only grows.
pub const NATIVE_ABOVE_TENANTS: u64 = 100;
use crate::pg::target::DbTarget;
use crate::pg::tools::{server_version, FindError, PgDump};
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
    /// The database's names the restore guard checks every dump against, read once a run (see
    /// [`BackupEnv::guard_scope`]).
    pub guard_names: tokio::sync::OnceCell<std::sync::Arc<crate::restore::guard::Names>>,
    /// The native structures' shapes that passed the guard in this run, against `guard_names`
    /// (see [`crate::jsonl::PassedShapes`]).
    pub passed_shapes: crate::jsonl::PassedShapes,
    /// The structure of a run's tenants, read many at a time (native format only; see
    /// [`super::prefetch`]).
    pub prefetch: super::prefetch::Prefetch,
}

impl BackupEnv {
    /// What a restore of `schema` would be checked against: every backup is checked by the same
    /// guard before it is called OK.
    pub async fn guard_scope(
        &self,
        client: &tokio_postgres::Client,
        schema: &str,
    ) -> anyhow::Result<crate::restore::guard::Scope> {
        use crate::restore::guard::Names;
        let names = self.guard_names.get_or_try_init(|| Names::load(client)).await?;
        Ok(names.scope(schema, 0))
    }
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

/// Asks the server its version, finds a pg_dump that can dump it, and settles the format (for
/// `auto`, counting the tenants in `catalog`'s tenant table).
pub async fn choose_tools(
    client: &Client,
    req: &DumpRequest,
    explicit_pg_dump: Option<&Path>,
    catalog: &Catalog,
) -> Result<Tools> {
    let (version, major) = server_version(client).await?;
    let many = match req.format {
        FormatChoice::Auto => Some(catalog.tenant_count(client).await?).filter(|n| *n > NATIVE_ABOVE_TENANTS),
        _ => None,
    };
    let (format, pg_dump) = match req.format {
        FormatChoice::Json => (DumpFormat::Json, None),
        FormatChoice::Auto if many.is_some() => {
            tracing::info!(
                "using the native json format: {} tenants (more than {NATIVE_ABOVE_TENANTS}), and pg_dump reads every tenant's catalog for each one; --format sql forces pg_dump",
                many.unwrap_or_default()
            );
            (DumpFormat::Json, None)
        }
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
            // An explicit --pg-dump / PG_DUMP that does not exist (or does not answer) is a
            // mistake to fix, never a quiet switch to another format.
            Err(e @ FindError::NotFound { .. }) if explicit_pg_dump.is_some() => {
                return Err(crate::usage!(
                    "--pg-dump / PG_DUMP: {e}; fix the path, or unset it to let tenant-backup find pg_dump"
                ))
            }
            Err(e) if requested == FormatChoice::Auto => {
                tracing::info!("using the native json format (no pg_dump needed): {e}");
                (DumpFormat::Json, None)
            }
            Err(e) => {
                return Err(crate::usage!(
                    "--format sql and custom need pg_dump: {e}; install the PostgreSQL client programs, or use --format json or auto"
                ))
            }
        },
    };
    Ok(Tools {
        format,
        pg_dump,
        server_version: version,
    })
}
