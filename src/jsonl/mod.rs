//! The native `json` format: no pg_dump at all, only the driver. One consistent snapshot
//! (`REPEATABLE READ READ ONLY`) of the schema's structure and of every table, each streamed with
//! `COPY table (columns) TO STDOUT` (a partitioned table through `COPY (SELECT …)`) and written as
//! JSON Lines:
//!
//! ```text
//! {"format":"tenant-backup-jsonl","format_version":3,…,"tables":[{"name":…,"columns":[…]}…]}   header
//! ["structure",{"pre_data":[{"object":…,"sql":…}…],"post_data":[…]}]                        how to create it (v3)
//! ["table",{"name":"appointments_patient","columns":[{"name":"id","type":"bigint"},…]}]       a table starts
//! {"id":1,"first_name":"Ana","birth_date":"1980-02-29",…}                                     its rows
//! ["sequences",[{"name":…,"last_value":…,"is_called":…}]]
//! ["end",{"tables":N,"rows":M}]
//! ```
//!
//! Rows are objects and markers are arrays, so no column name can be mistaken for a marker. How
//! values are spelled is in [`codec`]; what the structure holds in [`structure`], read from the
//! catalog through indexes only ([`objects`]), so a dump costs the same in a database of ten
//! tenants as in one of ten thousand. Restore loads into the existing tables (the application's
//! migrations define them, as with `loaddata`) in one transaction, with COPY, rebuilding the
//! schema's indexes and foreign keys after the load ([`rebuild`]); when the schema does not exist,
//! a version 3 dump creates it first (tables without keys and indexes), loads it, then creates
//! keys, indexes, foreign keys and triggers, all in the same transaction. Version 2 dumps (data
//! only) still load into existing tables.

mod check;
mod codec;
mod dump;
mod load;
mod objects;
mod parallel;
mod rebuild;
mod selfcheck;
mod structure;
mod tables;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use dump::{dump, dump_skipping_rows, JsonLinesReader, Piece, ProducerError, Skip};
pub use load::{loads_in_place, peek_header, restore, restore_on, JsonRestore, Loaded, MAX_LINE};
pub use objects::{prepare_fingerprint, Prefetched, SnapshotLease, PREFETCH_CHUNK};
pub use selfcheck::{PassedShapes, SelfCheck};
pub use structure::{Ddl, Structure};
pub use tables::tables;

/// The structure of many schemas read at once, in a transaction of its own on `client`, for
/// [`dump`] to use when the dump's snapshot shows the same catalog rows (see
/// [`objects::SchemaObjects::read_many`]).
pub async fn prefetch(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, Prefetched>> {
    objects::SchemaObjects::read_many(client, schemas).await
}

/// [`prefetch`] in a snapshot exported first, whose transaction is left open on `client` for the
/// caller to end once the dumps have imported it (see
/// [`objects::SchemaObjects::read_many_exported`]): the snapshot's id, and the structures.
pub async fn prefetch_exported(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> anyhow::Result<(String, std::collections::BTreeMap<String, Prefetched>)> {
    objects::SchemaObjects::read_many_exported(client, schemas).await
}

pub const FORMAT: &str = "tenant-backup-jsonl";
/// 3: a structure section (see [`structure`]); 2: values in PostgreSQL's text form (see
/// [`codec`]), still read; 1 (row_to_json) is no longer read.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this one restores.
pub const OLDEST_READABLE_VERSION: u32 = 2;
/// How the server prints and reads values in both directions: pg_dump's settings, and UTC.
pub(crate) const VALUE_SETTINGS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; SET LOCAL TimeZone = 'UTC'";
/// Bytes handed on at a time, each way.
pub(crate) const BATCH: usize = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub format_version: u32,
    pub tool_version: String,
    pub schema: String,
    pub server_version: String,
    pub created_at: DateTime<Utc>,
    pub tables: Vec<TableSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SequenceValue {
    pub name: String,
    pub last_value: Option<i64>,
    pub is_called: bool,
}
