//! Logs go to stderr; `-v`/`-q` pick the level, `RUST_LOG` overrides it.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::OutputArgs;

pub fn init(args: &OutputArgs) {
    let level = match (args.verbose, args.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("tenant_backup={level},warn")));
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(tty);
    // On a terminal people want short lines; in a cron log, timestamps.
    if tty {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
