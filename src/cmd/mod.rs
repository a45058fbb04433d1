//! One module per subcommand, each `run(args, &Context) -> Result<Outcome>`; this file dispatches.

pub mod backup;
pub mod cleanup;
pub mod doctor;
pub mod download;
pub mod keys;
pub mod list;
pub mod restore;
pub mod run_scheduled;
pub mod schedule;
pub mod status;
pub mod verify;

use anyhow::Result;

use crate::app::context::Context;
use crate::cli::{Cli, Command};

/// How a command that ran to its end went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was done: exit 0.
    Done,
    /// Some work failed, the rest was done: exit 1.
    Failed,
}

impl Outcome {
    pub fn from_failures(failures: usize) -> Self {
        if failures == 0 {
            Outcome::Done
        } else {
            Outcome::Failed
        }
    }
}

/// What a stop by a signal leaves as it was, for the line it prints. Only what is in progress is
/// dropped; what was committed before the signal stays committed (and was logged).
pub fn left_unchanged(command: &Command) -> String {
    match command {
        Command::Backup(_) => "backups not finished were discarded: nothing of them is stored or recorded".into(),
        Command::RunScheduled(_) => {
            "tenants not finished have nothing of this run stored or recorded and stay due for the next run".into()
        }
        Command::Restore(args) => match &args.into {
            Some(into) => format!(
                "the restore was rolled back: {into} was not created and {} is unchanged",
                args.tenant
            ),
            None => format!("the restore was rolled back: {} is unchanged", args.tenant),
        },
        Command::Verify(args) => format!("the verify was rolled back: {} is unchanged", args.tenant),
        Command::Cleanup(_) => "what was not yet deleted is kept".into(),
        Command::Download(args) => match args.output.as_deref() {
            Some(p) if p.as_os_str() == "-" => "the output on stdout is incomplete".into(),
            Some(p) => format!("nothing was written to {}", p.display()),
            None => "no file was written".into(),
        },
        Command::Schedule(args) => format!("the schedule of {} is unchanged", args.tenant),
        // Their last statement is not a commit section: say where to look rather than guess.
        Command::Keys(crate::cli::KeysCommand::Rotate { .. } | crate::cli::KeysCommand::Forget { .. }) => {
            "it may have stopped before its change: check with `tenant-backup keys status`".into()
        }
        Command::Keys(_) | Command::List(_) | Command::Status(_) | Command::Doctor => "nothing was changed".into(),
    }
}

/// Runs the command, with the pings and notifications it is watched by: `backup`, `run-scheduled`
/// and `cleanup` ping (start, then success or failure) and notify on failure; `status` notifies
/// when a tenant is overdue.
pub async fn run(cli: Cli) -> Result<Outcome> {
    let alerts = cli.alerts.alerts()?;
    preflight(&cli.command)?;
    if let Command::Keys(crate::cli::KeysCommand::Init { save_identity }) = &cli.command {
        return keys::init(save_identity.as_deref());
    }
    let (name, pinged, notified) = match &cli.command {
        Command::Backup(_) => ("backup", true, true),
        Command::RunScheduled(_) => ("run-scheduled", true, true),
        Command::Cleanup(_) => ("cleanup", true, true),
        Command::Status(_) => ("status", false, true),
        _ => ("", false, false),
    };
    let ctx = match Context::new(&cli.settings()) {
        Ok(ctx) => ctx,
        Err(e) => {
            // A cron job whose configuration broke must still be heard of.
            let error = format!("{e:#}");
            if pinged {
                alerts.ping_end(false, Some(&error)).await;
            }
            if notified {
                alerts.notify(name, &Default::default(), true, Some(&error)).await;
            }
            return Err(e);
        }
    };
    let alerts = alerts.with_secrets(ctx.secrets());
    if pinged {
        alerts.ping_start().await;
    }
    // A run stopped by a signal is a failed run to whoever watches it (stop::on_stop runs this
    // before the run is dropped).
    let _on_stop = (pinged || notified).then(|| {
        let alerts = alerts.clone();
        crate::stop::on_stop(async move {
            let signal = crate::stop::requested().map_or("a signal", |s| s.name());
            let error = format!("stopped by {signal} before the end");
            if pinged {
                alerts.ping_end(false, Some(&error)).await;
            }
            if notified {
                alerts.notify(name, &Default::default(), true, Some(&error)).await;
            }
        })
    });
    let result = dispatch(cli.command, &ctx).await;
    // A reader of the results that went away (`| head`) is not a failed run.
    let closed = result.as_ref().is_err_and(crate::error::is_closed_stdout);
    let error = result.as_ref().err().filter(|_| !closed).map(|e| format!("{e:#}"));
    let ok = closed || matches!(result, Ok(Outcome::Done));
    if pinged {
        alerts.ping_end(ok, error.as_deref()).await;
    }
    if notified {
        alerts.notify(name, &ctx.take_run_log(), !ok, error.as_deref()).await;
    }
    result
}

/// What a user can get wrong in a command's own arguments, checked before the configuration (so a
/// bad `--days` is reported even when DATABASE_URL is missing too) and before anything is touched.
fn preflight(command: &Command) -> Result<()> {
    use crate::clock::{Clock, SystemClock};
    use crate::policy::schedule::{parse_setting, ScheduleOptions};
    let when = |w: &crate::cli::WhenArgs| ScheduleOptions::parse(w.daily_at.as_deref(), w.timezone.as_deref());
    match command {
        Command::Backup(a) => a.dump.request().check()?,
        Command::RunScheduled(a) => {
            a.dump.request().check()?;
            when(&a.when)?;
        }
        Command::Status(a) if a.when.daily_at.is_some() => drop(when(&a.when)?),
        Command::Schedule(a) => drop(parse_setting(&a.schedule, SystemClock.now())?),
        _ => {}
    }
    Ok(())
}

async fn dispatch(command: Command, ctx: &Context) -> Result<Outcome> {
    match command {
        Command::Backup(args) => backup::run(args, ctx).await,
        Command::List(args) => list::run(args, ctx).await,
        Command::RunScheduled(args) => run_scheduled::run(args, ctx).await,
        Command::Schedule(args) => schedule::run(args, ctx).await,
        Command::Status(args) => status::run(args, ctx).await,
        Command::Restore(args) => restore::run(args, ctx).await,
        Command::Verify(args) => verify::run(args, ctx).await,
        Command::Cleanup(args) => cleanup::run(args, ctx).await,
        Command::Download(args) => download::run(args, ctx).await,
        Command::Keys(cmd) => keys::run(cmd, ctx).await,
        Command::Doctor => doctor::run(ctx).await,
    }
}
