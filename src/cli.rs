//! Every clap type, in one place. Flags win over environment variables, which win over `.env`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::alerts::{Alerts, NotifyFormat, NotifyOn};
use crate::backup::env::{CompressionChoice, DumpRequest, FormatChoice};
use crate::pg::catalog::BackupKind;

/// Every number a flag takes has a range, checked here (exit 2, naming the range), so nothing
/// downstream ever sees a value it could overflow on: a whole number from `lo` to `hi`.
fn in_range<T: TryFrom<i128>>(
    lo: i128,
    hi: i128,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |raw| {
        raw.trim()
            .parse::<i128>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{raw:?} is not a whole number from {lo} to {hi}"))
    }
}

/// Seconds of --lock-timeout: up to a day.
fn lock_timeout() -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    in_range(0, 86_400)
}

/// Days of --days and --pre-restore-days: up to a hundred years.
fn days() -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    in_range(1, 36_500)
}

/// BackupRecord ids are positive.
fn record_id() -> impl Fn(&str) -> Result<i64, String> + Clone + Send + Sync + 'static {
    in_range(1, i64::MAX as i128)
}

/// Tenants at once.
fn concurrency() -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    in_range(1, 64)
}

#[derive(Debug, Parser)]
#[command(
    name = "tenant-backup",
    version,
    about = "Back up a django-tenants PostgreSQL database one tenant schema at a time",
    long_about = "Back up a django-tenants PostgreSQL database one tenant schema at a time, into a local \
                  directory, S3 or Supabase Storage, keeping each backup's history as a BackupRecord row \
                  in the tenant's own schema.\n\nExit codes: 0 all done, 1 some work failed, 2 bad usage or \
                  configuration (nothing was touched); 143, 130, 129 stopped by SIGTERM, SIGINT, SIGHUP \
                  (what was in progress rolled back and cleaned up; a second signal exits at once).",
    after_long_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Everything read from the environment besides the flags' own variables, for `--help`.
const ENVIRONMENT: &str = "\
Environment:
  Every flag above that names [env: X] can be set by that variable instead; a flag wins over the
  environment, which wins over a .env file in the working directory (for local development).
  Storage credentials:
    s3://        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (default us-east-1),
                 AWS_ENDPOINT_URL (MinIO, R2, moto), AWS_ALLOW_HTTP=true for plain-HTTP endpoints
    supabase://  SUPABASE_URL, SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY (the service_role key),
                 SUPABASE_BUCKET_NAME (default backups; also picks supabase:// as the default storage)
  TMPDIR         where dumps are spooled before upload and downloads land before they are checked
  RUST_LOG       log filter, overriding -v/-q (e.g. RUST_LOG=tenant_backup=debug)
  PG_DUMP        the pg_dump to use (same as --pg-dump)

Run `tenant-backup <command> --help` for a command's options and examples.";

#[derive(Debug, Args)]
#[command(next_help_heading = "Database (every command)")]
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
#[command(next_help_heading = "Storage (every command)")]
pub struct StorageArgs {
    /// Where backups go: a directory, file:///path, s3://bucket/prefix or supabase://bucket/prefix
    /// [default: supabase://$SUPABASE_BUCKET_NAME when SUPABASE_URL is set, else ./backups]
    #[arg(long, env = "BACKUP_STORAGE", global = true, hide_env_values = true)]
    pub storage: Option<String>,

    /// Retries of a storage request that failed with 429, 5xx or a connection error
    #[arg(
        long,
        env = "BACKUP_STORAGE_RETRIES",
        default_value_t = 5,
        global = true,
        value_parser = in_range::<u32>(0, 100)
    )]
    pub storage_retries: u32,

    /// Seconds a storage connection (TCP and TLS) may take before the attempt is given up and retried
    #[arg(
        long,
        env = "BACKUP_STORAGE_CONNECT_TIMEOUT",
        default_value_t = 10,
        global = true,
        value_name = "SECONDS",
        value_parser = in_range::<u64>(1, 300)
    )]
    pub storage_connect_timeout: u64,

    /// Seconds a storage request may go without a byte sent or received (a server that accepts and
    /// never answers) before the attempt is given up and retried; a slow transfer that keeps moving
    /// is never cut
    #[arg(
        long,
        env = "BACKUP_STORAGE_IDLE_TIMEOUT",
        default_value_t = 60,
        global = true,
        value_name = "SECONDS",
        value_parser = in_range::<u64>(1, 3600)
    )]
    pub storage_idle_timeout: u64,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output (every command)")]
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

