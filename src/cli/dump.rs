//! `backup` and `run-scheduled`: what to dump and how, and when a tick backs a tenant up.

use clap::{Args, ValueEnum};

use super::values::*;
use crate::backup::env::{CompressionChoice, DumpRequest, FormatChoice};
use crate::pg::catalog::BackupKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackupType {
    Manual,
    Automatic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Plain SQL when a pg_dump at least as new as the server is found, else json (and says why)
    Auto,
    /// Plain SQL (restored with psql)
    Sql,
    /// pg_dump's custom format (restored with pg_restore)
    Custom,
    /// The native JSON Lines format: no pg_dump needed (restored into the existing tables)
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressArg {
    /// zstd for sql and json, none for custom (pg_dump compresses it itself)
    Auto,
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Dump format
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,

    /// INSERT statements instead of COPY (the application's old dumps)
    #[arg(long)]
    pub inserts: bool,

    /// Compression of the stored object
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,

    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6)
    #[arg(long, value_parser = in_range::<i32>(1, 19))]
    pub level: Option<i32>,

    /// Refuse backups whose stored size would exceed this many bytes (K, M, G suffixes allowed)
    #[arg(long, value_parser = parse_size)]
    pub max_size: Option<u64>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["tenants", "all"])))]
pub struct BackupArgs {
    /// Tenant schema to back up (repeatable; or --all)
    #[arg(long = "tenant", value_name = "SCHEMA", conflicts_with = "all")]
    pub tenants: Vec<String>,

    /// Back up every tenant
    #[arg(long)]
    pub all: bool,

    /// Record the backup as manual or automatic
    #[arg(long = "type", value_enum, default_value_t = BackupType::Manual)]
    pub backup_type: BackupType,

    /// User (id or email, in the tenant's --users-table) recorded as the backup's creator
    #[arg(long, value_name = "ID|EMAIL")]
    pub created_by: Option<String>,

    /// Tenants backed up at once with --all
    #[arg(long, default_value_t = 2, value_parser = concurrency())]
    pub concurrency: u32,

    /// Seconds to wait for a tenant another process is backing up, restoring or cleaning
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = lock_timeout())]
    pub lock_timeout: u64,

    #[command(flatten)]
    pub dump: DumpArgs,
}

#[derive(Debug, Args)]
pub struct RunScheduledArgs {
    /// Tenants backed up at once
    #[arg(long, default_value_t = 2, value_parser = concurrency())]
    pub concurrency: u32,

    /// Print who is due and why, touching nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub when: WhenArgs,

    #[command(flatten)]
    pub dump: DumpArgs,
}

/// The local hour daily and weekly backups wait for.
#[derive(Debug, Args)]
pub struct WhenArgs {
    /// Local time of day (HH:MM) before which daily and weekly backups wait [default: UTC dates,
    /// as the application]
    #[arg(long, env = "BACKUP_DAILY_AT")]
    pub daily_at: Option<String>,

    /// Time zone for --daily-at (IANA name, e.g. Europe/Madrid) [default: UTC]
    #[arg(long, env = "BACKUP_TIMEZONE")]
    pub timezone: Option<String>,
}

impl From<BackupType> for BackupKind {
    fn from(t: BackupType) -> Self {
        match t {
            BackupType::Manual => BackupKind::Manual,
            BackupType::Automatic => BackupKind::Automatic,
        }
    }
}

impl DumpArgs {
    /// The dump flags as the core reads them.
    pub fn request(&self) -> DumpRequest {
        DumpRequest {
            format: match self.format {
                FormatArg::Auto => FormatChoice::Auto,
                FormatArg::Sql => FormatChoice::Sql,
                FormatArg::Custom => FormatChoice::Custom,
                FormatArg::Json => FormatChoice::Json,
            },
            inserts: self.inserts,
            compression: match self.compress {
                CompressArg::Auto => CompressionChoice::Auto,
                CompressArg::Zstd => CompressionChoice::Zstd,
                CompressArg::Gzip => CompressionChoice::Gzip,
                CompressArg::None => CompressionChoice::None,
            },
            level: self.level,
        }
    }
}
