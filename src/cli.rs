//! Every clap type, in one place. Flags win over environment variables, which win over `.env`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backup::env::{CompressionChoice, DumpRequest, FormatChoice};
use crate::pg::catalog::BackupKind;

#[derive(Debug, Parser)]
#[command(
    name = "tenant-backup",
    version,
    about = "Back up a django-tenants PostgreSQL database one tenant schema at a time",
    long_about = "Back up a django-tenants PostgreSQL database one tenant schema at a time, into a local \
                  directory, S3 or Supabase Storage, keeping each backup's history as a BackupRecord row \
                  in the tenant's own schema.\n\nExit codes: 0 all done, 1 some work failed, 2 bad usage or \
                  configuration (nothing was touched)."
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL URL of the application database
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Direct or session-mode URL for pg_dump, psql and locks (default: DATABASE_URL, or its
    /// session-mode twin on port 5432 when DATABASE_URL is a transaction pooler)
    #[arg(long, env = "BACKUP_DUMP_URL", global = true, hide_env_values = true)]
    pub dump_url: Option<String>,

    /// Table holding the tenants
    #[arg(
        long,
        env = "BACKUP_TENANTS_TABLE",
        default_value = "public.tenants_clinic",
        global = true
    )]
    pub tenants_table: String,

    /// History table inside each tenant schema
    #[arg(
        long,
        env = "BACKUP_RECORDS_TABLE",
        default_value = "backups_backuprecord",
        global = true
    )]
    pub records_table: String,

    /// User table inside each tenant schema (BackupRecord.created_by points there)
    #[arg(long, env = "BACKUP_USERS_TABLE", default_value = "users_user", global = true)]
    pub users_table: String,

    /// pg_dump to use (default: the lowest version at least the server's, found in the usual places)
    #[arg(long, env = "PG_DUMP", global = true)]
    pub pg_dump: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Where backups go: a directory, file:///path, s3://bucket/prefix or supabase://bucket/prefix
    /// [default: supabase://$SUPABASE_BUCKET_NAME when SUPABASE_URL is set, else ./backups]
    #[arg(long, env = "BACKUP_STORAGE", global = true, hide_env_values = true)]
    pub storage: Option<String>,

    /// Retries of a storage request that failed with 429, 5xx or a connection error
    #[arg(long, env = "BACKUP_STORAGE_RETRIES", default_value_t = 5, global = true)]
    pub storage_retries: u32,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print results as JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,

    /// No progress bar or progress lines
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up one or more tenants now
    Backup(BackupArgs),
    /// One cron tick: back up every tenant that is due
    RunScheduled(RunScheduledArgs),
    /// Restore a tenant from a backup, atomically
    Restore(RestoreArgs),
    /// Delete old backups (object, manifest and row)
    Cleanup(CleanupArgs),
    /// Show the backup history
    List(ListArgs),
    /// Set a tenant's backup schedule
    Schedule(ScheduleArgs),
    /// Per tenant: schedule, last backup, next due, overdue
    Status(StatusArgs),
    /// Fetch one backup to a file or stdout
    Download(DownloadArgs),
    /// Check a backup: checksum, then a restore inside a transaction that is rolled back
    Verify(VerifyArgs),
    /// Check the setup: database, pooler, pg_dump, storage (one line each)
    Doctor,
}

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
    #[arg(long)]
    pub level: Option<i32>,

    /// Refuse backups whose stored size would exceed this many bytes (K, M, G suffixes allowed)
    #[arg(long, value_parser = parse_size)]
    pub max_size: Option<u64>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Tenant schema to back up (repeatable)
    #[arg(
        long = "tenant",
        value_name = "SCHEMA",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
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
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,

    /// Seconds to wait for a tenant another process is backing up, restoring or cleaning
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lock_timeout: u64,

    #[command(flatten)]
    pub dump: DumpArgs,
}

