//! The tenant table and each tenant's `BackupRecord` history, exactly as Django's migrations made
//! them: where they are ([`Catalog`]), the tenant rows ([`tenants`]), the history rows
//! ([`records`]), and every tenant's history at once ([`histories`]). Every statement is unnamed (`query_typed`), so it works through a transaction
//! pooler.

mod histories;
mod records;
mod tenants;

use crate::error::UsageError;
use crate::pg::sql::{qualified, QualifiedName};

pub use histories::{Newest, CHUNK as HISTORY_CHUNK};
pub use records::{check_backupable, insert_history, schema_state, BackupKind, BackupRecord, InsertError, NewRecord};
pub use tenants::{Schedule, Tenant};

/// Where the tenant table and the per-schema history table are.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub tenants_table: QualifiedName,
    pub records_table: String,
    /// The user table inside each tenant schema (`--created-by`, and kept `created_by_id`s).
    pub users_table: String,
}

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

    pub(super) fn table_error(&self, e: tokio_postgres::Error) -> anyhow::Error {
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
