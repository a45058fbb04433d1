//! Each tenant's history table (`backups_backuprecord`): what was backed up, where it is stored,
//! and who asked.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::Catalog;
use crate::error::UsageError;
use crate::pg::connect::{describe_pg_error, pg_context};
use crate::pg::sql::literal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Manual,
    Automatic,
}

impl BackupKind {
    /// The value Django's `backup_type` field accepts.
    pub fn as_db(self) -> &'static str {
        match self {
            BackupKind::Manual => "manual",
            BackupKind::Automatic => "automatic",
        }
    }
}

impl BackupKind {
    /// A history row's `backup_type`; `None` for a value Django would not have written.
    pub fn from_db(raw: &str) -> Option<BackupKind> {
        match raw {
            "manual" => Some(BackupKind::Manual),
            "automatic" => Some(BackupKind::Automatic),
            _ => None,
        }
    }
}

/// Why a BackupRecord row may not be there.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// Certainly not written.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// COMMIT was sent and no answer came back: row `id` may or may not exist.
    #[error("{source:#}")]
    CommitLost { id: i64, xid: i64, source: anyhow::Error },
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupRecord {
    pub id: i64,
    pub file_name: String,
    pub file_path: String,
    pub file_size: i64,
    /// As stored; see [`BackupRecord::kind`].
    pub backup_type: String,
    pub created_at: DateTime<Utc>,
    pub created_by_id: Option<i64>,
    pub created_by_email: Option<String>,
}

impl BackupRecord {
    pub fn kind(&self) -> Option<BackupKind> {
        BackupKind::from_db(&self.backup_type)
    }
}

pub struct NewRecord<'a> {
    pub file_name: &'a str,
    pub file_path: &'a str,
    pub file_size: i64,
    pub kind: BackupKind,
    pub created_at: DateTime<Utc>,
    pub created_by_id: Option<i64>,
}

impl Catalog {
    /// Resolves `--created-by` (a user id or an email) to an id in the tenant's own users table.
    pub async fn resolve_user(&self, client: &Client, schema: &str, who: &str) -> anyhow::Result<i64> {
        let users = self.users_in(schema);
        let rows = if let Ok(id) = who.parse::<i64>() {
            let sql = format!("SELECT id FROM {users} WHERE id = $1");
            client
                .query_typed(&sql, &[(&id as &(dyn ToSql + Sync), Type::INT8)])
                .await
        } else {
            let sql = format!("SELECT id FROM {users} WHERE lower(email) = lower($1) ORDER BY id LIMIT 1");
            client
                .query_typed(&sql, &[(&who as &(dyn ToSql + Sync), Type::TEXT)])
                .await
        }
        .map_err(pg_context(format!(
            "looking up user {who:?} in {schema}.{}",
            self.users_table
        )))?;
        match rows.first() {
            Some(row) => Ok(row.get(0)),
            None => Err(UsageError::new(format!(
                "--created-by {who:?}: no such user (id or email) in {schema}.{}",
                self.users_table
            ))
            .into()),
        }
    }

