//! tenant-backup: back up a multi-tenant (django-tenants) PostgreSQL database one tenant schema at a
//! time into a bucket, keeping each backup's history as a `BackupRecord` row in the tenant's schema.
//!
//! The core (`backup`, `spool`, `records`, `storage`) knows nothing of clap or terminals; `cli`,
//! `cmd`, `output` and `progress` are the command-line face.

pub mod backup;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod compress;
pub mod context;
pub mod db;
pub mod devcluster;
pub mod dumpscan;
pub mod error;
pub mod ident;
pub mod key;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod native;
pub mod output;
pub mod pgdump;
pub mod progress;
pub mod records;
pub mod restore;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod secret;
pub mod spool;
pub mod storage;
pub mod tls;
