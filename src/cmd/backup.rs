//! `backup --tenant S … | --all`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::app::progress::Progress;
use crate::backup::runner::{run_backups, LockPolicy, TenantResult, TenantStatus};
use crate::backup::BackupRequest;
use crate::cli::BackupArgs;
use crate::cmd::Outcome;
use crate::out;
use crate::pg::catalog::BackupKind;
use crate::storage::Access;

pub async fn run(args: BackupArgs, ctx: &Context) -> Result<Outcome> {
    let request = args.dump.request();
    request.check()?;
    let client = ctx.connect().await?;

    // Everything a user can get wrong is checked before the first dump starts.
    let tenants = if args.all {
        ctx.catalog.tenants(&client).await?
    } else {
        ctx.catalog.named_tenants(&client, &args.tenants).await?
    };
    let kind = BackupKind::from(args.backup_type);
    let mut jobs = Vec::new();
    for tenant in tenants {
        let created_by_id = match &args.created_by {
            Some(who) => Some(ctx.catalog.resolve_user(&client, &tenant.schema_name, who).await?),
            None => None,
        };
        jobs.push(BackupRequest {
            tenant,
            kind,
            created_by_id,
            max_size: args.dump.max_size,
            finish_schedule: false,
            progress: None,
        });
    }
    if jobs.is_empty() {
        tracing::warn!("no tenants in {}: nothing to back up", ctx.catalog.tenants_table);
        return Ok(Outcome::Done);
    }
    let env = Arc::new(ctx.backup_env(&client, &request).await?);
    drop(client);
    ctx.prove_storage(Access::Read).await?;

    let policy = LockPolicy::Wait(Duration::from_secs(args.lock_timeout));
    let progress = Progress::new(ctx.output.progress);
    let results = run_backups(&env, &ctx.dump, jobs, args.concurrency as usize, policy, &progress).await;
    for r in &results {
        ctx.note(&r.tenant, r.failure());
    }
    report(ctx, &results)?;
    Ok(Outcome::from_failures(results.iter().filter(|r| r.failed()).count()))
}

fn report(ctx: &Context, results: &[TenantResult]) -> Result<()> {
    if ctx.output.json {
        ctx.output.json(&results)?;
        return Ok(());
    }
    let mut rows = Vec::new();
    for r in results {
        match &r.status {
            TenantStatus::BackedUp { backup: o } => rows.push(vec![
                r.tenant.clone(),
                o.id.to_string(),
                o.key.clone(),
                human_size(o.size),
                o.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                format!("{:.2} s", o.duration.as_secs_f64()),
            ]),
            _ => rows.push(vec![
                r.tenant.clone(),
                "-".into(),
                "FAILED (see above)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    out!("{}", table(&["tenant", "id", "key", "size", "date", "duration"], &rows))?;
    let failed = results.iter().filter(|r| r.failed()).count();
    if results.len() > 1 || failed > 0 {
        eprintln!("{} backed up, {failed} failed", results.len() - failed);
    }
    Ok(())
}
