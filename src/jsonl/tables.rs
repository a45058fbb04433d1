//! Which tables a schema holds, in the order a load needs them.

use std::collections::BTreeMap;

use anyhow::Result;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{Column, TableSpec};

/// The schema's base tables in foreign-key order (referenced first), with their non-generated
/// columns. A partitioned table's rows are read and written through the partitioned table itself,
/// so its partitions are not listed.
pub async fn tables(client: &Client, schema: &str) -> Result<Vec<TableSpec>> {
    let rows = client
        .query_typed(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname, a.attnum",
            &[(&schema, Type::TEXT)],
        )
        .await?;
    let mut specs: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for r in rows {
        specs.entry(r.get(0)).or_default().push(Column {
            name: r.get(1),
            type_name: r.get(2),
        });
    }
    let deps = client
        .query_typed(
            "SELECT c.relname::text, r.relname::text FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE k.contype = 'f' AND n.nspname = $1 AND rn.nspname = $1 AND c.oid <> r.oid",
            &[(&schema, Type::TEXT)],
        )
        .await?;
    let mut needs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in deps {
        needs.entry(d.get(0)).or_default().push(d.get(1));
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
    Ok(done
        .into_iter()
        .map(|name| TableSpec {
            columns: specs.remove(&name).unwrap_or_default(),
            name,
        })
        .collect())
}
