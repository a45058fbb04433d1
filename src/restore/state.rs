//! What is there before a restore: read (again) once the tenant's lock is held, so that the
//! decisions of the script hold when it runs.

use anyhow::{Context as _, Result};
use chrono::{DateTime, Duration, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::source::{bucket_backups, Source};
use crate::pg::catalog::{schema_state, BackupKind, Catalog};
use crate::policy::retention::pre_restore_name;
use crate::storage::Storage;

pub async fn schema_exists(client: &Client, schema: &str) -> Result<bool> {
    let rows = client
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[(&schema, Type::TEXT)],
        )
        .await
        .with_context(|| format!("looking for schema {schema}"))?;
    Ok(rows[0].get(0))
}

/// Where the restored schema goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// Replace the tenant's schema; the old one is renamed aside (and dropped when asked).
    Replace { schema: String, drop_previous: bool },
    /// A new schema, leaving everything else untouched.
    Into { schema: String },
    /// Restore, count every table's rows, roll back: `verify`.
    Scratch,
}

impl Target {
    /// The schema that exists after the restore (none for verify).
    pub fn schema(&self) -> Option<&str> {
        match self {
            Target::Replace { schema, .. } | Target::Into { schema } => Some(schema),
            Target::Scratch => None,
        }
    }
}

/// What is there, read under the tenant's lock just before the restore starts.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub target_exists: bool,
    /// The target schema holds its history table.
    pub records_exist: bool,
    /// The schema the dump creates exists now (it is held aside for the duration).
    pub source_exists: bool,
    /// The free `…__pre_restore_<time>` name the live schema gets.
    pub previous: Option<String>,
    /// Backups of the target the bucket's manifests know of: the history of a tenant whose
    /// history table is gone.
    pub bucket_rows: Vec<BucketRow>,
    /// The target's history as it is now (a JSON array of its rows), read by the tool so that
    /// the loader, which may not read the live schema, carries it over into the staging one.
    pub history: Option<History>,
}

/// The live history, read under the tenant's lock: its rows, and how many there were and the
/// largest id, checked again at the swap (nothing may have been added meanwhile).
#[derive(Clone, Debug)]
pub struct History {
    pub rows_json: String,
    pub count: i64,
    pub max_id: i64,
}

/// A history row rebuilt from a manifest.
#[derive(Clone, Debug)]
pub struct BucketRow {
    pub key: String,
    pub size: u64,
    pub kind: BackupKind,
    pub created_at: DateTime<Utc>,
}

/// The first `<schema>__pre_restore_<time>` name, from `now` on, that no schema has: two restores
/// in the same second get different names.
pub async fn free_previous_name(client: &Client, schema: &str, now: DateTime<Utc>) -> Result<String> {
    for s in 0..3600 {
        let name = pre_restore_name(schema, now + Duration::seconds(s));
        if !schema_exists(client, &name).await? {
            return Ok(name);
        }
    }
    anyhow::bail!("an hour of {schema}__pre_restore_ names is taken: drop old ones (`tenant-backup cleanup --pre-restore-days N`)")
}

/// What the script needs to know, read under the tenant's lock.
pub async fn read_facts(
    client: &Client,
    catalog: &Catalog,
    storage: &dyn Storage,
    source: &Source,
    target: &Target,
    now: DateTime<Utc>,
) -> Result<Facts> {
    let mut facts = Facts::default();
    if let Some(t) = target.schema() {
        (facts.target_exists, facts.records_exist) = schema_state(client, catalog, t).await?;
    }
    facts.source_exists = schema_exists(client, &source.source_schema).await?;
    if let Target::Replace { schema, .. } = target {
        if facts.target_exists {
            facts.previous = Some(free_previous_name(client, schema, now).await?);
        }
        if facts.records_exist {
            let row = client
                .query_one(
                    &format!(
                        "SELECT coalesce(pg_catalog.json_agg(r)::text, '[]'), count(*), coalesce(max(r.id), 0)::bigint FROM {} r",
                        catalog.records_in(schema)
                    ),
                    &[],
                )
                .await
                .with_context(|| format!("reading the history of {schema}"))?;
            facts.history = Some(History {
                rows_json: row.get(0),
                count: row.get(1),
                max_id: row.get(2),
            });
        } else {
            facts.bucket_rows = bucket_backups(storage, schema)
                .await?
                .into_iter()
                .map(|m| BucketRow {
                    key: m.key,
                    size: m.size,
                    kind: m.kind,
                    created_at: m.started_at,
                })
                .collect();
        }
    }
    Ok(facts)
}
