//! Everything a command needs, resolved once from flags, environment and `.env`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_postgres::Client;

use crate::app::alerts::{RunLog, SharedRunLog};
use crate::app::output::Output;
use crate::app::progress::Progress;
use crate::backup::env::{choose_tools, BackupEnv, DumpRequest, Seal};
use crate::backup::format::DumpFormat;
use crate::cli::Cli;
use crate::clock::{Clock, SystemClock};
use crate::crypto::keys::KeyStore;
use crate::crypto::KeyConfig;
use crate::pg::catalog::Catalog;
use crate::pg::target::DbTarget;
use crate::progress::Shown;
use crate::storage::{self, Storage, StorageOptions};
use crate::usage;

pub struct Context {
    pub db: DbTarget,
    /// Session-mode target for pg_dump, psql and advisory locks.
    pub dump: DbTarget,
    pub catalog: Catalog,
    pub storage: Arc<dyn Storage>,
    pub output: Output,
    pub clock: Arc<dyn Clock>,
    pub pg_dump: Option<PathBuf>,
    /// Encryption and signing, as configured.
    pub keys: KeyConfig,
    pub key_store: KeyStore,
    /// What the command did, for alerts: filled in as tenants finish.
    pub run_log: SharedRunLog,
}

impl Context {
    pub fn from_cli(cli: &Cli) -> Result<Self> {
        let raw = cli
            .db
            .database_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                usage!("--database-url or DATABASE_URL must be set (in the environment or in a .env file)")
            })?;
        let db = DbTarget::parse(raw, "--database-url / DATABASE_URL")?;
        let dump = match cli.db.dump_url.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(url) => DbTarget::parse(url, "--dump-url / BACKUP_DUMP_URL")?,
            None if db.is_transaction_pooler() => {
                let session = db.session_mode()?;
                tracing::info!(
                    "DATABASE_URL is a transaction pooler (port 6543); pg_dump, psql and locks use session mode instead ({}). Set BACKUP_DUMP_URL to choose another URL.",
                    session.redacted()
                );
                session
            }
            None => db.clone(),
        };
        let catalog = Catalog::new(&cli.db.tenants_table, &cli.db.records_table, &cli.db.users_table)?;
        let storage_url = cli.storage.storage.clone().unwrap_or_else(storage::default_url);
        let storage = storage::open(
            &storage_url,
            &StorageOptions {
                retries: cli.storage.storage_retries,
                timeouts: storage::Timeouts {
                    connect: Duration::from_secs(cli.storage.storage_connect_timeout),
                    idle: Duration::from_secs(cli.storage.storage_idle_timeout),
                },
            },
        )?;
        Ok(Context {
            db,
            dump,
            catalog,
            storage,
            output: Output::from_args(&cli.output),
            clock: Arc::new(SystemClock),
            pg_dump: cli.db.pg_dump.clone(),
            run_log: Default::default(),
            keys: KeyConfig::new(
                cli.keys.age_recipient.as_deref(),
                std::env::var("BACKUP_AGE_IDENTITY").ok().as_deref(),
                cli.keys.identity.as_deref(),
                std::env::var("BACKUP_SIGNING_KEY").ok().as_deref(),
            )?,
            key_store: KeyStore::new(&cli.keys.keys_table)?,
        })
    }

    /// What a run of backups shares, with the format and tools settled against the server.
    pub async fn backup_env(&self, client: &Client, req: &DumpRequest) -> Result<BackupEnv> {
        let tools = choose_tools(client, req, self.pg_dump.as_deref(), &self.catalog).await?;
        Ok(BackupEnv {
            storage: self.storage.clone(),
            catalog: self.catalog.clone(),
            dump_target: self.dump.clone(),
            inserts: req.inserts && tools.format == DumpFormat::Plain,
            compression: req.compression_for(tools.format)?,
            format: tools.format,
            pg_dump: tools.pg_dump,
            server_version: tools.server_version,
            clock: self.clock.clone(),
            spool_dir: std::env::temp_dir(),
            seal: self.keys.recipient.clone().map(|master| Seal {
                master,
                store: self.key_store.clone(),
            }),
            signing_key: self.keys.signing_key.clone(),
            guard_names: Default::default(),
        })
    }

    /// Where one tenant's work is shown (bars, lines or nothing, as the output asks).
    pub fn shown(&self, tenant: &str) -> Shown {
        Shown::new(Arc::new(Progress::new(self.output.progress)), tenant)
    }

    /// Notes how one tenant went, for alerts.
    pub fn note(&self, tenant: &str, failure: Option<String>) {
        if let Ok(mut log) = self.run_log.lock() {
            match failure {
                Some(reason) => log.failed.push((tenant.to_string(), reason)),
                None => log.done.push(tenant.to_string()),
            }
        }
    }

    /// Notes a tenant `status` found overdue.
    pub fn note_overdue(&self, tenant: &str) {
        if let Ok(mut log) = self.run_log.lock() {
            log.overdue.push(tenant.to_string());
        }
    }

    pub fn take_run_log(&self) -> RunLog {
        self.run_log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// Passwords that must never reach an alert body.
    pub fn secrets(&self) -> Vec<String> {
        [self.db.password(), self.dump.password()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The application connection (may be a pooler: only unnamed statements go through it).
    pub async fn connect(&self) -> Result<Client> {
        self.db.connect().await
    }

    /// A session connection (never a transaction pooler) for locks and for writing records.
    pub async fn connect_session(&self) -> Result<Client> {
        self.dump.connect().await
    }
}
