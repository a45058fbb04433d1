//! tenant-backup: back up a multi-tenant (django-tenants) PostgreSQL database one tenant schema at a
//! time into a bucket, keeping each backup's history as a `BackupRecord` row in the tenant's schema.
//!
//! Data walks one way: `cli` → `cmd` → the core (`backup`, `restore`, `jsonl`, `policy`) → `pg` and
//! `storage`. `app` is the command-line face the commands share (context, output, progress, logs);
//! the core knows nothing of clap or terminals. See ARCHITECTURE.md.

pub mod app;
pub mod backup;
pub mod cleanup;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod crypto;
pub mod dumpdata;
pub mod error;
pub mod jsonl;
pub mod pg;
pub mod policy;
pub mod progress;
pub mod restore;
pub mod retry;
pub mod secret;
pub mod stop;
pub mod storage;
