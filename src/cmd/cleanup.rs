//! `cleanup --days N | --orphans [--fix] | --pre-restore-days N`

use std::time::Duration;

use anyhow::Result;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::cleanup::{Cleanup, OrphanOptions, Report};
use crate::cli::CleanupArgs;
use crate::cmd::Outcome;
use crate::pg::lock;
use crate::policy::retention::{Action, Policy};
use crate::storage::Access;
use crate::usage;
use crate::{out, outln};

pub async fn run(args: CleanupArgs, ctx: &Context) -> Result<Outcome> {
    let (days, pre_days) = (args.days, args.pre_restore_days);
    if args.include_manual && days.is_none() && !args.orphans {
        return Err(usage!(
            "--include-manual goes with --days N or --orphans: it lets them delete manual backups too"
        ));
    }
    let client = ctx.connect().await?;
    let mut report = Report {
        dry_run: args.dry_run,
        ..Default::default()
    };
    let tenants = match &args.tenant {
        Some(t) => vec![ctx.catalog.tenant(&client, t).await?],
        None => {
            let (tenants, rejected) = ctx.catalog.tenants_checked(&client).await?;
            report.failed += rejected.len();
            tenants
        }
    };
    let listed = ctx.catalog.listed_schemas(&client).await?;
    // Nothing is called missing, and nothing deleted, before the storage has shown it can see
    // the bucket (and, to delete, that its key is meant to).
    let touches_storage = days.is_some() || args.orphans;
    // A dry run reads every tenant's history in a few statements; a real run reads each one
    // under that tenant's lock, as it is when it is cleaned.
    let mut prefetched = match args.dry_run && touches_storage {
        true => {
            let schemas: Vec<String> = tenants.iter().map(|t| t.schema_name.clone()).collect();
            Some(ctx.catalog.histories(&client, &schemas, false).await?.into_iter())
        }
        false => None,
    };
    drop(client);

    if touches_storage {
        let access = if days.is_some() || args.fix {
            Access::Delete
        } else {
            Access::Read
        };
        ctx.prove_storage(access).await?;
    }

    let session = ctx.connect_session().await?;
    let timeout = Duration::from_secs(args.lock_timeout);
    let run = Cleanup {
        storage: ctx.storage.as_ref(),
        catalog: &ctx.catalog,
        client: &session,
        now: ctx.clock.now(),
        dry_run: args.dry_run,
    };
    let orphan_opts = OrphanOptions {
        fix: args.fix,
        include_manual: args.include_manual,
        grace: chrono::Duration::hours(args.grace_hours as i64),
    };
    for tenant in tenants.iter().filter(|_| touches_storage) {
        let schema = &tenant.schema_name;
        if !args.dry_run {
            if let Err(e) = lock::lock_with_timeout(&session, schema, timeout).await {
                tracing::error!("{e:#}");
                report.failed += 1;
                continue;
            }
        }
        // One tenant that cannot be cleaned (no history table, no privileges) is reported, and
        // the others are still cleaned.
        let read = prefetched.as_mut().map(|p| p.next().expect("one history per tenant"));
        let cleaned = async {
            let mut expired = Vec::new();
            let mut records = match read {
                Some(read) => read?,
                None => ctx.catalog.records(&session, schema).await?,
            };
            if let Some(days) = days {
                let policy = Policy {
                    days,
                    keep_last: args.keep_last,
                    include_manual: args.include_manual,
                };
                let went = run.expire(schema, &records, &policy, &mut report).await?;
                if args.dry_run {
                    // What expiring would leave, for the orphans to be found in.
                    records.retain(|r| !went.iter().any(|w| w.id == r.id));
                    expired = went;
                } else {
                    // What expiring left.
                    records = ctx.catalog.records(&session, schema).await?;
                }
            }
            if args.orphans {
                run.orphans(schema, &records, &expired, &orphan_opts, &mut report)
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = cleaned {
            tracing::error!("cleaning up tenant {schema}: {e:#}");
            report.failed += 1;
        }
        if !args.dry_run {
            lock::unlock(&session, schema).await?;
        }
    }
    if args.orphans {
        run.restore_leftovers(&tenants, &listed, args.fix, &mut report).await?;
    }
    if let Some(days) = pre_days {
        run.pre_restore(&tenants, &listed, days, timeout, &mut report).await?;
    }
    for (tenant, result) in report.failures() {
        ctx.note(tenant, Some(result.to_string()));
    }
    print(ctx, &report, &args)?;
    Ok(Outcome::from_failures(report.failed))
}

/// `1 backup`, `2 backups`.
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn print(ctx: &Context, report: &Report, args: &CleanupArgs) -> Result<()> {
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
        out!(
            "{}",
            table(&["tenant", "id", "key", "size", "created_at", "result"], &rows)
        )?;
    }
    for b in report.backups.iter().filter(|b| b.action == Action::Refuse) {
        outln!(
            "{}: row {} ({}): {}",
            b.tenant,
            b.id,
            b.key,
            b.result.as_deref().unwrap_or("")
        )?;
    }
    let mut kept: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for b in report.backups.iter().filter(|b| b.action == Action::Keep) {
        *kept.entry((b.tenant.as_str(), b.reason.as_str())).or_default() += 1;
    }
    for ((tenant, reason), n) in kept {
        outln!("{tenant}: keeping {n}: {reason}")?;
    }
    for o in &report.orphans {
        let row = o.row_id.map(|i| format!(" (row {i})")).unwrap_or_default();
        outln!("{}: {} {}{row}: {}", o.tenant, o.kind, o.key, o.result)?;
    }
    for s in &report.restore_leftovers {
        outln!("{}: staging schema {}: {}", s.tenant, s.schema, s.result)?;
    }
    for s in &report.pre_restore_schemas {
        outln!(
            "{}: {} ({}): {}",
            s.tenant,
            s.schema,
            s.created_at.format("%Y-%m-%d %H:%M UTC"),
            s.result
        )?;
    }
    let done = if report.dry_run { "would delete" } else { "deleted" };
    if args.days.is_some() || !args.orphans {
        outln!(
            "{done} {} ({}), kept {}, {} failed",
            counted(report.deleted, "backup"),
            human_size(report.bytes_freed),
            report.kept,
            report.failed
        )?;
    }
    if args.orphans {
        let deletable = report.orphans.iter().filter(|o| o.action == Action::Delete).count();
        if args.fix {
            let rows = report.orphan_rows_deleted;
            outln!(
                "{done} {} of {} found ({} and {}), {} failed",
                counted(report.orphans_deleted, "orphan"),
                report.orphans.len(),
                counted(report.orphans_deleted.saturating_sub(rows), "object"),
                counted(rows, "row"),
                report.failed
            )?;
        } else {
            outln!(
                "found {}; --fix would delete {deletable} (run `tenant-backup cleanup --orphans --fix`), {} failed",
                counted(report.orphans.len(), "orphan"),
                report.failed
            )?;
        }
    }
    Ok(())
}
