//! The tenant table and each tenant's `BackupRecord` history, exactly as Django's migrations made them.
//! Every statement is unnamed (`query_typed`), so it works through a transaction pooler.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

use crate::error::UsageError;
use crate::pg::connect::pg_context;
use crate::pg::sql::{literal, qualified, QualifiedName};

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

/// A tenant's `backup_schedule`, as the application defines it (the column has no CHECK, so
/// anything else is kept as it was read, and never due).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    Disabled,
    Daily,
    Weekly,
    /// One backup at `next_scheduled_backup`, then back to `Disabled`.
    Scheduled,
    Other(String),
}

impl Schedule {
    pub fn from_db(raw: &str) -> Schedule {
        match raw {
            "disabled" => Schedule::Disabled,
            "daily" => Schedule::Daily,
            "weekly" => Schedule::Weekly,
            "scheduled" => Schedule::Scheduled,
            other => Schedule::Other(other.to_string()),
        }
    }

    pub fn as_db(&self) -> &str {
        match self {
            Schedule::Disabled => "disabled",
            Schedule::Daily => "daily",
            Schedule::Weekly => "weekly",
            Schedule::Scheduled => "scheduled",
            Schedule::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_db())
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_db())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: i64,
    pub schema_name: String,
    pub name: String,
    pub backup_schedule: Schedule,
    pub last_backup_at: Option<DateTime<Utc>>,
    pub next_scheduled_backup: Option<DateTime<Utc>>,
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

/// Where the tenant table and the per-schema history table are.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub tenants_table: QualifiedName,
    pub records_table: String,
    /// The user table inside each tenant schema (`--created-by`, and kept `created_by_id`s).
    pub users_table: String,
}

const TENANT_COLUMNS: &str =
    "id, schema_name::text, name::text, backup_schedule::text, last_backup_at, next_scheduled_backup";

impl Catalog {
    pub fn new(tenants_table: &str, records_table: &str, users_table: &str) -> Result<Self, UsageError> {
        let tenants_table = QualifiedName::parse(tenants_table)?;
        let in_schema = |name: &str, flag: &str, example: &str| {
            if name.is_empty() || name.contains('.') || name.len() > 63 {
                return Err(UsageError::new(format!(
                    "invalid {flag} {name:?}: give the table name inside each tenant schema, e.g. {example}"
                )));
            }
            Ok(name.to_string())
        };
        Ok(Catalog {
            tenants_table,
            records_table: in_schema(
                records_table,
                "--records-table / BACKUP_RECORDS_TABLE",
                "backups_backuprecord",
            )?,
            users_table: in_schema(users_table, "--users-table / BACKUP_USERS_TABLE", "users_user")?,
        })
    }

    /// `"schema"."users_user"`: the tenant's own users (`created_by_id` points there).
    pub fn users_in(&self, schema: &str) -> String {
        qualified(schema, &self.users_table)
    }

    /// `"schema"."backups_backuprecord"`.
    pub fn records_in(&self, schema: &str) -> String {
        qualified(schema, &self.records_table)
    }

