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
    /// Why its history could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(args: StatusArgs, ctx: &Context) -> Result<Outcome> {
    let opts = ScheduleOptions::parse(args.when.daily_at.as_deref(), args.when.timezone.as_deref())?;
    let client = ctx.connect().await?;
    let now = ctx.clock.now();
    let mut out = Vec::new();
    for t in ctx.catalog.tenants(&client).await? {
        let (newest, newest_auto, error) = match ctx.catalog.newest_backups(&client, &t.schema_name).await {
            Ok((a, b)) => (a, b, None),
            Err(e) => {
                eprintln!("error: tenant {}: {e:#}", t.schema_name);
                (None, None, Some(format!("{e:#}")))
            }
        };
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
            error,
        });
    }
    let overdue_count = out.iter().filter(|s| s.overdue).count();
    let broken = out.iter().filter(|s| s.error.is_some()).count();
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
                    if s.error.is_some() {
                        "BROKEN".into()
                    } else if s.overdue {
                        "OVERDUE".into()
                    } else {
                        "ok".into()
                    },
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
    if broken > 0 {
        eprintln!("{broken} tenant(s) whose history cannot be read");
    }
    Ok(Outcome::from_failures(overdue_count + broken))
}
