//! Which tables a schema holds, in the order a load needs them.

use std::collections::BTreeMap;

use anyhow::Result;
use tokio_postgres::Client;

use super::objects::{SchemaObjects, Scope};
use super::{Column, TableSpec};

/// The schema's base tables in foreign-key order (referenced first), with their non-generated
/// columns. A partitioned table's rows are read and written through the partitioned table itself,
/// so its partitions are not listed. Read through indexes only (see [`super::objects`]); an empty
/// list when the schema does not exist.
pub async fn tables(client: &Client, schema: &str) -> Result<Vec<TableSpec>> {
    Ok(SchemaObjects::read(client, schema, Scope::Tables)
        .await?
        .map(|o| tables_of(&o))
        .unwrap_or_default())
}

/// [`tables`] from objects already read.
pub fn tables_of(objects: &SchemaObjects) -> Vec<TableSpec> {
    let mut specs: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    for r in objects.relations.iter().filter(|r| r.holds_data()) {
        names.insert(r.oid, r.name.clone());
        specs.insert(
            r.name.clone(),
            objects
                .columns_of(r.oid)
                .filter(|a| a.generated.is_empty())
                .map(|a| Column {
                    name: a.name.clone(),
                    type_name: a.type_name.clone(),
                })
                .collect(),
        );
    }
    let mut needs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in objects
        .constraints
        .iter()
        .filter(|k| k.kind == "f" && k.rel != k.references)
    {
        if let (Some(c), Some(r)) = (names.get(&k.rel), names.get(&k.references)) {
            needs.entry(c.clone()).or_default().push(r.clone());
        }
    }
    // Kahn's order; tables in a cycle (rare, and their keys are deferrable in Django) go last.
    let mut done: Vec<String> = Vec::new();
    let mut left: Vec<String> = specs.keys().cloned().collect();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|t| {
                needs
                    .get(*t)
                    .is_none_or(|n| n.iter().all(|d| done.contains(d) || !specs.contains_key(d)))
            })
            .cloned()
            .collect();
        let next = if ready.is_empty() { vec![left[0].clone()] } else { ready };
        left.retain(|t| !next.contains(t));
        done.extend(next);
    }
    done.into_iter()
        .map(|name| TableSpec {
            columns: specs.remove(&name).unwrap_or_default(),
            name,
        })
        .collect()
}
