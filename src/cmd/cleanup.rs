//! `cleanup --days N | --orphans [--fix] | --pre-restore-days N`

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Duration as Days, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::backup::key::ObjectKey;
use crate::cli::CleanupArgs;
use crate::cmd::Outcome;
use crate::pg::catalog::Tenant;
use crate::pg::lock;
use crate::pg::sql::quote_ident;
use crate::policy::retention::{delete_backup, parse_days, parse_pre_restore, plan, Action, Deleted, Policy};
use crate::restore::pre_restore_name;
use crate::storage::{check_key, StorageError};

#[derive(Serialize, Default)]
struct Report {
    dry_run: bool,
    backups: Vec<BackupItem>,
    orphans: Vec<OrphanItem>,
    pre_restore_schemas: Vec<SchemaItem>,
    deleted: usize,
    bytes_freed: u64,
    kept: usize,
    failed: usize,
}

#[derive(Serialize)]
struct BackupItem {
    tenant: String,
    id: i64,
    key: String,
    size: i64,
    backup_type: String,
    created_at: DateTime<Utc>,
    action: Action,
    reason: String,
    result: Option<String>,
}

#[derive(Serialize)]
struct OrphanItem {
    tenant: String,
    kind: &'static str,
    key: String,
    row_id: Option<i64>,
    result: String,
}

#[derive(Serialize)]
struct SchemaItem {
    tenant: String,
    schema: String,
    created_at: DateTime<Utc>,
    result: String,
}

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

    for tenant in &tenants {
        let schema = &tenant.schema_name;
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
            expire(ctx, &session, schema, &policy, now, args.dry_run, &mut report).await?;
        }
        if args.orphans {
            orphans(ctx, &session, schema, now, args.fix && !args.dry_run, &mut report).await?;
        }
        if !args.dry_run {
            lock::unlock(&session, schema).await?;
        }
    }
    if let Some(days) = pre_days {
        pre_restore(&session, &tenants, days, now, args.dry_run, timeout, &mut report).await?;
    }
    print(ctx, &report)?;
    Ok(Outcome::from_failures(report.failed))
}

async fn expire(
    ctx: &Context,
    client: &Client,
    schema: &str,
    policy: &Policy,
    now: DateTime<Utc>,
    dry_run: bool,
    report: &mut Report,
) -> Result<()> {
    let records = ctx.catalog.records(client, schema).await?;
    let verdicts = plan(&records, now, policy);
    if !dry_run {
        // The plan goes to the log before anything is deleted.
        let doomed: Vec<_> = verdicts.iter().filter(|v| v.action == Action::Delete).collect();
        let bytes: i64 = doomed.iter().map(|v| v.record.file_size.max(0)).sum();
        tracing::info!(
            "{schema}: deleting {} backups ({}), keeping {}",
            doomed.len(),
            human_size(bytes as u64),
            verdicts.len() - doomed.len()
        );
        for v in &doomed {
            tracing::info!("{schema}: will delete {} ({})", v.record.file_path, v.reason);
        }
    }
    for v in verdicts {
        let mut item = BackupItem {
            tenant: schema.to_string(),
            id: v.record.id,
            key: v.record.file_path.clone(),
            size: v.record.file_size,
            backup_type: v.record.backup_type.clone(),
            created_at: v.record.created_at,
            action: v.action.clone(),
            reason: v.reason.clone(),
            result: None,
        };
        match v.action {
            Action::Keep => report.kept += 1,
            Action::Delete if dry_run => {
                report.deleted += 1;
                report.bytes_freed += v.record.file_size.max(0) as u64;
            }
            Action::Delete => {
                match delete_backup(ctx.storage.as_ref(), &ctx.catalog, client, schema, &v.record).await {
                    Ok(how) => {
                        report.deleted += 1;
                        if how == Deleted::All {
                            report.bytes_freed += v.record.file_size.max(0) as u64;
                            item.result = Some("deleted".into());
                        } else {
                            item.result = Some("row deleted; the object was already missing".into());
                        }
                    }
                    Err(e) => {
                        tracing::error!("{schema}: {e:#}");
                        report.failed += 1;
                        item.result = Some(format!("FAILED: {e:#}"));
                    }
                }
            }
        }
        report.backups.push(item);
    }
    Ok(())
}

