//! `restore`, `verify` and `download`: which backup, and where it goes.

use std::path::PathBuf;

use clap::Args;

use super::values::*;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "latest", "file", "path"])))]
pub struct RestoreArgs {
    /// Read a backup whose manifest is not signed although BACKUP_SIGNING_KEY is set (the old
    /// application's backups, or ones made before signing was turned on)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Read an unencrypted backup of a tenant that has an encryption key (one taken before
    /// encryption was turned on) when no valid signature vouches for it
    #[arg(long)]
    pub allow_unencrypted: bool,
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
    /// A backup file on this machine, in any format the tool reads (its own objects, with their
    /// manifest beside them as FILE.manifest.json when there is one; the application's SQL and
    /// dumpdata backups), checked like an object from the bucket
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// Accept a backup made of another tenant (its history is searched for --id/--latest)
    #[arg(long, value_name = "SCHEMA")]
    pub from_tenant: Option<String>,
    /// Restore into a new database that has no tenant table (after losing the database): the
    /// tenant and its backup come from the bucket alone. Refused where the tenant table exists
    #[arg(long, conflicts_with = "id")]
    pub new_database: bool,
    /// Restore as a new schema, leaving the tenant untouched
    #[arg(long, value_name = "SCHEMA", conflicts_with = "drop_previous")]
    pub into: Option<String>,
    /// Drop the previous schema once the restore is committed, unless the application wrote to it meanwhile
    #[arg(long)]
    pub drop_previous: bool,
    /// The application is stopped for this restore: refuse to swap the restored schema in (nothing
    /// changed) if it wrote anything to the tenant while the restore ran, rather than keep those
    /// writes in the previous schema and report them
    #[arg(long, conflicts_with = "into")]
    pub maintenance: bool,
    /// Connections that build the restored schema's keys, indexes and foreign keys at once, once
    /// its rows are loaded (as pg_restore -j)
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Download, verify the checksum and print the plan, touching nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Where a model of an application dumpdata backup goes, when its table is not Django's
    /// `<app_label>_<model>` (a custom db_table): app_label.model=table, or
    /// app_label.model.field=table for a many-to-many field's table (repeatable)
    #[arg(long, value_name = "APP.MODEL=TABLE", value_parser = crate::dumpdata::parse_override)]
    pub model_table: Vec<(String, String)>,
    /// Seconds to wait for locks (the tenant's backup lock, and the application's locks on the
    /// schema) before giving up cleanly
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = lock_timeout())]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "latest", "file"])))]
pub struct DownloadArgs {
    /// Read a backup whose manifest is not signed although BACKUP_SIGNING_KEY is set (the old
    /// application's backups, or ones made before signing was turned on)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Read an unencrypted backup of a tenant that has an encryption key (one taken before
    /// encryption was turned on) when no valid signature vouches for it
    #[arg(long)]
    pub allow_unencrypted: bool,
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
    /// Read an unencrypted backup of a tenant that has an encryption key (one taken before
    /// encryption was turned on) when no valid signature vouches for it
    #[arg(long)]
    pub allow_unencrypted: bool,
    /// Tenant schema
    #[arg(long, value_name = "SCHEMA")]
    pub tenant: String,
    /// BackupRecord id
    #[arg(long, conflicts_with = "latest", value_parser = record_id())]
    pub id: Option<i64>,
    /// The newest backup (the default)
    #[arg(long)]
    pub latest: bool,
    /// A backup file on this machine, in any format the tool reads (its own objects, with their
    /// manifest beside them as FILE.manifest.json when there is one; the application's SQL and
    /// dumpdata backups), checked like an object from the bucket
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "latest"])]
    pub path: Option<PathBuf>,
    /// Where a model of an application dumpdata backup goes, when its table is not Django's
    /// `<app_label>_<model>` (a custom db_table): app_label.model=table, or
    /// app_label.model.field=table for a many-to-many field's table (repeatable)
    #[arg(long, value_name = "APP.MODEL=TABLE", value_parser = crate::dumpdata::parse_override)]
    pub model_table: Vec<(String, String)>,
    /// Seconds to wait for the tenant's lock
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = lock_timeout())]
    pub lock_timeout: u64,
}

/// `--allow-unsigned` and `--allow-unencrypted`, for the reading commands.
macro_rules! reader_allowances {
    ($($args:ty),*) => {$(
        impl $args {
            pub fn allow(&self) -> crate::restore::access::Allow {
                crate::restore::access::Allow {
                    unsigned: self.allow_unsigned,
                    unencrypted: self.allow_unencrypted,
                }
            }
        }
    )*};
}
reader_allowances!(RestoreArgs, VerifyArgs, DownloadArgs);
