//! Tenant keys: one age identity per tenant, stored wrapped to the master recipient in a table of
//! the tool's own in `public` (default `public.tenant_backup_keys`). Backing up needs only the
//! public half (the tenant's recipient, created on its first encrypted backup); reading needs the
//! master identity to unwrap the tenant's identity. Deleting a row forgets the tenant's key.

use std::collections::BTreeSet;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use anyhow::{Context as _, Result};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{MasterIdentity, MasterRecipient};
use crate::error::UsageError;
use crate::pg::connect::describe_pg_error;
use crate::pg::sql::QualifiedName;
use crate::storage::{Storage, StorageError};

/// A tenant's key as the key table holds it: its recipient (public), and its identity wrapped to
/// the master recipient `wrapped_to`.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub recipient: age::x25519::Recipient,
    pub wrapped: Vec<u8>,
    pub wrapped_to: String,
}

#[derive(Clone, Debug)]
pub struct KeyStore {
    pub table: QualifiedName,
}

/// Why a tenant's backups cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "tenant {0}'s key was forgotten (`keys forget`), or never made: its encrypted backups cannot be read by anyone"
    )]
    Forgotten(String),
    #[error(
        "tenant {tenant}'s key is wrapped to master recipient {wrapped_to}, not to this identity's ({ours}): use the master identity of that recipient"
    )]
    OtherMaster {
        tenant: String,
        wrapped_to: String,
        ours: String,
    },
}

impl KeyStore {
    pub fn new(table: &str) -> Result<Self, UsageError> {
        Ok(KeyStore {
            table: QualifiedName::parse(table)?,
        })
    }

    fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  tenant text PRIMARY KEY,\n  recipient text NOT NULL,\n  wrapped_identity bytea NOT NULL,\n  wrapped_to text NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now()\n)",
            self.table.quoted()
        )
    }

    /// Creates the table when it is missing, under a lock; a role that may not gets the statement
    /// to run by hand.
    pub async fn ensure(&self, client: &Client) -> Result<()> {
        let exists: bool = client
            .query_typed(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&self.table.quoted(), Type::TEXT)],
            )
            .await?[0]
            .get(0);
        if exists {
            return Ok(());
        }
        // Concurrent `CREATE TABLE IF NOT EXISTS` race in the catalog (one of them fails on
        // pg_type's unique index): workers and overlapping ticks take turns on an advisory lock
        // held for this one implicit transaction (one simple query), so the second sees the table.
        let create = format!(
            "SELECT pg_advisory_xact_lock({}); {}",
            crate::pg::lock::lock_key(&format!("create {}", self.table.quoted())),
            self.ddl()
        );
        if let Err(e) = client.batch_execute(&create).await {
            let code = e.code().map(|c| c.code().to_string());
            if code.as_deref() == Some("42501") {
                return Err(UsageError::new(format!(
                    "this role may not create {} (the tenant key table): have an administrator run\n{};\nand GRANT SELECT, INSERT, UPDATE, DELETE on it to this role, or set --keys-table / BACKUP_KEYS_TABLE to a table it may use",
                    self.table,
                    self.ddl()
                ))
                .into());
            }
            anyhow::bail!("creating {}: {}", self.table, describe_pg_error(&e));
        }
        tracing::info!("created {} for the tenants' backup keys", self.table);
        Ok(())
    }

    /// The tenant's key, created (wrapped to `master`) on first use. Two workers racing here
    /// agree: the first insert wins and both read it back.
    pub async fn recipient_for(&self, client: &Client, tenant: &str, master: &MasterRecipient) -> Result<StoredKey> {
        if let Some(k) = self.stored(client, tenant).await? {
            return Ok(k);
        }
        self.ensure(client).await?;
        let identity = age::x25519::Identity::generate();
        let wrapped = age::encrypt(&master.0, identity.to_string().expose_secret().as_bytes())
            .context("wrapping the new tenant key")?;
        let sql = format!(
            "INSERT INTO {} (tenant, recipient, wrapped_identity, wrapped_to) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO NOTHING",
            self.table.quoted()
        );
        client
            .query_typed(
                &sql,
                &[
                    (&tenant, Type::TEXT),
                    (&identity.to_public().to_string(), Type::TEXT),
                    (&wrapped, Type::BYTEA),
                    (&master.as_string(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| anyhow::anyhow!("storing {tenant}'s key in {}: {}", self.table, describe_pg_error(&e)))?;
        self.stored(client, tenant)
            .await?
            .with_context(|| format!("{tenant}'s key vanished from {} just after it was stored", self.table))
    }

    async fn stored(&self, client: &Client, tenant: &str) -> Result<Option<StoredKey>> {
        let Some(row) = self.row(client, tenant).await? else {
            return Ok(None);
        };
        let raw: String = row.get(0);
        let recipient = age::x25519::Recipient::from_str(&raw)
            .map_err(|e| anyhow::anyhow!("{}: {tenant}'s recipient is damaged ({e})", self.table))?;
        Ok(Some(StoredKey {
            recipient,
            wrapped: row.get(1),
            wrapped_to: row.get(2),
        }))
    }

    async fn row(&self, client: &Client, tenant: &str) -> Result<Option<tokio_postgres::Row>> {
        let sql = format!(
            "SELECT recipient, wrapped_identity, wrapped_to FROM {} WHERE tenant = $1",
            self.table.quoted()
        );
        match client.query_typed(&sql, &[(&tenant, Type::TEXT)]).await {
            Ok(rows) => Ok(rows.into_iter().next()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {}", self.table, describe_pg_error(&e))),
        }
    }

    /// Whether the tenant has a key: its backups are encrypted.
    pub async fn has_key(&self, client: &Client, tenant: &str) -> Result<bool> {
        Ok(self.row(client, tenant).await?.is_some())
    }

    /// The tenant's identity, unwrapped with the master identity.
    pub async fn identity_for(
        &self,
        client: &Client,
        tenant: &str,
        master: &MasterIdentity,
    ) -> Result<age::x25519::Identity> {
        let row = self
            .row(client, tenant)
            .await?
            .ok_or_else(|| KeyError::Forgotten(tenant.to_string()))?;
        let (wrapped, wrapped_to): (Vec<u8>, String) = (row.get(1), row.get(2));
        unwrap(&wrapped, master).map_err(|_| {
            KeyError::OtherMaster {
                tenant: tenant.to_string(),
                wrapped_to,
                ours: master.recipient().as_string(),
            }
            .into()
        })
    }

    /// Deletes the tenant's key: every copy of its encrypted backups becomes unreadable.
    pub async fn forget(&self, client: &Client, tenant: &str) -> Result<bool> {
        let sql = format!("DELETE FROM {} WHERE tenant = $1", self.table.quoted());
        match client.query_typed(&sql, &[(&tenant, Type::TEXT)]).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => return Ok(false),
            Err(e) => anyhow::bail!("deleting {tenant}'s key: {}", describe_pg_error(&e)),
        }
        // query_typed does not report the row count; ask.
        Ok(self.row(client, tenant).await?.is_none())
    }

    /// Every tenant that has a key, with the master recipient its key is wrapped to.
    pub async fn wrapped(&self, client: &Client) -> Result<Vec<(String, String)>> {
        let sql = format!("SELECT tenant, wrapped_to FROM {} ORDER BY tenant", self.table.quoted());
        match client.query_typed(&sql, &[]).await {
            Ok(rows) => Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {}", self.table, describe_pg_error(&e))),
        }
    }

    /// Tenants that have a key.
    pub async fn tenants(&self, client: &Client) -> Result<BTreeSet<String>> {
        let sql = format!("SELECT tenant FROM {}", self.table.quoted());
        match client.query_typed(&sql, &[]).await {
            Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(BTreeSet::new()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {}", self.table, describe_pg_error(&e))),
        }
    }

    /// Re-wraps every tenant key from `old` to `new`, in one transaction: all or nothing. Each
    /// re-wrapped key is in the bucket before the transaction commits; the copies wrapped to the
    /// old recipient are deleted after it did. Keys already wrapped to `new` (a run stopped after
    /// its commit) are left as they are, so running it again finishes the rotation. How many
    /// keys were re-wrapped.
    pub async fn rotate(
        &self,
        client: &Client,
        storage: &dyn Storage,
        old: &MasterIdentity,
        new: &MasterRecipient,
    ) -> Result<usize> {
        self.ensure(client).await?;
        client.batch_execute("BEGIN").await?;
        let result = async {
            let sql = format!(
                "SELECT tenant, wrapped_identity, wrapped_to FROM {} ORDER BY tenant FOR UPDATE",
                self.table.quoted()
            );
            let rows = client.query_typed(&sql, &[]).await?;
            let update = format!(
                "UPDATE {} SET wrapped_identity = $2, wrapped_to = $3 WHERE tenant = $1",
                self.table.quoted()
            );
            for row in &rows {
                let (tenant, wrapped, wrapped_to): (String, Vec<u8>, String) = (row.get(0), row.get(1), row.get(2));
                if wrapped_to == new.as_string() {
                    // Rotated by a run that was stopped after its commit.
                    continue;
                }
                let identity = unwrap(&wrapped, old).map_err(|_| KeyError::OtherMaster {
                    tenant: tenant.clone(),
                    wrapped_to,
                    ours: old.recipient().as_string(),
                })?;
                let rewrapped = age::encrypt(&new.0, identity.to_string().expose_secret().as_bytes())?;
                super::bucket::publish(storage, &tenant, &rewrapped, &new.as_string()).await?;
                client
                    .query_typed(
                        &update,
                        &[
                            (&tenant, Type::TEXT),
                            (&rewrapped, Type::BYTEA),
                            (&new.as_string(), Type::TEXT),
                        ],
                    )
                    .await?;
            }
            let rotated = rows.iter().filter(|r| r.get::<_, String>(2) != new.as_string()).count();
            let tenants: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            anyhow::Ok((rotated, tenants))
        }
        .await;
        match result {
            Ok((rotated, tenants)) => {
                client
                    .batch_execute("COMMIT")
                    .await
                    .context("committing the rotation")?;
                // Also after a run stopped between its commit and here: the old copies go.
                let old_recipient = old.recipient().as_string();
                for tenant in tenants.iter().filter(|_| old_recipient != new.as_string()) {
                    let key = super::bucket::key_of(tenant, &old_recipient);
                    match storage.delete(&key).await {
                        Ok(()) | Err(StorageError::NotFound(_)) => {}
                        Err(e) => tracing::warn!("{key}: the copy wrapped to the old master recipient is still in the bucket ({e}): delete it by hand"),
                    }
                }
                Ok(rotated)
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e.context("nothing was rotated"))
            }
        }
    }
}

pub(super) fn unwrap(wrapped: &[u8], master: &MasterIdentity) -> Result<age::x25519::Identity> {
    let plain = age::decrypt(&master.0, wrapped)?;
    let text = String::from_utf8(plain).context("a damaged tenant key")?;
    let id = age::x25519::Identity::from_str(text.trim()).map_err(|e| anyhow::anyhow!("a damaged tenant key: {e}"))?;
    Ok(id)
}
