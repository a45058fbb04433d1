//! What the tenant's tables are, for placing a dump's models and fields: each table's columns and
//! types (as the native format reads them), its one-column primary key, its one-column foreign
//! keys, and the sequence behind its key.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use tokio_postgres::Client;

use crate::jsonl::Column;

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub columns: Vec<Column>,
    pub pk: Option<String>,
    /// column → the table it references (in the same schema).
    pub references: BTreeMap<String, String>,
    /// The sequence (name within the schema) that fills the primary key.
    pub sequence: Option<String>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

pub async fn read(client: &Client, schema: &str) -> Result<BTreeMap<String, Table>> {
    let mut out: BTreeMap<String, Table> = crate::jsonl::tables(client, schema)
        .await?
        .into_iter()
        .map(|t| {
            (
                t.name,
                Table {
                    columns: t.columns,
                    ..Table::default()
                },
            )
        })
        .collect();
    let keys = client
        .query(
            "SELECT k.contype::text, r.relname::text, a.attname::text, coalesce(f.relname::text, '') \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class r ON r.oid = k.conrelid \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
             LEFT JOIN pg_catalog.pg_class f ON f.oid = k.confrelid AND f.relnamespace = r.relnamespace \
             WHERE r.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1) \
               AND k.contype IN ('p', 'f') AND pg_catalog.cardinality(k.conkey) = 1",
            &[&schema],
        )
        .await
        .context("reading the tenant's keys")?;
    for k in keys {
        let (kind, table, column, target): (String, String, String, String) = (k.get(0), k.get(1), k.get(2), k.get(3));
        let Some(t) = out.get_mut(&table) else { continue };
        match kind.as_str() {
            "p" => t.pk = Some(column),
            _ if !target.is_empty() => {
                t.references.insert(column, target);
            }
            _ => {}
        }
    }
    let sequences = client
        .query(
            "SELECT r.relname::text, a.attname::text, s.relname::text \
             FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_class r ON r.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i') \
               AND s.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1) \
               AND r.relnamespace = s.relnamespace",
            &[&schema],
        )
        .await
        .context("reading the tenant's sequences")?;
    for s in sequences {
        let (table, column, seq): (String, String, String) = (s.get(0), s.get(1), s.get(2));
        if let Some(t) = out.get_mut(&table) {
            if t.pk.as_deref() == Some(column.as_str()) {
                t.sequence = Some(seq);
            }
        }
    }
    Ok(out)
}
