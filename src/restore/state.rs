//! What is there before a restore: read (again) once the tenant's lock is held, so that the
//! decisions of the script hold when it runs.

use anyhow::{Context as _, Result};
use chrono::{DateTime, Duration, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::script::{BucketRow, Facts, Target};
use super::source::Source;
use crate::backup::manifest::Manifest;
use crate::pg::catalog::{schema_state, Catalog};
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

/// Every backup of `schema` the bucket holds a manifest for, newest first.
pub async fn bucket_backups(storage: &dyn Storage, schema: &str) -> Result<Vec<Manifest>> {
    let objects = storage
        .list(&format!("{schema}/"))
        .await
        .with_context(|| format!("listing {schema}/ in {}", storage.describe()))?;
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.key.ends_with(".manifest.json")) {
        let object = o.key.trim_end_matches(".manifest.json");
        let Ok(bytes) = storage.get_bytes(&o.key).await else {
            continue;
        };
        match Manifest::from_bytes(&bytes) {
            // Only what is under its own name, about this tenant, with its object there.
            Ok(m) if m.tenant == schema && m.key == object && objects.iter().any(|x| x.key == object) => out.push(m),
            Ok(_) => {}
            Err(e) => tracing::warn!("{}: not a manifest ({e}); skipped", o.key),
        }
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.key.cmp(&a.key)));
    Ok(out)
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
        if !facts.records_exist {
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
