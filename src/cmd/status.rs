//! `status`: per tenant, its schedule, last backup, next due time, and whether it is overdue.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::table;
use crate::cli::StatusArgs;
use crate::cmd::Outcome;
use crate::policy::schedule::{next_due, overdue, ScheduleOptions};

#[derive(Serialize)]
struct TenantStatus {
    tenant: String,
    schedule: String,
    last_backup_at: Option<DateTime<Utc>>,
    newest_backup: Option<DateTime<Utc>>,
    last_automatic_backup: Option<DateTime<Utc>>,
    next_due: Option<DateTime<Utc>>,
    overdue: bool,
}

pub async fn run(args: StatusArgs, ctx: &Context) -> Result<Outcome> {
    let opts = ScheduleOptions::parse(args.when.daily_at.as_deref(), args.when.timezone.as_deref())?;
    let client = ctx.connect().await?;
    let now = ctx.clock.now();
    let tenants = ctx.catalog.tenants(&client).await?;
    // Every tenant's newest backups in a few statements, not one query per tenant.
    let schemas: Vec<String> = tenants.iter().map(|t| t.schema_name.clone()).collect();
    let newest = ctx.catalog.newest_backups_of(&client, &schemas).await?;
    let mut out = Vec::new();
    for (t, newest) in tenants.into_iter().zip(newest) {
        let (newest, newest_auto) = newest?;
        // last_backup_at is set only after an automatic backup's row exists, so both count.
        let last_automatic = t.last_backup_at.max(newest_auto);
        out.push(TenantStatus {
            overdue: overdue(&t, last_automatic, now),
            next_due: next_due(&t, now, &opts),
            schedule: t.backup_schedule.to_string(),
            last_backup_at: t.last_backup_at,
            newest_backup: newest,
            last_automatic_backup: last_automatic,
            tenant: t.schema_name,
        });
    }
    let overdue_count = out.iter().filter(|s| s.overdue).count();
    if ctx.output.json {
        ctx.output.json(&out)?;
    } else {
        let fmt = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "-".into())
        };
        let rows: Vec<Vec<String>> = out
            .iter()
            .map(|s| {
                vec![
                    s.tenant.clone(),
                    s.schedule.clone(),
                    fmt(s.last_automatic_backup),
                    fmt(s.newest_backup),
                    match s.next_due {
                        Some(t) if t <= now => "now".into(),
                        other => fmt(other),
                    },
                    if s.overdue { "OVERDUE".into() } else { "ok".into() },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "tenant",
                    "schedule",
                    "last automatic",
                    "newest backup",
                    "next due",
                    "state"
                ],
                &rows
            )
        );
        if overdue_count > 0 {
            eprintln!("{overdue_count} tenant(s) overdue");
        }
    }
    Ok(Outcome::from_failures(overdue_count))
}