    /// Writes the row in a transaction of its own. When the connection is lost at COMMIT, the
    /// caller learns the row's id and transaction ([`InsertError::CommitLost`]) to ask the server.
    pub async fn insert_record(&self, client: &Client, schema: &str, rec: &NewRecord<'_>) -> Result<i64, InsertError> {
        let sql = format!(
            "INSERT INTO {} (file_name, file_path, file_size, backup_type, created_at, created_by_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, pg_catalog.txid_current()",
            self.records_in(schema)
        );
        let kind = rec.kind.as_db();
        // A transaction so the deferred foreign key on created_by_id is checked at COMMIT, here.
        let failed = |e: tokio_postgres::Error| {
            InsertError::Failed(anyhow::anyhow!(
                "writing the BackupRecord row: {}",
                describe_pg_error(&e)
            ))
        };
        client.batch_execute("BEGIN").await.map_err(failed)?;
        // The row's transaction id comes back with its id: asked for after a lost COMMIT.
        let result = client
            .query_typed(
                &sql,
                &[
                    (&rec.file_name, Type::VARCHAR),
                    (&rec.file_path, Type::TEXT),
                    (&rec.file_size, Type::INT8),
                    (&kind, Type::VARCHAR),
                    (&rec.created_at, Type::TIMESTAMPTZ),
                    (&rec.created_by_id, Type::INT8),
                ],
            )
            .await;
        let (id, xid) = match result {
            Ok(rows) => (rows[0].get::<_, i64>(0), rows[0].get::<_, i64>(1)),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(InsertError::Failed(anyhow::anyhow!(
                    "writing the BackupRecord row into {}: {}",
                    self.records_in(schema),
                    describe_pg_error(&e)
                )));
            }
        };
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(id),
            // The server answered: it refused (a deferred foreign key), nothing was written.
            Err(e) if e.as_db_error().is_some() => Err(InsertError::Failed(anyhow::anyhow!(
                "committing the BackupRecord row: {}",
                describe_pg_error(&e)
            ))),
            Err(e) => Err(InsertError::CommitLost {
                id,
                xid,
                source: anyhow::anyhow!("committing the BackupRecord row: {}", describe_pg_error(&e)),
            }),
        }
    }

    /// The tenant's history, newest first, with the creator's email when the users table is there.
    pub async fn records(&self, client: &Client, schema: &str) -> anyhow::Result<Vec<BackupRecord>> {
        let users = self.users_in(schema);
        let has_users = client
            .query_typed("SELECT to_regclass($1) IS NOT NULL", &[(&users, Type::TEXT)])
            .await
            .map(|rows| rows[0].get::<_, bool>(0))
            .unwrap_or(false);
        let (email, join) = if has_users {
            (
                "u.email::text",
                format!("LEFT JOIN {users} u ON u.id = r.created_by_id"),
            )
        } else {
            ("NULL::text", String::new())
        };
        let sql = format!(
            "SELECT r.id, r.file_name::text, r.file_path, r.file_size, r.backup_type::text, r.created_at, r.created_by_id, {email} \
             FROM {} r {join} ORDER BY r.created_at DESC, r.id DESC",
            self.records_in(schema)
        );
        let rows = client
            .query_typed(&sql, &[])
            .await
            .map_err(pg_context(format!("reading {}", self.records_in(schema))))?;
        Ok(rows
            .iter()
            .map(|r| BackupRecord {
                id: r.get(0),
                file_name: r.get(1),
                file_path: r.get(2),
                file_size: r.get(3),
                backup_type: r.get(4),
                created_at: r.get(5),
                created_by_id: r.get(6),
                created_by_email: r.get(7),
            })
            .collect())
    }

    /// The history, or None when the tenant has no history table (its schema was dropped): a
    /// restore from a named object needs no history.
    pub async fn records_if_present(&self, client: &Client, schema: &str) -> anyhow::Result<Option<Vec<BackupRecord>>> {
        let exists: bool = client
            .query_typed(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&self.records_in(schema), Type::TEXT)],
            )
            .await
            .map_err(pg_context(format!("looking for {}", self.records_in(schema))))?[0]
            .get(0);
        if !exists {
            return Ok(None);
        }
        self.records(client, schema).await.map(Some)
    }

    /// The newest backup of each type: `(newest any, newest automatic)`.
    pub async fn newest_backups(
        &self,
        client: &Client,
        schema: &str,
    ) -> anyhow::Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
        let sql = format!(
            "SELECT max(created_at), max(created_at) FILTER (WHERE backup_type = 'automatic') FROM {}",
            self.records_in(schema)
        );
        let rows = client
            .query_typed(&sql, &[])
            .await
            .map_err(pg_context(format!("reading {}", self.records_in(schema))))?;
        Ok((rows[0].get(0), rows[0].get(1)))
    }

    pub async fn delete_record(&self, client: &Client, schema: &str, id: i64) -> anyhow::Result<()> {
        let sql = format!("DELETE FROM {} WHERE id = $1", self.records_in(schema));
        client
            .query_typed(&sql, &[(&id, Type::INT8)])
            .await
            .map_err(pg_context(format!("deleting row {id} of {}", self.records_in(schema))))?;
        Ok(())
    }
}

/// Copies history rows from `from` (a FROM clause whose rows are aliased `o`) into `records`,
/// dropping `created_by_id`s whose user is not in `users` (its foreign key would fail at COMMIT),
/// then moves the id sequence past them, so the next backup gets a fresh id.
pub fn insert_history(records: &str, users: &str, from: &str) -> String {
    format!(
        "INSERT INTO {records} (id, file_name, file_path, file_size, backup_type, created_at, created_by_id) \
         SELECT o.id, o.file_name, o.file_path, o.file_size, o.backup_type, o.created_at, \
                CASE WHEN EXISTS (SELECT 1 FROM {users} u WHERE u.id = o.created_by_id) THEN o.created_by_id END \
         FROM {from} ON CONFLICT (id) DO NOTHING;\n\
         SELECT setval(pg_get_serial_sequence({}, 'id'), GREATEST((SELECT max(id) FROM {records}), 1));\n",
        literal(records)
    )
}

/// Why a tenant cannot be backed up, if it cannot: its schema or history table is missing, or the
/// tool's role may not use them. Checked before anything is dumped.
pub async fn check_backupable(client: &Client, catalog: &Catalog, schema: &str) -> anyhow::Result<()> {
    let rows = client
        .query_typed(
            "SELECT n.oid IS NOT NULL, c.oid IS NOT NULL, \
                    coalesce(has_schema_privilege(n.oid, 'USAGE'), false), \
                    coalesce(has_table_privilege(c.oid, 'SELECT, INSERT'), false) \
             FROM (SELECT 1) one \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1 \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[(&schema, Type::TEXT), (&catalog.records_table.as_str(), Type::TEXT)],
        )
        .await
        .map_err(pg_context(format!("looking at schema {schema}")))?;
    let (schema_there, table_there, usage, write): (bool, bool, bool, bool) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2), rows[0].get(3));
    let records = catalog.records_in(schema);
    if !schema_there {
        anyhow::bail!(
            "schema {schema} does not exist, though the tenant table lists it: restore it (`tenant-backup restore --tenant {schema} --latest`) or remove the tenant row"
        );
    }
    if !table_there {
        anyhow::bail!(
            "{records} does not exist: run the application's migrations for this tenant (or restore it); nothing was dumped"
        );
    }
    if !usage || !write {
        anyhow::bail!("the tool's role may not read and write {records}: grant it USAGE on the schema and SELECT, INSERT on the table");
    }
    Ok(())
}

/// Does `schema` exist, and does it hold the history table?
pub async fn schema_state(client: &Client, catalog: &Catalog, schema: &str) -> anyhow::Result<(bool, bool)> {
    let rows = client
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                    EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
            &[(&schema, Type::TEXT), (&catalog.records_table.as_str(), Type::TEXT)],
        )
        .await?;
    Ok((rows[0].get(0), rows[0].get(1)))
}
