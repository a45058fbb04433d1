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
use crate::clock::{Clock, SystemClock};
use crate::crypto::keys::KeyStore;
use crate::crypto::KeyConfig;
use crate::pg::catalog::Catalog;
use crate::pg::target::DbTarget;
use crate::progress::Shown;
use crate::storage::{self, Access, Storage, StorageError, StorageOptions};
use crate::usage;

pub struct Context {
    pub db: DbTarget,
    /// Why no database target could be made (doctor only: every other command stops there).
    pub db_problem: Option<String>,
    /// Session-mode target for pg_dump, psql and advisory locks.
    pub dump: DbTarget,
    pub catalog: Catalog,
    pub storage: Arc<dyn Storage>,
    /// Whether the storage was named (`--storage`, `BACKUP_STORAGE`, `SUPABASE_URL`) rather than
    /// the readers' default `./backups`.
    pub storage_configured: bool,
    /// The storage's directory, when it is a local one.
    pub local_root: Option<PathBuf>,
    pub output: Output,
    pub clock: Arc<dyn Clock>,
    pub pg_dump: Option<PathBuf>,
    /// Encryption and signing, as configured.
    pub keys: KeyConfig,
    pub key_store: KeyStore,
    /// What the command did, for alerts: filled in as tenants finish.
    pub run_log: SharedRunLog,
}

/// What a command is configured with, as the command line (flags, environment, `.env`) gave it:
/// `cli` makes it (`Cli::settings`), so this room never needs clap.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub database_url: Option<String>,
    pub dump_url: Option<String>,
    pub tenants_table: String,
    pub records_table: String,
    pub users_table: String,
    pub pg_dump: Option<PathBuf>,
    pub storage: Option<String>,
    pub storage_retries: u32,
    /// Seconds a storage connection may take, and a request may go without a byte moving.
    pub storage_connect_timeout: u64,
    pub storage_idle_timeout: u64,
    pub output: Output,
    pub age_recipient: Option<String>,
    pub identity: Option<PathBuf>,
    pub keys_table: String,
    /// The command's name when it stores or deletes (backup, run-scheduled, cleanup): it refuses
    /// to run without a configured storage.
    pub stores: Option<&'static str>,
    /// doctor: a database target that cannot be made is one failed check, not the end.
    pub reports_setup: bool,
}

impl Context {
    pub fn new(settings: &Settings) -> Result<Self> {
        let (db, dump, db_problem) = match targets(settings) {
            Ok((db, dump)) => (db, dump, None),
            // doctor reports the rest of the setup even so.
            Err(e) if settings.reports_setup => {
                let none = DbTarget::parse("postgres://unconfigured@localhost/unconfigured", "none")?;
                (none.clone(), none, Some(format!("{e:#}")))
            }
            Err(e) => return Err(e),
        };
        let catalog = Catalog::new(&settings.tenants_table, &settings.records_table, &settings.users_table)?;
        let stores = settings.stores;
        let configured = settings.storage.clone().or_else(storage::configured_default);
        let storage_configured = configured.is_some();
        let storage_url = match (configured, stores) {
            (Some(url), _) => url,
            (None, Some(command)) => {
                return Err(usage!(
                    "{command} needs to be told where backups live: set --storage or BACKUP_STORAGE to a directory that exists, s3://bucket/prefix or supabase://bucket/prefix. There is no default: a default folder on a machine whose disk is thrown away (a cron container) would lose every backup while reporting success"
                ))
            }
            (None, None) => storage::READ_DEFAULT.to_string(),
        };
        let storage = storage::open(
            &storage_url,
            &StorageOptions {
                retries: settings.storage_retries,
                timeouts: storage::Timeouts {
                    connect: Duration::from_secs(settings.storage_connect_timeout),
                    idle: Duration::from_secs(settings.storage_idle_timeout),
                },
            },
        )?;
        Ok(Context {
            db,
            dump,
            catalog,
            storage,
            db_problem,
            storage_configured,
            local_root: storage::local_root(&storage_url),
            output: settings.output,
            clock: Arc::new(SystemClock),
            pg_dump: settings.pg_dump.clone(),
            run_log: Default::default(),
            keys: KeyConfig::new(
                settings.age_recipient.as_deref(),
                std::env::var("BACKUP_AGE_IDENTITY").ok().as_deref(),
                settings.identity.as_deref(),
                std::env::var("BACKUP_SIGNING_KEY").ok().as_deref(),
            )?,
            key_store: KeyStore::new(&settings.keys_table)?,
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
            passed_shapes: Default::default(),
            prefetch: Default::default(),
        })
    }

    /// What the restore engine works with (restore and verify).
    pub fn restore_parts(&self) -> crate::restore::engine::Parts<'_> {
        crate::restore::engine::Parts {
            session: &self.dump,
            catalog: &self.catalog,
            storage: self.storage.as_ref(),
            clock: self.clock.as_ref(),
            pg_dump: self.pg_dump.as_deref(),
            keys: &self.keys,
            key_store: &self.key_store,
            progress: Arc::new(Progress::new(self.output.progress)),
        }
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

    /// Proves the storage before any work that stores or deletes: a local directory exists (it is
    /// never created: a mistyped path or an unmounted volume would silently take the backups) and
    /// can be written; the bucket can be reached and these credentials can list it (and delete,
    /// for [`Access::Delete`]). A failure is one line and exit 2, before the first dump.
    pub async fn prove_storage(&self, access: Access) -> Result<()> {
        let shown = self.storage.describe();
        if let Some(root) = &self.local_root {
            if !root.is_dir() {
                let what = if root.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                };
                return Err(usage!(
                    "the storage directory {} {what}: create it (mkdir -p {}) or fix --storage / BACKUP_STORAGE (is the volume mounted?); tenant-backup never creates it. Nothing was done",
                    root.display(),
                    root.display()
                ));
            }
        }
        match self.storage.probe(access).await {
            Ok(()) => {}
            Err(StorageError::Refused(why)) => return Err(usage!("{why}. Nothing was done")),
            Err(e) => return Err(usage!("the storage {shown} cannot be used: {e}. Nothing was done")),
        }
        if let Some(root) = &self.local_root {
            tempfile::Builder::new()
                .prefix(".tenant-backup-probe-")
                .tempfile_in(root)
                .map_err(|e| {
                    usage!(
                        "the storage directory {} cannot be written ({e}): fix its permissions or --storage / BACKUP_STORAGE. Nothing was done",
                        root.display()
                    )
                })?;
        }
        Ok(())
    }

    /// A session connection (never a transaction pooler) for locks and for writing records.
    pub async fn connect_session(&self) -> Result<Client> {
        self.dump.connect().await
    }
}

/// The database targets: the application's, and the session-mode one for pg_dump, psql and locks.
fn targets(settings: &Settings) -> Result<(DbTarget, DbTarget)> {
    let raw = settings
        .database_url
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| usage!("--database-url or DATABASE_URL must be set (in the environment or in a .env file)"))?;
    let db = DbTarget::parse(raw, "--database-url / DATABASE_URL")?;
    let dump = match settings.dump_url.as_deref().filter(|s| !s.trim().is_empty()) {
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
    Ok((db, dump))
}
