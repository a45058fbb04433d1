//! Verify's foreign-key check between the loaded temporary copies.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::sql::quote_ident;

/// Verify: every foreign key between the schema's tables must hold between their loaded copies (a
/// restore would fail on the first one that does not).
pub(super) async fn check_foreign_keys(client: &Client, schema: &str, copies: &BTreeMap<String, String>) -> Result<()> {
    let fks = client
        .query_typed(
            "SELECT k.conname::text, c.relname::text, r.relname::text, \
               ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.i), \
               ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.i) \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE k.contype = 'f' AND k.convalidated AND n.nspname = $1 AND r.relnamespace = n.oid ORDER BY 1",
            &[(&schema, Type::TEXT)],
        )
        .await
        .context("reading the schema's foreign keys")?;
    for fk in fks {
        let (name, child, parent): (String, String, String) = (fk.get(0), fk.get(1), fk.get(2));
        let (cols, refs): (Vec<String>, Vec<String>) = (fk.get(3), fk.get(4));
        let (Some(c), Some(p)) = (copies.get(&child), copies.get(&parent)) else {
            continue;
        };
        // MATCH SIMPLE: a row with a NULL in the key references nothing.
        let not_null: Vec<String> = cols
            .iter()
            .map(|a| format!("c.{} IS NOT NULL", quote_ident(a)))
            .collect();
        let joined: Vec<String> = cols
            .iter()
            .zip(&refs)
            .map(|(a, b)| format!("p.{} = c.{}", quote_ident(b), quote_ident(a)))
            .collect();
        let broken: i64 = client
            .query_typed(
                &format!(
                    "SELECT count(*) FROM {c} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {p} p WHERE {})",
                    not_null.join(" AND "),
                    joined.join(" AND ")
                ),
                &[],
            )
            .await
            .with_context(|| format!("checking foreign key {name}"))?[0]
            .get(0);
        if broken > 0 {
            anyhow::bail!(
                "{broken} row(s) of {child} reference missing {parent} rows (foreign key {name}): a restore of this backup would fail"
            );
        }
    }
    Ok(())
}
