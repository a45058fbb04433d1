//! Every test that touches PostgreSQL, storage or the binary: one test binary, one cluster.

#[path = "../support/mod.rs"]
mod support;

mod backup;
mod cleanup;
mod failures;
mod fleet;
mod list;
mod native;
mod restore;
mod scheduled;
mod secrets;
mod storage;
