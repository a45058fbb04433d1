//! `list`, `status`, `schedule` and `cleanup`: the tenants' history, schedules and retention.

use clap::Args;

use super::dump::WhenArgs;
use super::values::*;

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
