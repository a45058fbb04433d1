//! Logs go to stderr; `-v`/`-q` pick the level, `RUST_LOG` overrides it.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
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
        .with_writer(AroundBars)
        .with_target(false)
        .with_ansi(tty);
    // On a terminal people want short lines; in a cron log, timestamps.
    if tty {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Writes each log line to stderr in one piece, with the progress bars lifted out of the way and
/// drawn again after it, so a bar never leaves half a frame inside a log line.
struct AroundBars;

impl<'a> MakeWriter<'a> for AroundBars {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::with_capacity(256))
    }
}

struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        crate::app::progress::bars().suspend(|| {
            let _ = std::io::stderr().lock().write_all(&line);
        });
    }
}
