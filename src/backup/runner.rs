//! Runs backups of many tenants with bounded concurrency, each on its own session connection that
//! holds the tenant's advisory lock. One tenant's failure never stops the others.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::stream::{self, StreamExt};
use serde::Serialize;

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
    stream::iter(jobs)
        .map(|job| async move {
            let tenant = job.tenant.schema_name.clone();
            let status = match run_one(env, session, job, policy, progress).await {
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
        .collect()
        .await
}

async fn run_one(
    env: &BackupEnv,
    session: &DbTarget,
    mut job: BackupRequest,
    policy: LockPolicy,
    progress: &dyn ProgressSink,
) -> Result<TenantStatus> {
    let schema = job.tenant.schema_name.clone();
    let client = session.connect().await?;
    match policy {
        LockPolicy::Wait(timeout) => lock::lock_with_timeout(&client, &schema, timeout).await?,
        LockPolicy::SkipIfBusy(opts) => {
            if !lock::try_lock(&client, &schema).await? {
                return Ok(TenantStatus::Skipped {
                    reason: "another worker holds its lock".into(),
                });
            }
            // Re-read under the lock: a worker that finished a moment ago has updated the row.
            let fresh = env
                .catalog
                .tenant(&client, &schema)
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
    let outcome = back_up_tenant(env, &client, &job).await;
    drop(tracker);
    Ok(TenantStatus::BackedUp { backup: outcome? })
}
