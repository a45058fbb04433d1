//! Results on stdout (a table, or JSON), and the small formatting helpers they share.

use std::io::Write;

use serde::Serialize;

use crate::app::progress::ProgressMode;
use crate::error::ClosedStdout;

/// How results and progress are shown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Output {
    pub json: bool,
    pub progress: ProgressMode,
}

impl Output {
    /// Prints a serializable result as pretty JSON on stdout, every timestamp in one form:
    /// RFC 3339, UTC, microseconds (`2026-11-22T22:01:01.000000Z`).
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut value = serde_json::to_value(value)?;
        uniform_timestamps(&mut value);
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &value)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush())
            .map_err(stdout_error)
    }
}

/// Writes results to stdout: what `out!` and `outln!` call. `print!` would panic once the reader
/// has gone away (clippy.toml forbids it); this ends the command quietly instead
/// ([`ClosedStdout`], exit 0).
pub fn write_out(args: std::fmt::Arguments) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).map_err(stdout_error)
}

/// A failed write to stdout: [`ClosedStdout`] when the reader went away, else the error.
pub fn stdout_error(err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(ClosedStdout)
    } else {
        anyhow::Error::new(err).context("writing the results to stdout")
    }
}

/// `print!` for results: `out!(...)?`.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::app::output::write_out(format_args!($($arg)*))
    };
}

/// `println!` for results: `outln!(...)?`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::app::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::app::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub use crate::progress::human_size;

/// Rewrites every string that is an RFC 3339 timestamp into the one form, the same instant.
fn uniform_timestamps(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                *s = t
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(uniform_timestamps),
        Value::Object(o) => o.values_mut().for_each(uniform_timestamps),
        _ => {}
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_timestamps_have_one_form() {
        let mut v = serde_json::json!({
            "a": "2026-11-22T22:01:01Z",
            "b": ["2026-11-22T23:01:01.5+01:00", "2026-11-22T22:01:01.123456789Z"],
            "c": "bienestar/backup-sql-bienestar-2026-11-22-220101.sql",
        });
        uniform_timestamps(&mut v);
        assert_eq!(v["a"], "2026-11-22T22:01:01.000000Z");
        assert_eq!(v["b"][0], "2026-11-22T22:01:01.500000Z");
        assert_eq!(v["b"][1], "2026-11-22T22:01:01.123456Z");
        assert_eq!(v["c"], "bienestar/backup-sql-bienestar-2026-11-22-220101.sql");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["id", "file"],
            &[vec!["1".into(), "a".into()], vec!["10".into(), "bb".into()]],
        );
        assert_eq!(t, "id  file\n1   a\n10  bb\n");
    }
}
