//! Every clap type lives in this folder (the only place that knows clap): `Cli` and `Command` here,
//! the flags of each group of commands beside them. Flags win over environment variables, which win
//! over `.env`.

use clap::{Parser, Subcommand};

mod dump;
mod global;
mod restore;
mod tenants;
mod values;

pub use dump::*;
pub use global::*;
pub use restore::*;
pub use tenants::*;
pub use values::*;

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
    /// Do not read .env from the working directory (a cron job started in a project folder would
    /// pick up its development settings) [default: read it; the environment wins over it]
    #[arg(
        long,
        env = "BACKUP_NO_DOTENV",
        global = true,
        value_parser = clap::builder::FalseyValueParser::new(),
        help_heading = "Configuration (every command)"
    )]
    pub no_dotenv: bool,
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

/// A command's help: what it does, its usage and examples, then its own options, then the ones
/// every command takes (clap would put the examples last, after a hundred lines of those).
const HELP: &str = "\
{about-with-newline}
{usage-heading} {usage}{after-help}

{all-args}";

/// The storage credentials, for the help of every command that reads or writes the bucket.
macro_rules! creds {
    () => {
        "

Storage credentials (environment):
  s3://        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; AWS_ENDPOINT_URL for MinIO, R2
  supabase://  SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or SUPABASE_KEY): the service_role key"
    };
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up one or more tenants now
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup backup --tenant bienestar
  tenant-backup backup --tenant bienestar --tenant mindcare --created-by ana@clinic.example
  tenant-backup backup --all --concurrency 4
  tenant-backup backup --tenant bienestar --format custom      # for pg_restore -j
  tenant-backup backup --tenant bienestar --format json        # no pg_dump needed", creds!()))]
    Backup(BackupArgs),
    /// One cron tick: back up every tenant that is due
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup run-scheduled                                  # cron: * * * * *
  tenant-backup run-scheduled --dry-run                        # who is due, and why
  tenant-backup run-scheduled --daily-at 03:00 --timezone Europe/Madrid", creds!()))]
    RunScheduled(RunScheduledArgs),
    /// Restore a tenant from a backup, atomically
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup list --tenant bienestar                        # pick an id
  tenant-backup restore --tenant bienestar --id 42 --dry-run   # download, check, show the plan
  tenant-backup restore --tenant bienestar --id 42             # asks you to type the name
  tenant-backup restore --tenant bienestar --latest --yes      # in a script
  tenant-backup restore --tenant bienestar --id 42 --into bienestar_check --yes", creds!()))]
    Restore(RestoreArgs),
    /// Delete old backups (object, manifest and row)
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup cleanup --days 30 --dry-run                    # what would go
  tenant-backup cleanup --days 30                              # automatic backups only; newest kept
  tenant-backup cleanup --orphans                              # report objects and rows that lost each other
  tenant-backup cleanup --orphans --fix
  tenant-backup cleanup --pre-restore-days 7                   # drop old <tenant>__pre_restore_* schemas", creds!()))]
    Cleanup(CleanupArgs),
    /// Show the backup history
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup list
  tenant-backup list --tenant bienestar --check                # is each object still in the bucket?
  tenant-backup list --json", creds!()))]
    List(ListArgs),
    /// Set a tenant's backup schedule
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup schedule --tenant bienestar daily
  tenant-backup schedule --tenant bienestar weekly             # Sundays
  tenant-backup schedule --tenant bienestar disabled
  tenant-backup schedule --tenant bienestar at 2026-12-24T03:00:00Z
  tenant-backup schedule --tenant bienestar at 2026-12-24T03:00:00+01:00"))]
    Schedule(ScheduleArgs),
    /// Per tenant: schedule, last backup, next due, overdue
    #[command(help_template = HELP, after_help = concat!("\
Exits 1 when a tenant is overdue, so a monitor can run it.

Examples:
  tenant-backup status
  tenant-backup status --timezone Europe/Madrid                # times in local time
  tenant-backup status --json"))]
    Status(StatusArgs),
    /// Fetch one backup to a file or stdout
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup download --tenant bienestar --latest
  tenant-backup download --tenant bienestar --id 42 -o bienestar.sql.zst
  tenant-backup download --tenant bienestar --id 42 --decompress -o - | less", creds!()))]
    Download(DownloadArgs),
    /// Check a backup: checksum, then a restore inside a transaction that is rolled back
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup verify --tenant bienestar                      # the newest backup
  tenant-backup verify --tenant bienestar --id 42", creds!()))]
    Verify(VerifyArgs),
    /// Encryption keys: make the master key, forget a tenant's key, rotate the master
    #[command(
        subcommand,
        help_template = HELP,
        after_help = "\
Examples:
  tenant-backup keys init                      # prints BACKUP_AGE_IDENTITY, BACKUP_AGE_RECIPIENT, BACKUP_SIGNING_KEY
  tenant-backup keys status                    # which tenants have a key
  tenant-backup keys forget --tenant bienestar # erases every copy of bienestar's encrypted backups
  tenant-backup keys rotate --save-identity master.age   # re-wraps every tenant key to a new master (needs the old identity)"
    )]
    Keys(KeysCommand),
    /// Check the setup: database, pooler, pg_dump, storage (one line each)
    #[command(help_template = HELP, after_help = concat!("\
Examples:
  tenant-backup doctor
  tenant-backup doctor --json", creds!()))]
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a master key pair and a signing key; prints the three lines to store as secrets
    Init {
        /// Also write the master identity to FILE (a new file, mode 0600, synced) before printing
        #[arg(long, value_name = "FILE")]
        save_identity: Option<std::path::PathBuf>,
    },
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
        /// The new master recipient (age1…), whose identity you already hold
        #[arg(long, value_name = "AGE1…", conflicts_with = "save_identity")]
        to: Option<String>,
        /// Make a new master key pair and write its identity to FILE (a new file, mode 0600,
        /// synced) before any key is re-wrapped; if FILE exists (a rotation that was stopped),
        /// finish rotating to the identity it holds
        #[arg(long, value_name = "FILE", required_unless_present = "to")]
        save_identity: Option<std::path::PathBuf>,
    },
}

impl Cli {
    /// What the command runs with, as the core's rooms read it.
    pub fn settings(&self) -> crate::app::context::Settings {
        crate::app::context::Settings {
            database_url: self.db.database_url.clone(),
            dump_url: self.db.dump_url.clone(),
            tenants_table: self.db.tenants_table.clone(),
            records_table: self.db.records_table.clone(),
            users_table: self.db.users_table.clone(),
            pg_dump: self.db.pg_dump.clone(),
            storage: self.storage.storage.clone(),
            storage_retries: self.storage.storage_retries,
            storage_connect_timeout: self.storage.storage_connect_timeout,
            storage_idle_timeout: self.storage.storage_idle_timeout,
            output: self.output.output(),
            age_recipient: self.keys.age_recipient.clone(),
            identity: self.keys.identity.clone(),
            keys_table: self.keys.keys_table.clone(),
            stores: match &self.command {
                Command::Backup(_) => Some("backup"),
                Command::RunScheduled(_) => Some("run-scheduled"),
                Command::Cleanup(_) => Some("cleanup"),
                _ => None,
            },
            reports_setup: matches!(self.command, Command::Doctor),
        }
    }
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
