//! `cleanup --days N | --orphans [--fix] | --pre-restore-days N`

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::cleanup::{Cleanup, Report};
use crate::cli::CleanupArgs;
use crate::cmd::Outcome;
use crate::pg::catalog::BackupRecord;
use crate::pg::lock;
use crate::policy::retention::{parse_days, Action, Policy};
use crate::storage::ObjectInfo;

pub async fn run(args: CleanupArgs, ctx: &Context) -> Result<Outcome> {
    let days = args.days.as_deref().map(|d| parse_days(d, "--days")).transpose()?;
    let pre_days = args
        .pre_restore_days
        .as_deref()
        .map(|d| parse_days(d, "--pre-restore-days"))
        .transpose()?;
    let client = ctx.connect().await?;
    let tenants = match &args.tenant {
        Some(t) => ctx.catalog.named_tenants(&client, std::slice::from_ref(t)).await?,
        None => ctx.catalog.tenants(&client).await?,
    };
    drop(client);
    let session = ctx.connect_session().await?;
    let now = ctx.clock.now();
    let timeout = Duration::from_secs(args.lock_timeout);
    let mut report = Report {
        dry_run: args.dry_run,
        ..Default::default()
    };

    let run = Cleanup {
        storage: ctx.storage.as_ref(),
        catalog: &ctx.catalog,
        client: &session,
        now,
        dry_run: args.dry_run,
    };
    // A dry run over many tenants reads every history in a few statements and the bucket in one
    // listing. A real run reads each tenant's under its lock, as it must.
    let batch = args.dry_run && tenants.len() > 1 && (days.is_some() || args.orphans);
    let mut histories: BTreeMap<String, Result<Vec<BackupRecord>>> = BTreeMap::new();
    let mut listing: BTreeMap<String, Vec<ObjectInfo>> = BTreeMap::new();
    if batch {
        let schemas: Vec<String> = tenants.iter().map(|t| t.schema_name.clone()).collect();
        let read = ctx.catalog.histories(&session, &schemas, false).await?;
        histories = schemas.into_iter().zip(read).collect();
        if args.orphans {
            for o in ctx.storage.list("").await? {
                if let Some((prefix, _)) = o.key.split_once('/') {
                    listing.entry(prefix.to_string()).or_default().push(o);
                }
            }
        }
    }
    for tenant in &tenants {
        let schema = &tenant.schema_name;
        if batch {
            let records = match histories.remove(schema) {
                Some(r) => r?,
                None => Vec::new(),
            };
            if let Some(days) = days {
                let policy = Policy {
                    days,
                    keep_last: args.keep_last,
                    include_manual: args.include_manual,
                };
                run.expire_from(schema, &records, &policy, &mut report).await?;
            }
            if args.orphans {
                let objects = listing.remove(schema).unwrap_or_default();
                run.orphans_from(schema, &records, objects, false, &mut report).await?;
            }
            continue;
        }
        if !args.dry_run {
            if let Err(e) = lock::lock_with_timeout(&session, schema, timeout).await {
                tracing::error!("{e:#}");
                report.failed += 1;
                continue;
            }
        }
        if let Some(days) = days {
            let policy = Policy {
                days,
                keep_last: args.keep_last,
                include_manual: args.include_manual,
            };
            run.expire(schema, &policy, &mut report).await?;
        }
        if args.orphans {
            run.orphans(schema, args.fix, &mut report).await?;
        }
        if !args.dry_run {
            lock::unlock(&session, schema).await?;
        }
    }
    if let Some(days) = pre_days {
        run.pre_restore(&tenants, days, timeout, &mut report).await?;
    }
    print(ctx, &report)?;
    Ok(Outcome::from_failures(report.failed))
}

fn print(ctx: &Context, report: &Report) -> Result<()> {
    if ctx.output.json {
        ctx.output.json(report)?;
        return Ok(());
    }
    let verb = if report.dry_run { "would delete" } else { "delete" };
    let rows: Vec<Vec<String>> = report
        .backups
        .iter()
        .filter(|b| b.action == Action::Delete)
        .map(|b| {
            vec![
                b.tenant.clone(),
                b.id.to_string(),
                b.key.clone(),
                human_size(b.size.max(0) as u64),
                b.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                b.result.clone().unwrap_or_else(|| verb.to_string()),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print!(
            "{}",
            table(&["tenant", "id", "key", "size", "created_at", "result"], &rows)
        );
    }
    let mut kept: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for b in report.backups.iter().filter(|b| b.action == Action::Keep) {
        *kept.entry((b.tenant.as_str(), b.reason.as_str())).or_default() += 1;
    }
    for ((tenant, reason), n) in kept {
        println!("{tenant}: keeping {n}: {reason}");
    }
    for o in &report.orphans {
        let row = o.row_id.map(|i| format!(" (row {i})")).unwrap_or_default();
        println!("{}: {} {}{row}: {}", o.tenant, o.kind, o.key, o.result);
    }
    for s in &report.pre_restore_schemas {
        println!(
            "{}: {} ({}): {}",
            s.tenant,
            s.schema,
            s.created_at.format("%Y-%m-%d %H:%M UTC"),
            s.result
        );
    }
    let done = if report.dry_run { "would delete" } else { "deleted" };
    println!(
        "{done} {} backups ({}), kept {}, {} failed",
        report.deleted,
        human_size(report.bytes_freed),
        report.kept,
        report.failed
    );
    Ok(())
}
