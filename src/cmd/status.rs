//! `status`: per tenant, its schedule, last backup, next due time, and whether it is overdue.

use anyhow::Result;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::table;
use crate::cli::StatusArgs;
use crate::cmd::Outcome;
use crate::out;
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
    // `--timezone` alone only changes how times are shown; with `--daily-at` it is the schedule's too.
    let opts = match (&args.when.daily_at, &args.when.timezone) {
        (None, Some(_)) => ScheduleOptions::default(),
        (daily_at, tz) => ScheduleOptions::parse(daily_at.as_deref(), tz.as_deref())?,
    };
    let shown_in: Option<Tz> = match &args.when.timezone {
        Some(name) => Some(ScheduleOptions::parse(Some("00:00"), Some(name))?.timezone()),
        None => None,
    };
    let client = ctx.connect().await?;
    let now = ctx.clock.now();
    let tenants = ctx.catalog.tenants(&client).await?;
    // Every tenant's newest backups in a few statements, not one query per tenant.
    let schemas: Vec<String> = tenants.iter().map(|t| t.schema_name.clone()).collect();
    let newest = ctx.catalog.newest_backups_of(&client, &schemas).await?;
    let mut out = Vec::new();
    for (t, newest) in tenants.into_iter().zip(newest) {
        // One broken tenant (no history table, no privileges) is reported; the others go on.
        let (newest, newest_auto, error) = match newest {
            Ok((a, b)) => (a, b, None),
            Err(e) => {
                eprintln!("error: tenant {}: {e:#}", t.schema_name);
                (None, None, Some(format!("{e:#}")))
            }
        };
        // The tick decides from last_backup_at alone, so `overdue` does too; the history's newest
        // automatic row is shown when the tenant row has none (e.g. rows restored from elsewhere).
        let last_automatic = t.last_backup_at.or(newest_auto);
        out.push(TenantStatus {
            overdue: overdue(&t, now, &opts),
            next_due: next_due(&t, now, &opts),
            schedule: t.backup_schedule.to_string(),
            last_backup_at: t.last_backup_at,
            newest_backup: newest,
            last_automatic_backup: last_automatic,
            tenant: t.schema_name,
            error,
        });
    }
    for s in out.iter().filter(|s| s.overdue) {
        ctx.note_overdue(&s.tenant);
    }
    let overdue_count = out.iter().filter(|s| s.overdue).count();
    let broken = out.iter().filter(|s| s.error.is_some()).count();
    if ctx.output.json {
        ctx.output.json(&out)?;
    } else {
        let fmt = |t: Option<DateTime<Utc>>| match (t, shown_in) {
            (None, _) => "-".to_string(),
            (Some(t), None) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
            (Some(t), Some(tz)) => t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
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
        out!(
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
        )?;
        if overdue_count > 0 {
            eprintln!("{overdue_count} tenant(s) overdue");
        }
    }
    if broken > 0 {
        eprintln!("{broken} tenant(s) whose history cannot be read");
    }
    Ok(Outcome::from_failures(overdue_count + broken))
}
