//! Every tenant's history at once, for `list`, `status` and `cleanup --dry-run` over thousands of
//! tenants: one query finds which schemas hold the history (and users) table, then one statement
//! per [`CHUNK`] tenants reads their rows (`SELECT … UNION ALL SELECT …`), and one more per
//! chunk of tenants whose history names a creator reads those users' emails, instead of two
//! queries per tenant. Each statement is its own transaction, so the locks it takes on the tables it reads
//! (and on their indexes, which the planner opens) stay far below the lock table's size; a
//! whole-fleet read in one transaction would need a lock per table of every tenant.
//!
//! What still grows with the number of tenants is the server opening each history table (its
//! catalog entries are read into the backend's caches the first time): about 0.1 ms a tenant.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

use super::{BackupRecord, Catalog};
use crate::pg::connect::describe_pg_error;
use crate::pg::sql::literal;

/// Tenants read by one statement.
pub const CHUNK: usize = 100;

/// `(newest backup of any type, newest automatic one)`.
pub type Newest = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

impl Catalog {
    /// Which of `schemas` hold the history table, and which the users table.
    async fn present(&self, client: &Client, schemas: &[String]) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let names = vec![self.records_table.clone(), self.users_table.clone()];
        let rows = client
            .query_typed(
                "SELECT n.nspname::text, c.relname::text FROM pg_namespace n \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = ANY($2::text[]::name[]) \
                 WHERE n.nspname = ANY($1::text[]::name[])",
                &[
                    (&schemas as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
                    (&names, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        let (mut records, mut users) = (BTreeSet::new(), BTreeSet::new());
        for r in rows {
            let (schema, table): (String, String) = (r.get(0), r.get(1));
            if table == self.records_table {
                records.insert(schema);
            } else {
                users.insert(schema);
            }
        }
        Ok((records, users))
    }

    /// Each schema's history, newest first, in the order of `schemas`; with `creators`, the
    /// creator's email too (as [`Catalog::records`] gives it). A tenant whose history cannot be
    /// read gets its own error; the others are unaffected.
    pub async fn histories(
        &self,
        client: &Client,
        schemas: &[String],
        creators: bool,
    ) -> Result<Vec<Result<Vec<BackupRecord>>>> {
        let (has_records, has_users) = self.present(client, schemas).await?;
        let mut out: Vec<Result<Vec<BackupRecord>>> = schemas
            .iter()
            .map(|s| match has_records.contains(s) {
                true => Ok(Vec::new()),
                false => Err(self.missing(s)),
            })
            .collect();
        let readable: Vec<usize> = (0..schemas.len()).filter(|i| out[*i].is_ok()).collect();
        let arm = |i: usize| {
            format!(
                "SELECT {i}::int4, r.id::int8, r.file_name::text, r.file_path::text, r.file_size::int8, \
                 r.backup_type::text, r.created_at::timestamptz, r.created_by_id::int8 FROM {} r",
                self.records_in(&schemas[i])
            )
        };
        for chunk in readable.chunks(CHUNK) {
            match self.read_chunk(client, chunk, &arm).await {
                Ok(rows) => {
                    for r in rows {
                        let i = r.get::<_, i32>(0) as usize;
                        if let Ok(v) = &mut out[i] {
                            v.push(record(&r));
                        }
                    }
                }
                // One tenant's table is not what it should be: read them one by one, so only
                // that tenant fails.
                Err(_) => {
                    for &i in chunk {
                        out[i] = match self.read_chunk(client, &[i], &arm).await {
                            Ok(rows) => Ok(rows.iter().map(record).collect()),
                            Err(e) => Err(self.read_error(&schemas[i], &e)),
                        };
                    }
                }
            }
        }
        if creators {
            self.add_creators(client, schemas, &has_users, &mut out).await;
        }
        for v in out.iter_mut().flatten() {
            v.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
        }
        Ok(out)
    }

    /// Fills in the creators' emails, reading only the users tables of tenants whose history names
    /// a creator (automatic backups have none). An email that cannot be read stays unknown, as
    /// when the users table is missing.
    async fn add_creators(
        &self,
        client: &Client,
        schemas: &[String],
        has_users: &BTreeSet<String>,
        out: &mut [Result<Vec<BackupRecord>>],
    ) {
        let wanted: Vec<(usize, Vec<i64>)> = out
            .iter()
            .enumerate()
            .filter(|(i, _)| has_users.contains(&schemas[*i]))
            .filter_map(|(i, h)| {
                let ids: BTreeSet<i64> = h.as_ref().ok()?.iter().filter_map(|r| r.created_by_id).collect();
                (!ids.is_empty()).then(|| (i, ids.into_iter().collect()))
            })
            .collect();
        for chunk in wanted.chunks(CHUNK) {
            let arms: Vec<String> = chunk
                .iter()
                .map(|(i, ids)| {
                    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                    format!(
                        "SELECT {i}::int4, u.id::int8, u.email::text FROM {} u WHERE u.id = ANY('{{{}}}'::int8[])",
                        self.users_in(&schemas[*i]),
                        ids.join(",")
                    )
                })
                .collect();
            let rows = match client.query_typed(&arms.join("\nUNION ALL\n"), &[]).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::debug!("reading the creators of backups: {e}");
                    continue;
                }
            };
            let mut emails: BTreeMap<(usize, i64), Option<String>> = BTreeMap::new();
            for r in rows {
                emails.insert((r.get::<_, i32>(0) as usize, r.get(1)), r.get(2));
            }
            for (i, _) in chunk {
                if let Ok(records) = &mut out[*i] {
                    for rec in records {
                        if let Some(id) = rec.created_by_id {
                            rec.created_by_email = emails.get(&(*i, id)).cloned().flatten();
                        }
                    }
                }
            }
        }
    }

    /// [`Catalog::newest_backups`] for every schema, in the order of `schemas`.
    pub async fn newest_backups_of(&self, client: &Client, schemas: &[String]) -> Result<Vec<Result<Newest>>> {
        let (has_records, _) = self.present(client, schemas).await?;
        let mut out: Vec<Result<Newest>> = schemas
            .iter()
            .map(|s| match has_records.contains(s) {
                true => Ok((None, None)),
                false => Err(self.missing(s)),
            })
            .collect();
        let readable: Vec<usize> = (0..schemas.len()).filter(|i| out[*i].is_ok()).collect();
        let arm = |i: usize| {
            format!(
                "SELECT {i}::int4, max(created_at)::timestamptz, \
                 max(created_at) FILTER (WHERE backup_type = {})::timestamptz FROM {}",
                literal("automatic"),
                self.records_in(&schemas[i])
            )
        };
        for chunk in readable.chunks(CHUNK) {
            let rows = match self.read_chunk(client, chunk, &arm).await {
                Ok(rows) => rows,
                Err(_) => {
                    let mut rows = Vec::new();
                    for &i in chunk {
                        match self.read_chunk(client, &[i], &arm).await {
                            Ok(r) => rows.extend(r),
                            Err(e) => out[i] = Err(self.read_error(&schemas[i], &e)),
                        }
                    }
                    rows
                }
            };
            for r in rows {
                out[r.get::<_, i32>(0) as usize] = Ok((r.get(1), r.get(2)));
            }
        }
        Ok(out)
    }

    async fn read_chunk(
        &self,
        client: &Client,
        chunk: &[usize],
        arm: &dyn Fn(usize) -> String,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let sql: Vec<String> = chunk.iter().map(|&i| arm(i)).collect();
        client.query_typed(&sql.join("\nUNION ALL\n"), &[]).await
    }

    fn missing(&self, schema: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "reading {}: the table does not exist (is the schema there, and migrated?)",
            self.records_in(schema)
        )
    }

    fn read_error(&self, schema: &str, e: &tokio_postgres::Error) -> anyhow::Error {
        anyhow::anyhow!("reading {}: {}", self.records_in(schema), describe_pg_error(e))
    }
}

fn record(r: &Row) -> BackupRecord {
    BackupRecord {
        id: r.get(1),
        file_name: r.get(2),
        file_path: r.get(3),
        file_size: r.get(4),
        backup_type: r.get(5),
        created_at: r.get(6),
        created_by_id: r.get(7),
        created_by_email: None,
    }
}
