//! `schedule --tenant S daily|weekly|disabled|at <RFC 3339>`

use anyhow::Result;

use crate::app::context::Context;
use crate::cli::ScheduleArgs;
use crate::cmd::Outcome;
use crate::outln;
use crate::policy::schedule::parse_setting;

pub async fn run(args: ScheduleArgs, ctx: &Context) -> Result<Outcome> {
    let (schedule, next) = parse_setting(&args.schedule, ctx.clock.now())?;
    let client = ctx.connect().await?;
    let tenant = ctx.catalog.tenant(&client, &args.tenant).await?;
    // The update and its report are one step for a stop.
    let _commit = crate::stop::shield().ok_or(crate::stop::Stopped)?;
    ctx.catalog.set_schedule(&client, tenant.id, &schedule, next).await?;
    if ctx.output.json {
        ctx.output.json(&serde_json::json!({
            "tenant": tenant.schema_name,
            "backup_schedule": schedule,
            "next_scheduled_backup": next,
        }))?;
    } else {
        match next {
            Some(at) => outln!(
                "{}: one backup scheduled at {}",
                tenant.schema_name,
                at.format("%Y-%m-%d %H:%M:%S UTC")
            )?,
            None => outln!("{}: backup schedule set to {schedule}", tenant.schema_name)?,
        }
    }
    Ok(Outcome::Done)
}
