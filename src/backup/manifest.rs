//! The manifest stored beside every object: what it is, how to check it, what it holds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::compress::Compression;
use super::format::DumpFormat;
use crate::pg::catalog::BackupKind;

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub manifest_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub tenant: String,
    pub kind: BackupKind,
    /// The one source of truth for how the stored object is read back.
    pub format: DumpFormat,
    pub compression: Compression,
    pub key: String,
    /// Bytes of the stored object.
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
    /// Bytes the dumper produced, before compression.
    pub uncompressed_size: u64,
    pub pg_dump_version: Option<String>,
    pub server_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Rows per table (unqualified name), when the format lets us count them while streaming.
    pub row_counts: Option<BTreeMap<String, u64>>,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        v.push(b'\n');
        v
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
