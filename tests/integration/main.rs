//! Every test that touches PostgreSQL, storage or the binary: one test binary, one cluster.

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod backup;
mod cleanup;
mod encryption;
mod failures;
mod help;
mod list;
mod native;
mod restore;
mod scheduled;
mod secrets;
mod storage;
mod storage_supabase;
mod storage_truth;
