//! One module per subcommand, each `run(args, &Context) -> Result<Outcome>`; this file dispatches.

pub mod backup;
pub mod cleanup;
pub mod doctor;
pub mod download;
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
        Command::List(_) | Command::Status(_) | Command::Doctor => "nothing was changed".into(),
    }
}

pub async fn run(cli: Cli) -> Result<Outcome> {
    let ctx = Context::from_cli(&cli)?;
    match cli.command {
        Command::Backup(args) => backup::run(args, &ctx).await,
        Command::List(args) => list::run(args, &ctx).await,
        Command::RunScheduled(args) => run_scheduled::run(args, &ctx).await,
        Command::Schedule(args) => schedule::run(args, &ctx).await,
        Command::Status(args) => status::run(args, &ctx).await,
        Command::Restore(args) => restore::run(args, &ctx).await,
        Command::Verify(args) => verify::run(args, &ctx).await,
        Command::Cleanup(args) => cleanup::run(args, &ctx).await,
        Command::Download(args) => download::run(args, &ctx).await,
        Command::Doctor => doctor::run(&ctx).await,
    }
}
