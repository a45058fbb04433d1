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
    /// Set when the stored bytes are age-encrypted (after compression) to the tenant's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// `hmac-sha256:<hex>` over [`Manifest::canonical`], when a signing key is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Encryption {
    /// `age-x25519`.
    pub scheme: String,
    /// The tenant's recipient the object was encrypted to.
    pub recipient: String,
}

/// What a signature covers, in a fixed order: everything that says what the object is and how
/// to check it.
#[derive(Serialize)]
struct Canonical<'a> {
    manifest_version: u32,
    tenant: &'a str,
    key: &'a str,
    kind: BackupKind,
    format: DumpFormat,
    compression: Compression,
    encryption: &'a Option<Encryption>,
    size: u64,
    sha256: &'a str,
    uncompressed_size: u64,
    row_counts: &'a Option<BTreeMap<String, u64>>,
    started_at: &'a DateTime<Utc>,
    finished_at: &'a DateTime<Utc>,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        v.push(b'\n');
        v
    }

    /// The bytes a signature is computed over.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&Canonical {
            manifest_version: self.manifest_version,
            tenant: &self.tenant,
            key: &self.key,
            kind: self.kind,
            format: self.format,
            compression: self.compression,
            encryption: &self.encryption,
            size: self.size,
            sha256: &self.sha256,
            uncompressed_size: self.uncompressed_size,
            row_counts: &self.row_counts,
            started_at: &self.started_at,
            finished_at: &self.finished_at,
        })
        .expect("a manifest always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