    /// Every tenant but `public`, in one query, ordered by schema name.
    pub async fn tenants(&self, client: &Client) -> anyhow::Result<Vec<Tenant>> {
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM {} WHERE schema_name <> 'public' ORDER BY schema_name",
            self.tenants_table.quoted()
        );
        let rows = client.query_typed(&sql, &[]).await.map_err(|e| self.table_error(e))?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }

    /// One tenant; an unknown name (or `public`) is a usage error and nothing is touched.
    pub async fn tenant(&self, client: &Client, schema: &str) -> anyhow::Result<Tenant> {
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM {} WHERE schema_name = $1 AND schema_name <> 'public'",
            self.tenants_table.quoted()
        );
        let rows = client
            .query_typed(&sql, &[(&schema, Type::TEXT)])
            .await
            .map_err(|e| self.table_error(e))?;
        match rows.first() {
            Some(row) => Ok(tenant_from_row(row)),
            None => Err(UsageError::new(format!(
                "tenant {schema:?} not found in {}: run `tenant-backup list` or check --tenants-table",
                self.tenants_table
            ))
            .into()),
        }
    }

    /// The tenants named on the command line, each checked against the tenant table.
    pub async fn named_tenants(&self, client: &Client, names: &[String]) -> anyhow::Result<Vec<Tenant>> {
        let mut out = Vec::new();
        for name in names {
            out.push(self.tenant(client, name).await?);
        }
        Ok(out)
    }

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

    pub async fn insert_record(&self, client: &Client, schema: &str, rec: &NewRecord<'_>) -> anyhow::Result<i64> {
        let sql = format!(
            "INSERT INTO {} (file_name, file_path, file_size, backup_type, created_at, created_by_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            self.records_in(schema)
        );
        let kind = rec.kind.as_db();
        // A transaction so the deferred foreign key on created_by_id is checked at COMMIT, here.
        client.batch_execute("BEGIN").await?;
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
        let id = match result {
            Ok(rows) => rows[0].get::<_, i64>(0),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                anyhow::bail!(
                    "writing the BackupRecord row into {}: {}",
                    self.records_in(schema),
                    crate::pg::connect::describe_pg_error(&e)
                );
            }
        };
        client
            .batch_execute("COMMIT")
            .await
            .map_err(pg_context("committing the BackupRecord row"))?;
        Ok(id)
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

    /// `last_backup_at = now` after a successful automatic backup.
    pub async fn mark_backed_up(&self, client: &Client, tenant_id: i64, at: DateTime<Utc>) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET last_backup_at = $1 WHERE id = $2",
            self.tenants_table.quoted()
        );
        client
            .query_typed(&sql, &[(&at, Type::TIMESTAMPTZ), (&tenant_id, Type::INT8)])
            .await
            .map_err(pg_context("updating last_backup_at"))?;
        Ok(())
    }

    /// The one-shot reset after a `scheduled` backup: back to `disabled`, no time set. Only if the
    /// row still holds the time that was due, so a reschedule made meanwhile is kept.
    pub async fn finish_scheduled(
        &self,
        client: &Client,
        tenant_id: i64,
        was: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET backup_schedule = 'disabled', next_scheduled_backup = NULL \
             WHERE id = $1 AND backup_schedule = 'scheduled' AND next_scheduled_backup IS NOT DISTINCT FROM $2",
            self.tenants_table.quoted()
        );
        client
            .query_typed(&sql, &[(&tenant_id, Type::INT8), (&was, Type::TIMESTAMPTZ)])
            .await
            .map_err(pg_context("resetting the one-shot schedule"))?;
        Ok(())
    }

    /// Sets `backup_schedule` (and `next_scheduled_backup`, cleared unless given).
    pub async fn set_schedule(
        &self,
        client: &Client,
        tenant_id: i64,
        schedule: &Schedule,
        next: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET backup_schedule = $1, next_scheduled_backup = $2 WHERE id = $3",
            self.tenants_table.quoted()
        );
        client
            .query_typed(
                &sql,
                &[
                    (&schedule.as_db(), Type::VARCHAR),
                    (&next, Type::TIMESTAMPTZ),
                    (&tenant_id, Type::INT8),
                ],
            )
            .await
            .map_err(pg_context("updating the schedule"))?;
        Ok(())
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

    fn table_error(&self, e: tokio_postgres::Error) -> anyhow::Error {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            return UsageError::new(format!(
                "table {} does not exist: set --tenants-table / BACKUP_TENANTS_TABLE to your tenant model's table",
                self.tenants_table
            ))
            .into();
        }
        anyhow::anyhow!(
            "reading {}: {}",
            self.tenants_table,
            crate::pg::connect::describe_pg_error(&e)
        )
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

fn tenant_from_row(row: &Row) -> Tenant {
    Tenant {
        id: row.get(0),
        schema_name: row.get(1),
        name: row.get(2),
        backup_schedule: Schedule::from_db(row.get(3)),
        last_backup_at: row.get(4),
        next_scheduled_backup: row.get(5),
    }
}
