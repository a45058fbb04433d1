//! One module per subcommand, each `run(args, &Context) -> Result<Outcome>`; this file dispatches.

pub mod backup;
pub mod list;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::usage;

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

pub async fn run(cli: Cli) -> Result<Outcome> {
    let not_yet = |name: &str| {
        Err(usage!(
            "`{name}` is not available yet in tenant-backup {}",
            env!("CARGO_PKG_VERSION")
        ))
    };
    match &cli.command {
        Command::RunScheduled(_) => return not_yet("run-scheduled"),
        Command::Restore(_) => return not_yet("restore"),
        Command::Cleanup(_) => return not_yet("cleanup"),
        Command::Schedule(_) => return not_yet("schedule"),
        Command::Status(_) => return not_yet("status"),
        Command::Download(_) => return not_yet("download"),
        Command::Verify(_) => return not_yet("verify"),
        Command::Backup(_) | Command::List(_) => {}
    }
    let ctx = Context::from_cli(&cli)?;
    match cli.command {
        Command::Backup(args) => backup::run(args, &ctx).await,
        Command::List(args) => list::run(args, &ctx).await,
        _ => unreachable!("handled above"),
    }
}
