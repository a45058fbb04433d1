//! `run-scheduled`: one cron tick.

use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::app::progress::Progress;
use crate::backup::runner::{run_backups, LockPolicy, TenantResult, TenantStatus};
use crate::backup::BackupRequest;
use crate::cli::RunScheduledArgs;
use crate::cmd::Outcome;
use crate::pg::catalog::BackupKind;
use crate::policy::schedule::{is_due, Decision, ScheduleOptions};
use crate::{out, outln};

#[derive(Serialize)]
struct Summary<'a> {
    due: usize,
    backed_up: usize,
    failed: usize,
    skipped: usize,
    tenants: &'a [TenantResult],
}

#[derive(Serialize)]
struct Plan<'a> {
    tenant: &'a str,
    schedule: &'a str,
    #[serde(flatten)]
    decision: &'a Decision,
}

pub async fn run(args: RunScheduledArgs, ctx: &Context) -> Result<Outcome> {
    let opts = ScheduleOptions::parse(args.when.daily_at.as_deref(), args.when.timezone.as_deref())?;
    let request = args.dump.request();
    request.check()?;
    let client = ctx.connect().await?;
    // One query for every tenant: a tick with nothing due costs a connection and this.
    let tenants = ctx.catalog.tenants(&client).await?;
    let now = ctx.clock.now();
    let decisions: Vec<(_, Decision)> = tenants
        .into_iter()
        .map(|t| {
            let d = is_due(&t, now, &opts);
            (t, d)
        })
        .collect();

    if args.dry_run {
        if ctx.output.json {
            let plan: Vec<Plan> = decisions
                .iter()
                .map(|(t, d)| Plan {
                    tenant: &t.schema_name,
                    schedule: t.backup_schedule.as_db(),
                    decision: d,
                })
                .collect();
            ctx.output.json(&plan)?;
        } else {
            let rows: Vec<Vec<String>> = decisions
                .iter()
                .map(|(t, d)| {
                    let due = if d.is_due() { "due" } else { "-" };
                    vec![
                        t.schema_name.clone(),
                        t.backup_schedule.to_string(),
                        due.into(),
                        d.reason().into(),
                    ]
                })
                .collect();
            out!("{}", table(&["tenant", "schedule", "due", "why"], &rows))?;
        }
        return Ok(Outcome::Done);
    }

    let jobs: Vec<BackupRequest> = decisions
        .into_iter()
        .filter(|(_, d)| d.is_due())
        .map(|(tenant, _)| BackupRequest {
            tenant,
            kind: BackupKind::Automatic,
            created_by_id: None,
            max_size: args.dump.max_size,
            finish_schedule: false,
            progress: None,
        })
        .collect();
    let due = jobs.len();
    let results = if jobs.is_empty() {
        Vec::new()
    } else {
        let env = Arc::new(ctx.backup_env(&client, &request).await?);
        drop(client);
        ctx.prove_storage(crate::storage::Access::Read).await?;
        let progress = Progress::new(ctx.output.progress);
        run_backups(
            &env,
            &ctx.dump,
            jobs,
            args.concurrency as usize,
            LockPolicy::SkipIfBusy(opts),
            &progress,
        )
        .await
    };
    for r in &results {
        ctx.note(&r.tenant, r.failure());
    }
    let count = |f: fn(&TenantStatus) -> bool| results.iter().filter(|r| f(&r.status)).count();
    let summary = Summary {
        due,
        backed_up: count(|s| matches!(s, TenantStatus::BackedUp { .. })),
        failed: count(|s| matches!(s, TenantStatus::Failed { .. })),
        skipped: count(|s| matches!(s, TenantStatus::Skipped { .. })),
        tenants: &results,
    };
    if ctx.output.json {
        ctx.output.json(&summary)?;
    } else {
        for r in &results {
            match &r.status {
                TenantStatus::BackedUp { backup: b } => outln!(
                    "{}: backed up as {} ({}, id {}, {:.2} s)",
                    r.tenant,
                    b.key,
                    human_size(b.size),
                    b.id,
                    b.duration.as_secs_f64()
                )?,
                TenantStatus::Skipped { reason } => outln!("{}: skipped, {reason}", r.tenant)?,
                TenantStatus::Failed { error } => outln!("{}: FAILED, {error:#}", r.tenant)?,
            }
        }
        outln!(
            "{} due, {} backed up, {} failed, {} skipped",
            summary.due,
            summary.backed_up,
            summary.failed,
            summary.skipped
        )?;
    }
    Ok(Outcome::from_failures(summary.failed))
}
