//! Runs backups of many tenants with bounded concurrency. Each worker keeps one session connection
//! for the whole run (a connection costs more than a small tenant's dump: authentication, a new
//! server process, its cold catalog caches) and holds each tenant's advisory lock on it while that
//! tenant is backed up, releasing it before the next. One tenant's failure never stops the others;
//! a connection that failed is dropped, which releases whatever it held, and the next tenant gets a
//! new one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::{back_up_tenant, BackupEnv, BackupOutcome, BackupRequest};
use crate::pg::catalog::Schedule;
use crate::pg::lock;
use crate::pg::target::DbTarget;
use crate::policy::schedule::{is_due, ScheduleOptions};
use crate::progress::{human_size, ProgressSink};

/// What to do when another process holds a tenant's lock.
#[derive(Clone, Copy, Debug)]
pub enum LockPolicy {
    /// Manual backups: wait this long, then fail saying who holds it.
    Wait(Duration),
    /// Cron ticks: skip the tenant, and after taking the lock check it is still due (another
    /// worker may have just backed it up).
    SkipIfBusy(ScheduleOptions),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TenantStatus {
    BackedUp {
        backup: BackupOutcome,
    },
    Skipped {
        reason: String,
    },
    Failed {
        #[serde(serialize_with = "error_chain")]
        error: anyhow::Error,
    },
}

fn error_chain<S: serde::Serializer>(e: &anyhow::Error, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{e:#}"))
}

#[derive(Debug, Serialize)]
pub struct TenantResult {
    pub tenant: String,
    #[serde(flatten)]
    pub status: TenantStatus,
}

impl TenantResult {
    pub fn failed(&self) -> bool {
        matches!(self.status, TenantStatus::Failed { .. })
    }

    /// The error, when the tenant failed.
    pub fn failure(&self) -> Option<String> {
        match &self.status {
            TenantStatus::Failed { error } => Some(format!("{error:#}")),
            _ => None,
        }
    }
}

pub async fn run_backups(
    env: &Arc<BackupEnv>,
    session: &DbTarget,
    jobs: Vec<BackupRequest>,
    concurrency: usize,
    policy: LockPolicy,
    progress: &dyn ProgressSink,
) -> Vec<TenantResult> {
    let prefetching = env.pg_dump.is_none() && jobs.len() > 1;
    if prefetching {
        env.prefetch.plan(
            jobs.iter().map(|j| j.tenant.schema_name.clone()).collect(),
            Some(session.clone()),
        );
    }
    let idle = Connections {
        prepare_fingerprint: prefetching,
        ..Default::default()
    };
    let idle = &idle;
    let results = stream::iter(jobs)
        .map(|job| async move {
            let tenant = job.tenant.schema_name.clone();
            let status = match idle.take(session).await {
                Ok(client) => {
                    let result = run_one(env, &client, job, policy, progress).await;
                    idle.give_back(client, result.is_ok()).await;
                    result
                }
                Err(e) => Err(e),
            };
            let status = match status {
                Ok(status) => status,
                Err(error) => TenantStatus::Failed {
                    error: error.context(format!("backing up tenant {tenant}")),
                },
            };
            match &status {
                TenantStatus::BackedUp { backup: o } => {
                    tracing::info!("{tenant}: backup {} stored as {} ({})", o.id, o.key, human_size(o.size))
                }
                TenantStatus::Skipped { reason } => tracing::info!("{tenant}: skipped, {reason}"),
                TenantStatus::Failed { error } => tracing::error!("{error:#}"),
            }
            TenantResult { tenant, status }
        })
        // In the order asked (tenant order), however many run at once.
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    env.prefetch.finish();
    results
}

/// The run's session connections between tenants.
#[derive(Default)]
struct Connections {
    idle: Mutex<Vec<Client>>,
    /// Each new connection prepares the catalog fingerprint its dumps check (see
    /// [`crate::backup::prefetch`]).
    prepare_fingerprint: bool,
}

impl Connections {
    async fn take(&self, session: &DbTarget) -> Result<Client> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => {
                let client = session.connect().await?;
                if self.prepare_fingerprint {
                    crate::jsonl::prepare_fingerprint(&client)
                        .await
                        .context("preparing the catalog fingerprint")?;
                }
                Ok(client)
            }
        }
    }

    /// Keeps the connection for the next tenant once it holds nothing: no transaction, no lock.
    /// After a failure the connection is dropped instead, which releases everything for sure.
    async fn give_back(&self, client: Client, ok: bool) {
        if !ok || client.is_closed() {
            return;
        }
        if let Err(e) = client.batch_execute("SELECT pg_advisory_unlock_all()").await {
            tracing::debug!("dropping a connection that could not release its locks: {e}");
            return;
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(client);
    }
}

async fn run_one(
    env: &BackupEnv,
    client: &Client,
    mut job: BackupRequest,
    policy: LockPolicy,
    progress: &dyn ProgressSink,
) -> Result<TenantStatus> {
    let schema = job.tenant.schema_name.clone();
    match policy {
        LockPolicy::Wait(timeout) => lock::lock_with_timeout(client, &schema, timeout).await?,
        LockPolicy::SkipIfBusy(opts) => {
            if !lock::try_lock(client, &schema).await? {
                return Ok(TenantStatus::Skipped {
                    reason: "another worker holds its lock".into(),
                });
            }
            // Re-read under the lock: a worker that finished a moment ago has updated the row.
            let fresh = env
                .catalog
                .tenant(client, &schema)
                .await
                .context("re-reading the tenant row")?;
            let decision = is_due(&fresh, env.clock.now(), &opts);
            if !decision.is_due() {
                return Ok(TenantStatus::Skipped {
                    reason: format!("no longer due ({})", decision.reason()),
                });
            }
            job.finish_schedule = fresh.backup_schedule == Schedule::Scheduled;
            job.tenant = fresh;
        }
    }
    tracing::info!("{schema}: backup started");
    let tracker = progress.start(&schema, "dumped", None);
    job.progress = Some(tracker.counter());
    let outcome = back_up_tenant(env, client, &job).await;
    drop(tracker);
    Ok(TenantStatus::BackedUp { backup: outcome? })
}
