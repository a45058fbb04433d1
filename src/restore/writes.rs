//! What the application wrote to the tenant while a restore ran. The restore renames the live
//! schema aside and creates the restored one in its place, so writes the application commits
//! meanwhile land in the schema set aside (its tables keep their identity through the rename).
//! After the COMMIT the tool counts them, without triggers: the rows of the schema set aside whose
//! `xmin` the snapshot taken when the restore started does not see (every row inserted or updated
//! by a transaction that committed since),
//! plus the rows the statistics say were deleted since (the statistics arrive late — up to seconds
//! — so deletes of the last moments may be missed; inserts and updates never are).

use anyhow::Result;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::sql::qualified;

/// The live schema's identity, and where its history stood when the restore started.
#[derive(Clone, Debug)]
pub struct Writes {
    schema_oid: Option<u32>,
    /// The snapshot when the restore started (`txid_current_snapshot()`, as text): a row whose
    /// `xmin` it does not see was committed after the start.
    snapshot: String,
    /// That snapshot's oldest transaction (a full id; `xmin` holds its low 32 bits).
    snapshot_xmin: i64,
    deleted_before: i64,
}

const DELETED: &str = "SELECT coalesce(sum(s.n_tup_del), 0)::bigint \
     FROM pg_catalog.pg_stat_all_tables s JOIN pg_catalog.pg_class c ON c.oid = s.relid \
     WHERE c.relnamespace = $1";

impl Writes {
    /// Notes where `schema` stands (nothing to count if it does not exist).
    pub async fn start(client: &Client, schema: &str) -> Result<Writes> {
        let row = client
            .query_one(
                "SELECT (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1), \
                 s::text, pg_catalog.txid_snapshot_xmin(s) FROM pg_catalog.txid_current_snapshot() s",
                &[&schema],
            )
            .await?;
        let schema_oid: Option<u32> = row.get(0);
        let deleted_before = match schema_oid {
            Some(oid) => deleted(client, oid).await?,
            None => 0,
        };
        Ok(Writes {
            schema_oid,
            snapshot: row.get(1),
            snapshot_xmin: row.get(2),
            deleted_before,
        })
    }

    /// Whether `schema` (by name, now) is the schema noted at the start: a tenant's schema dropped
    /// and made again meanwhile is another, whose writes this cannot count.
    pub async fn is(&self, client: &Client, schema: &str) -> Result<bool> {
        let now: Option<u32> = client
            .query_one(
                "SELECT (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await?
            .get(0);
        Ok(now.is_some() && now == self.schema_oid)
    }

    /// Locks every table of the schema (now set aside) against writes, inside the caller's
    /// transaction: after it the count cannot change.
    pub async fn lock_tables(&self, client: &Client) -> Result<()> {
        let Some(oid) = self.schema_oid else {
            return Ok(());
        };
        let tables = self.tables(client, oid).await?;
        if !tables.is_empty() {
            client
                .batch_execute(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", tables.join(", ")))
                .await?;
        }
        Ok(())
    }

    async fn tables(&self, client: &Client, oid: u32) -> Result<Vec<String>> {
        Ok(client
            .query_typed(
                "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'm')",
                &[(&oid, Type::OID)],
            )
            .await?
            .iter()
            .map(|t| qualified(t.get(0), t.get(1)))
            .collect())
    }

    /// Rows the application inserted, updated or deleted in the schema since [`Writes::start`]
    /// (the schema now set aside under its pre-restore name). Reads every table of it once.
    pub async fn since(&self, client: &Client) -> Result<i64> {
        let Some(oid) = self.schema_oid else {
            return Ok(0);
        };
        let tables = self.tables(client, oid).await?;
        let mut changed = 0i64;
        if !tables.is_empty() {
            let counts: Vec<String> = tables
                .iter()
                .map(|t| {
                    // Rows written by the snapshot's oldest transaction or a newer one (their
                    // distance from it in 32 bits gives the full id) that the snapshot does not
                    // see: committed after the restore started.
                    format!(
                        "SELECT count(*) FROM ONLY {t} \
                         WHERE pg_catalog.age(xmin) <= pg_catalog.age(($2 % 4294967296)::text::xid) \
                         AND NOT pg_catalog.txid_visible_in_snapshot( \
                           $2 + ((xmin::text::bigint - $2 % 4294967296 + 4294967296) % 4294967296), \
                           $1::text::txid_snapshot)"
                    )
                })
                .collect();
            let sql = format!(
                "SELECT coalesce(sum(n), 0)::bigint FROM ({}) c (n)",
                counts.join(" UNION ALL ")
            );
            changed = client
                .query_typed(&sql, &[(&self.snapshot, Type::TEXT), (&self.snapshot_xmin, Type::INT8)])
                .await?[0]
                .get(0);
        }
        let deleted = (deleted(client, oid).await? - self.deleted_before).max(0);
        Ok(changed + deleted)
    }
}

async fn deleted(client: &Client, oid: u32) -> Result<i64> {
    // A fresh read of the statistics, not the snapshot this session may have cached.
    client
        .batch_execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        .await?;
    Ok(client.query_typed(DELETED, &[(&oid, Type::OID)]).await?[0].get(0))
}
