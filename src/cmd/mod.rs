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
