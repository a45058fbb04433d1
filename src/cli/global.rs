//! The flags every command takes: database, storage, output, keys, alerts.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::values::*;
use crate::app::alerts::{Alerts, NotifyFormat, NotifyOn};

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
    /// Where backups go: a directory that exists, file:///path, s3://bucket/prefix or
    /// supabase://bucket/prefix. backup, run-scheduled and cleanup need it (or SUPABASE_URL, which
    /// means supabase://$SUPABASE_BUCKET_NAME); the others read ./backups without it
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

impl OutputArgs {
    /// How results and progress are shown.
    pub fn output(&self) -> crate::app::output::Output {
        crate::app::output::Output {
            json: self.json,
            progress: crate::app::progress::ProgressMode::for_stderr(self.no_progress || self.quiet > 0),
        }
    }
}