/// Encryption and signing (see README, Encryption). The secrets are read from the environment only,
/// never from a command line: BACKUP_AGE_IDENTITY (the master identity, where backups are read) and
/// BACKUP_SIGNING_KEY (manifest signatures).
#[derive(Debug, Args)]
#[command(next_help_heading = "Encryption (every command)")]
pub struct KeyArgs {
    /// Encrypt every backup, each to its tenant's own key wrapped to this master recipient (age1…,
    /// from `keys init`); the cron job needs only this
    #[arg(long, env = "BACKUP_AGE_RECIPIENT", global = true, value_name = "AGE1…")]
    pub age_recipient: Option<String>,

    /// A file holding the master identity (AGE-SECRET-KEY-1…), instead of BACKUP_AGE_IDENTITY;
    /// needed where backups are read (restore, verify, download)
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// The table of tenant keys (created on the first encrypted backup)
    #[arg(
        long,
        env = "BACKUP_KEYS_TABLE",
        default_value = "public.tenant_backup_keys",
        global = true
    )]
    pub keys_table: String,
}

/// Pings and notifications (see README, Alerts).
#[derive(Debug, Args)]
#[command(next_help_heading = "Alerts (backup, run-scheduled, cleanup, status)")]
pub struct AlertArgs {
    /// healthchecks.io-style URL: `<url>/start` when backup, run-scheduled or cleanup begins, `<url>`
    /// on success, `<url>/fail` with the last log lines on failure
    #[arg(
        long,
        env = "BACKUP_PING_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub ping_url: Option<String>,

    /// Webhook that gets a POST when a run had a failure (or `status` finds a tenant overdue)
    #[arg(
        long,
        env = "BACKUP_NOTIFY_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub notify_url: Option<String>,

    /// When to notify
    #[arg(long, env = "BACKUP_NOTIFY_ON", value_enum, default_value_t = NotifyOnArg::Failure, global = true)]
    pub notify_on: NotifyOnArg,

