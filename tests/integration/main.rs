//! Every test that touches PostgreSQL, storage or the binary: one test binary, one cluster.

// The tests and the stub read the wall clock to age rows and stamp objects; the rule that time
// comes from Clock (clippy.toml) is the tool's.
#![allow(clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod backup;
mod cleanup;
mod configuration;
mod deploy;
mod download;
mod encryption;
mod exit_codes;
mod failures;
mod fleet;
mod help;
mod isolation;
mod limits;
mod list;
mod local_links;
mod native;
mod overlap;
mod progress;
mod restore;
mod restore_bounds;
mod restore_dropped;
mod restore_dumpdata;
mod restore_guard;
mod restore_hostile;
mod restore_json;
mod restore_kill;
mod restore_leaks;
mod restore_loader;
mod restore_parallel;
mod restore_path;
mod restore_staging;
mod restore_truth;
mod restore_writes;
mod scheduled;
mod secrets;
mod stops;
mod storage;
mod storage_supabase;
mod storage_truth;
mod tls;
