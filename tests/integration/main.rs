//! Every test that touches PostgreSQL, storage or the binary: one test binary, one cluster.

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod backup;
mod cleanup;
mod download;
mod encryption;
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
mod restore_guard;
mod restore_hostile;
mod restore_json;
mod restore_leaks;
mod restore_truth;
mod scheduled;
mod secrets;
mod stops;
mod storage;
mod storage_supabase;
mod storage_truth;
