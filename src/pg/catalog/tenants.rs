//! The tenant table: one row per clinic, with its backup schedule.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::Catalog;
use crate::error::UsageError;
use crate::pg::connect::pg_context;
use crate::pg::sql::{check_tenant_schema_name, is_tenant_schema_name};

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

const TENANT_COLUMNS: &str =
    "id, schema_name::text, name::text, backup_schedule::text, last_backup_at, next_scheduled_backup";

impl Catalog {
    /// Every tenant but `public`, in one query, ordered by schema name. Rows whose name
    /// django-tenants would reject are left out (and logged): their folder could lie inside
    /// another tenant's.
    pub async fn tenants(&self, client: &Client) -> anyhow::Result<Vec<Tenant>> {
        let (tenants, _) = self.tenants_checked(client).await?;
        Ok(tenants)
    }

    /// [`tenants`](Self::tenants), and the names left out.
    pub async fn tenants_checked(&self, client: &Client) -> anyhow::Result<(Vec<Tenant>, Vec<String>)> {
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM {} WHERE schema_name <> 'public' ORDER BY schema_name",
            self.tenants_table.quoted()
        );
        let rows = client.query_typed(&sql, &[]).await.map_err(|e| self.table_error(e))?;
        let (good, bad): (Vec<Tenant>, Vec<Tenant>) = rows
            .iter()
            .map(tenant_from_row)
            .partition(|t| is_tenant_schema_name(&t.schema_name));
        for t in &bad {
            tracing::error!(
                "{}: tenant row {} has schema_name {:?}, which django-tenants would reject: skipped (fix or remove that row)",
                self.tenants_table,
                t.id,
                t.schema_name
            );
        }
        Ok((good, bad.into_iter().map(|t| t.schema_name).collect()))
    }

    /// How many tenants there are (`public` not counted).
    pub async fn tenant_count(&self, client: &Client) -> anyhow::Result<u64> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE schema_name <> 'public'",
            self.tenants_table.quoted()
        );
        let rows = client.query_typed(&sql, &[]).await.map_err(|e| self.table_error(e))?;
        Ok(rows[0].get::<_, i64>(0).max(0) as u64)
    }

    /// Every `schema_name` in the tenant table, `public` and rejected names included: schemas that
    /// are somebody's, whatever they look like.
    pub async fn listed_schemas(&self, client: &Client) -> anyhow::Result<Vec<String>> {
        let sql = format!("SELECT schema_name::text FROM {}", self.tenants_table.quoted());
        let rows = client.query_typed(&sql, &[]).await.map_err(|e| self.table_error(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// One tenant; a name django-tenants would reject, an unknown name (or `public`) is a usage
    /// error and nothing is touched.
    pub async fn tenant(&self, client: &Client, schema: &str) -> anyhow::Result<Tenant> {
        check_tenant_schema_name(schema)?;
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
            None => {
                let known = self.listed_schemas(client).await.unwrap_or_default();
                let guess = match nearest(schema, &known).as_slice() {
                    [] => String::new(),
                    names => format!(
                        "; did you mean {}?",
                        names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(" or ")
                    ),
                };
                Err(UsageError::new(format!(
                    "tenant {schema:?} not found in {}{guess} (`tenant-backup status` lists every tenant; check --tenants-table if none is yours)",
                    self.tenants_table
                ))
                .into())
            }
        }
    }

    /// A tenant of a database that has no tenant table at all (a new one, after a disaster):
    /// restore takes it from the bucket. Refused when the tenant table exists, where
    /// [`Catalog::tenant`] is the only way in.
    pub async fn unlisted_tenant(&self, client: &Client, schema: &str) -> anyhow::Result<Tenant> {
        check_tenant_schema_name(schema)?;
        let exists: bool = client
            .query_typed(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&self.tenants_table.quoted(), Type::TEXT)],
            )
            .await
            .map_err(pg_context("looking for the tenant table"))?[0]
            .get(0);
        if exists {
            return Err(UsageError::new(format!(
                "--new-database is for a database without a tenant table, and this one has {}: restore without --new-database (the tenant must be listed there)",
                self.tenants_table
            ))
            .into());
        }
        tracing::warn!(
            "{} does not exist: restoring {schema} into a new database from the bucket (--new-database)",
            self.tenants_table
        );
        Ok(Tenant {
            id: 0,
            schema_name: schema.to_string(),
            name: schema.to_string(),
            backup_schedule: Schedule::Disabled,
            last_backup_at: None,
            next_scheduled_backup: None,
        })
    }

    /// The tenants named on the command line, each checked against the tenant table.
    pub async fn named_tenants(&self, client: &Client, names: &[String]) -> anyhow::Result<Vec<Tenant>> {
        let mut out = Vec::new();
        for name in names {
            out.push(self.tenant(client, name).await?);
        }
        Ok(out)
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

/// The names in `known` nearest to `name` (at most three, within a third of its length in edits,
/// at least 2): the tenant that was probably meant.
fn nearest<'a>(name: &str, known: &'a [String]) -> Vec<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    let mut near: Vec<(usize, &str)> = known
        .iter()
        .filter(|k| k.as_str() != "public")
        .map(|k| (edit_distance(name, k), k.as_str()))
        .filter(|(d, _)| *d <= limit)
        .collect();
    near.sort();
    near.into_iter().take(3).map(|(_, k)| k).collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod nearest_tests {
    use super::*;

    #[test]
    fn nearest_names_are_the_few_within_reach() {
        let known: Vec<String> = ["public", "bienestar", "mindcare", "clinica_demo", "bienestar2"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearest("bienestr", &known), ["bienestar", "bienestar2"]);
        assert_eq!(nearest("mind_care", &known), ["mindcare"]);
        assert!(nearest("zzzzzzzz", &known).is_empty());
        assert!(nearest("publc", &known).is_empty(), "public is not a tenant");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
