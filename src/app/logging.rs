//! Logs go to stderr; `-v`/`-q` pick the level, `RUST_LOG` overrides it.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `verbose` and `quiet`: how many `-v` and `-q` were given.
pub fn init(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
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

/// Log lines kept for a failure ping's body.
const KEEP_LINES: usize = 40;

fn recent() -> &'static Mutex<VecDeque<String>> {
    static RECENT: OnceLock<Mutex<VecDeque<String>>> = OnceLock::new();
    RECENT.get_or_init(|| Mutex::new(VecDeque::with_capacity(KEEP_LINES)))
}

/// The last lines this process logged (without colour codes), oldest first.
pub fn recent_lines() -> Vec<String> {
    recent().lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        if let Ok(mut r) = recent().lock() {
            if r.len() == KEEP_LINES {
                r.pop_front();
            }
            r.push_back(strip_ansi(&String::from_utf8_lossy(&line)));
        }
        crate::app::progress::bars().suspend(|| {
            let _ = std::io::stderr().lock().write_all(&line);
        });
    }
}

/// `\x1b[…m` sequences out, so a ping body reads as plain text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