/// Objects under the tenant's prefix that no row points to, and rows whose object is missing.
async fn orphans(
    ctx: &Context,
    client: &Client,
    schema: &str,
    now: DateTime<Utc>,
    fix: bool,
    report: &mut Report,
) -> Result<()> {
    let records = ctx.catalog.records(client, schema).await?;
    let objects = ctx.storage.list(&format!("{schema}/")).await?;
    let listed: BTreeSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let referenced: BTreeSet<&str> = records.iter().map(|r| r.file_path.as_str()).collect();
    let grace = now - Days::days(1);
    for o in &objects {
        let base = o.key.strip_suffix(".manifest.json");
        let orphan = match base {
            Some(b) => !listed.contains(b) && !referenced.contains(b),
            None => !referenced.contains(o.key.as_str()),
        };
        if !orphan {
            continue;
        }
        // A backup in flight has its object a moment before its row: leave young ones alone.
        let written = o
            .modified
            .or_else(|| ObjectKey::parse(base.unwrap_or(&o.key)).map(|k| k.created.and_utc()));
        let result = if !fix {
            "found".to_string()
        } else if written.is_none_or(|w| w > grace) {
            "kept: less than a day old (may be a backup in flight)".to_string()
        } else {
            match ctx.storage.delete(&o.key).await {
                Ok(()) | Err(StorageError::NotFound(_)) => "deleted".to_string(),
                Err(e) => {
                    report.failed += 1;
                    format!("FAILED: {e}")
                }
            }
        };
        report.orphans.push(OrphanItem {
            tenant: schema.into(),
            kind: "object without row",
            key: o.key.clone(),
            row_id: None,
            result,
        });
    }
    for r in &records {
        let in_bucket = check_key(&r.file_path).is_ok() && listed.contains(r.file_path.as_str());
        if in_bucket {
            continue;
        }
        let result = if fix {
            if check_key(&r.file_path).is_ok() {
                let _ = ctx.storage.delete(&ObjectKey::manifest_key(&r.file_path)).await;
            }
            match ctx.catalog.delete_record(client, schema, r.id).await {
                Ok(()) => "row deleted".to_string(),
                Err(e) => {
                    report.failed += 1;
                    format!("FAILED: {e:#}")
                }
            }
        } else {
            "found".to_string()
        };
        report.orphans.push(OrphanItem {
            tenant: schema.into(),
            kind: "row without object",
            key: r.file_path.clone(),
            row_id: Some(r.id),
            result,
        });
    }
    Ok(())
}

/// Drops `<tenant>__pre_restore_<time>` schemas older than `days`, for tenants in the tenant table only.
async fn pre_restore(
    client: &Client,
    tenants: &[Tenant],
    days: u32,
    now: DateTime<Utc>,
    dry_run: bool,
    timeout: Duration,
    report: &mut Report,
) -> Result<()> {
    let rows = client
        .query_typed(
            "SELECT nspname::text FROM pg_namespace WHERE strpos(nspname, '__pre_restore_') > 0 ORDER BY 1",
            &[],
        )
        .await?;
    let cutoff = now - Days::days(days as i64);
    for row in rows {
        let name: String = row.get(0);
        let Some((_, at)) = parse_pre_restore(&name) else {
            continue;
        };
        // Ours only if a tenant's name, cut as restore cuts it, gives exactly this name.
        let Some(tenant) = tenants.iter().find(|t| pre_restore_name(&t.schema_name, at) == name) else {
            continue;
        };
        let result = if at >= cutoff {
            format!("kept: newer than {days} days")
        } else if dry_run {
            "would drop".to_string()
        } else {
            lock::lock_with_timeout(client, &tenant.schema_name, timeout).await?;
            let dropped = client
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&name)))
                .await;
            lock::unlock(client, &tenant.schema_name).await?;
            match dropped {
                Ok(()) => "dropped".to_string(),
                Err(e) => {
                    report.failed += 1;
                    format!("FAILED: {}", crate::pg::connect::describe_pg_error(&e))
                }
            }
        };
        report.pre_restore_schemas.push(SchemaItem {
            tenant: tenant.schema_name.clone(),
            schema: name,
            created_at: at,
            result,
        });
    }
    Ok(())
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