#[derive(Debug, Args)]
pub struct RunScheduledArgs {
    /// Tenants backed up at once
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "latest", "file"])))]
pub struct RestoreArgs {
    /// Tenant schema to restore
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id (see `list`)
    #[arg(long)]
    pub id: Option<i64>,
    /// The newest backup
    #[arg(long)]
    pub latest: bool,
    /// Object key in the bucket
    #[arg(long, value_name = "KEY")]
    pub file: Option<String>,
    /// Accept a backup made of another tenant (its history is searched for --id/--latest)
    #[arg(long, value_name = "SCHEMA")]
    pub from_tenant: Option<String>,
    /// Restore as a new schema, leaving the tenant untouched
    #[arg(long, value_name = "SCHEMA", conflicts_with = "drop_previous")]
    pub into: Option<String>,
    /// Drop the previous schema in the same transaction instead of keeping it renamed
    #[arg(long)]
    pub drop_previous: bool,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Download, verify the checksum and print the plan, touching nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for locks (the tenant's backup lock, and the application's locks on the
    /// schema) before giving up cleanly
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["days", "orphans", "pre_restore_days"])))]
pub struct CleanupArgs {
    /// Delete automatic backups older than this many days (object, manifest, then row)
    #[arg(long, value_name = "N")]
    pub days: Option<String>,
    /// Never delete the newest K backups of a tenant (counted among those --days may delete)
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub keep_last: u32,
    /// Also delete manual backups (the application kept those forever), with --days or --orphans --fix
    #[arg(long)]
    pub include_manual: bool,
    /// Only this tenant
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: Option<String>,
    /// Print what would be done, touching nothing
    #[arg(long)]
    pub dry_run: bool,
    /// List objects no row points to, rows whose object is missing or outside the bucket, and
    /// unfinished uploads, in each tenant's own folder
    #[arg(long)]
    pub orphans: bool,
    /// With --orphans: delete such objects and unfinished uploads older than --grace-hours, and
    /// such rows (manual ones only with --include-manual)
    #[arg(long, requires = "orphans")]
    pub fix: bool,
    /// With --orphans: how old an object no row points to, or an unfinished upload, must be before
    /// --fix deletes it (a younger one may be a backup in flight)
    #[arg(long, default_value_t = 24, value_name = "HOURS", requires = "orphans")]
    pub grace_hours: u32,
    /// Drop `<tenant>__pre_restore_<time>` schemas older than this many days
    #[arg(long, value_name = "N")]
    pub pre_restore_days: Option<String>,
    /// Seconds to wait for a tenant another process is backing up or restoring
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this tenant (default: all)
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: Option<String>,
    /// Also check that each backup's object exists in the bucket
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Tenant schema
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// daily, weekly, disabled, or `at <RFC 3339 time>`
    #[arg(required = true, num_args = 1..=2, value_name = "SCHEDULE")]
    pub schedule: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub when: WhenArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "latest", "file"])))]
pub struct DownloadArgs {
    /// Tenant schema
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id
    #[arg(long)]
    pub id: Option<i64>,
    /// The newest backup
    #[arg(long)]
    pub latest: bool,
    /// Object key in the bucket
    #[arg(long, value_name = "KEY")]
    pub file: Option<String>,
    /// Output file (`-` for stdout) [default: the object's name, in the current directory]
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write the dump decompressed
    #[arg(long)]
    pub decompress: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Tenant schema
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id
    #[arg(long, conflicts_with = "latest")]
    pub id: Option<i64>,
    /// The newest backup (the default)
    #[arg(long)]
    pub latest: bool,
    /// Seconds to wait for the tenant's lock
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lock_timeout: u64,
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

/// `500000`, `64K`, `100M`, `2G` (binary multiples).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (num, mult) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?}: use K, M, G or T")),
            };
            (&raw[..i], mult)
        }
        _ => (raw, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a size: use e.g. 500M or 2G"))?;
    if n == 0 {
        return Err("the size must be positive".into());
    }
    n.checked_mul(mult).ok_or_else(|| "size too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
    }
}