    /// Body of the notification: JSON, or a Slack or Discord webhook message
    #[arg(long, env = "BACKUP_NOTIFY_FORMAT", value_enum, default_value_t = NotifyFormatArg::Json, global = true)]
    pub notify_format: NotifyFormatArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NotifyOnArg {
    Failure,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NotifyFormatArg {
    Json,
    Slack,
    Discord,
}

impl AlertArgs {
    pub fn alerts(&self) -> Result<Alerts, crate::error::UsageError> {
        Alerts::new(
            self.ping_url.as_deref(),
            self.notify_url.as_deref(),
            match self.notify_on {
                NotifyOnArg::Failure => NotifyOn::Failure,
                NotifyOnArg::Always => NotifyOn::Always,
            },
            match self.notify_format {
                NotifyFormatArg::Json => NotifyFormat::Json,
                NotifyFormatArg::Slack => NotifyFormat::Slack,
                NotifyFormatArg::Discord => NotifyFormat::Discord,
            },
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up one or more tenants now
    #[command(after_help = "\
Examples:
  tenant-backup backup --tenant bienestar
  tenant-backup backup --tenant bienestar --tenant mindcare --created-by ana@clinic.example
  tenant-backup backup --all --concurrency 4
  tenant-backup backup --tenant bienestar --format custom      # for pg_restore -j
  tenant-backup backup --tenant bienestar --format json        # no pg_dump needed")]
    Backup(BackupArgs),
    /// One cron tick: back up every tenant that is due
    #[command(after_help = "\
Examples:
  tenant-backup run-scheduled                                  # cron: * * * * *
  tenant-backup run-scheduled --dry-run                        # who is due, and why
  tenant-backup run-scheduled --daily-at 03:00 --timezone Europe/Madrid")]
    RunScheduled(RunScheduledArgs),
    /// Restore a tenant from a backup, atomically
    #[command(after_help = "\
Examples:
  tenant-backup list --tenant bienestar                        # pick an id
  tenant-backup restore --tenant bienestar --id 42 --dry-run   # download, check, show the plan
  tenant-backup restore --tenant bienestar --id 42             # asks you to type the name
  tenant-backup restore --tenant bienestar --latest --yes      # in a script
  tenant-backup restore --tenant bienestar --id 42 --into bienestar_check --yes")]
    Restore(RestoreArgs),
    /// Delete old backups (object, manifest and row)
    #[command(after_help = "\
Examples:
  tenant-backup cleanup --days 30 --dry-run                    # what would go
  tenant-backup cleanup --days 30                              # automatic backups only; newest kept
  tenant-backup cleanup --orphans                              # report objects and rows that lost each other
  tenant-backup cleanup --orphans --fix
  tenant-backup cleanup --pre-restore-days 7                   # drop old <tenant>__pre_restore_* schemas")]
    Cleanup(CleanupArgs),
    /// Show the backup history
    #[command(after_help = "\
Examples:
  tenant-backup list
  tenant-backup list --tenant bienestar --check                # is each object still in the bucket?
  tenant-backup list --json")]
    List(ListArgs),
    /// Set a tenant's backup schedule
    #[command(after_help = "\
Examples:
  tenant-backup schedule --tenant bienestar daily
  tenant-backup schedule --tenant bienestar weekly             # Sundays
  tenant-backup schedule --tenant bienestar disabled
  tenant-backup schedule --tenant bienestar at 2026-12-24T03:00:00Z
  tenant-backup schedule --tenant bienestar at 2026-12-24T03:00:00+01:00")]
    Schedule(ScheduleArgs),
    /// Per tenant: schedule, last backup, next due, overdue
    #[command(after_help = "\
Exits 1 when a tenant is overdue, so a monitor can run it.

Examples:
  tenant-backup status
  tenant-backup status --timezone Europe/Madrid                # times in local time
  tenant-backup status --json")]
    Status(StatusArgs),
    /// Fetch one backup to a file or stdout
    #[command(after_help = "\
Examples:
  tenant-backup download --tenant bienestar --latest
  tenant-backup download --tenant bienestar --id 42 -o bienestar.sql.zst
  tenant-backup download --tenant bienestar --id 42 --decompress -o - | less")]
    Download(DownloadArgs),
    /// Check a backup: checksum, then a restore inside a transaction that is rolled back
    #[command(after_help = "\
Examples:
  tenant-backup verify --tenant bienestar                      # the newest backup
  tenant-backup verify --tenant bienestar --id 42")]
    Verify(VerifyArgs),
    /// Encryption keys: make the master key, forget a tenant's key, rotate the master
    #[command(
        subcommand,
        after_help = "\
Examples:
  tenant-backup keys init                      # prints BACKUP_AGE_IDENTITY, BACKUP_AGE_RECIPIENT, BACKUP_SIGNING_KEY
  tenant-backup keys status                    # which tenants have a key
  tenant-backup keys forget --tenant bienestar # erases every copy of bienestar's encrypted backups
  tenant-backup keys rotate                    # re-wraps every tenant key to a new master (needs the old identity)"
    )]
    Keys(KeysCommand),
    /// Check the setup: database, pooler, pg_dump, storage (one line each)
    #[command(after_help = "\
Examples:
  tenant-backup doctor
  tenant-backup doctor --json")]
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a master key pair and a signing key; prints the three lines to store as secrets
    Init,
    /// Which tenants have a key, and whether the configured identity can read them
    Status,
    /// Delete a tenant's key: every copy of its encrypted backups, anywhere, becomes unreadable
    Forget {
        /// Tenant schema
        #[arg(long, value_name = "SCHEMA")]
        tenant: String,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Re-wrap every tenant key to a new master recipient (needs the current master identity)
    Rotate {
        /// The new master recipient (age1…) [default: make a new master key pair and print it]
        #[arg(long, value_name = "AGE1…")]
        to: Option<String>,
    },
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "latest", "file"])))]
pub struct RestoreArgs {
    /// Read a backup whose manifest is not signed although BACKUP_SIGNING_KEY is set (the old
    /// application's backups, or ones made before signing was turned on)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Tenant schema to restore
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id (see `list`)
    #[arg(long, value_parser = record_id())]
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
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = lock_timeout())]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["days", "orphans", "pre_restore_days"])))]
pub struct CleanupArgs {
    /// Delete automatic backups older than this many days (object, manifest, then row)
    #[arg(long, value_name = "N", value_parser = days())]
    pub days: Option<u32>,
    /// Never delete the newest K backups of a tenant (counted among those --days may delete)
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = in_range::<u32>(0, 1_000_000))]
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
    #[arg(long, default_value_t = 24, value_name = "HOURS", requires = "orphans", value_parser = in_range::<u32>(0, 876_000))]
    pub grace_hours: u32,
    /// Drop `<tenant>__pre_restore_<time>` schemas older than this many days
    #[arg(long, value_name = "N", value_parser = days())]
    pub pre_restore_days: Option<u32>,
    /// Seconds to wait for a tenant another process is backing up or restoring
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = lock_timeout())]
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
    /// daily (every day, at midnight UTC or --daily-at), weekly (Sundays), disabled, or
    /// `at TIME` for one backup at an RFC 3339 time with its offset: `at 2026-12-24T03:00:00Z` or
    /// `at 2026-12-24T03:00:00+01:00`
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
    /// Read a backup whose manifest is not signed although BACKUP_SIGNING_KEY is set (the old
    /// application's backups, or ones made before signing was turned on)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Tenant schema
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id
    #[arg(long, value_parser = record_id())]
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
    /// Read a backup whose manifest is not signed although BACKUP_SIGNING_KEY is set (the old
    /// application's backups, or ones made before signing was turned on)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Tenant schema
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id
    #[arg(long, conflicts_with = "latest", value_parser = record_id())]
    pub id: Option<i64>,
    /// The newest backup (the default)
    #[arg(long)]
    pub latest: bool,
    /// Seconds to wait for the tenant's lock
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = lock_timeout())]
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

const SIZE_RANGE: &str = "1 byte to 16 EiB";

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
                _ => return Err(format!("unknown size suffix {c:?}: use K, M, G or T ({SIZE_RANGE})")),
            };
            (&raw[..i], mult)
        }
        _ => (raw, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a size: use e.g. 500M or 2G ({SIZE_RANGE})"))?;
    if n == 0 {
        return Err(format!("the size must be positive ({SIZE_RANGE})"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("{raw} is too large ({SIZE_RANGE})"))
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
    fn numbers_outside_their_range_are_refused_naming_it() {
        let secs = lock_timeout();
        assert_eq!(secs("86400"), Ok(86_400));
        for bad in [
            "86401",
            "-1",
            "18446744073709551615",
            "1e3",
            "",
            "99999999999999999999999999999999999999999",
        ] {
            assert_eq!(secs(bad), Err(format!("{bad:?} is not a whole number from 0 to 86400")));
        }
        assert_eq!(record_id()("9223372036854775807"), Ok(i64::MAX));
        assert!(record_id()("0").is_err() && days()("0").is_err() && days()("36501").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
    }
}
