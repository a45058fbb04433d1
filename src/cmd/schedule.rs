//! `schedule --tenant S daily|weekly|disabled|at <RFC 3339>`

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::app::context::Context;
use crate::cli::ScheduleArgs;
use crate::cmd::Outcome;
use crate::usage;

pub async fn run(args: ScheduleArgs, ctx: &Context) -> Result<Outcome> {
    let (schedule, next) = parse(&args.schedule, ctx.clock.now())?;
    let client = ctx.connect().await?;
    let tenant = ctx.catalog.tenant(&client, &args.tenant).await?;
    ctx.catalog.set_schedule(&client, tenant.id, schedule, next).await?;
    if ctx.output.json {
        ctx.output.json(&serde_json::json!({
            "tenant": tenant.schema_name,
            "backup_schedule": schedule,
            "next_scheduled_backup": next,
        }))?;
    } else {
        match next {
            Some(at) => println!(
                "{}: one backup scheduled at {}",
                tenant.schema_name,
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => println!("{}: backup schedule set to {schedule}", tenant.schema_name),
        }
    }
    Ok(Outcome::Done)
}

/// `daily`, `weekly`, `disabled`, or `at <time>` (a time in the future).
pub fn parse(words: &[String], now: DateTime<Utc>) -> Result<(&'static str, Option<DateTime<Utc>>)> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["daily"] => Ok(("daily", None)),
        ["weekly"] => Ok(("weekly", None)),
        ["disabled"] => Ok(("disabled", None)),
        ["at", when] => {
            let at = DateTime::parse_from_rfc3339(when)
                .map_err(|_| {
                    usage!(
                        "{when:?} is not an RFC 3339 time: use e.g. 2026-12-01T03:00:00Z or 2026-12-01T03:00:00+01:00"
                    )
                })?
                .with_timezone(&Utc);
            if at <= now {
                return Err(usage!(
                    "{when} is in the past: give a time after {}",
                    now.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
            Ok(("scheduled", Some(at)))
        }
        ["at"] => Err(usage!("`at` needs a time: schedule --tenant S at 2026-12-01T03:00:00Z")),
        _ => Err(usage!(
            "unknown schedule {:?}: use daily, weekly, disabled, or at <RFC 3339 time>",
            words.join(" ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_schedules() {
        let now = "2026-11-22T12:00:00Z".parse().unwrap();
        assert_eq!(parse(&w("daily"), now).unwrap(), ("daily", None));
        let (s, at) = parse(&w("at 2026-11-23T03:00:00+01:00"), now).unwrap();
        assert_eq!(
            (s, at.unwrap().to_rfc3339()),
            ("scheduled", "2026-11-23T02:00:00+00:00".into())
        );
        for bad in [
            "hourly",
            "at",
            "at yesterday",
            "at 2026-11-22T11:59:59Z",
            "daily weekly",
        ] {
            assert!(parse(&w(bad), now).is_err(), "{bad}");
        }
    }
}
