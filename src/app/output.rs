//! Results on stdout (a table, or JSON), and the small formatting helpers they share.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::cli::OutputArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif bar (stderr is a terminal).
    Bar,
    /// A plain line every few seconds (cron, logs).
    Lines,
    Off,
}

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
    pub progress: ProgressMode,
}

impl Output {
    pub fn from_args(args: &OutputArgs) -> Self {
        let progress = if args.no_progress || args.quiet > 0 {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        };
        Output {
            json: args.json,
            progress,
        }
    }

    /// Prints a serializable result as pretty JSON on stdout.
    pub fn json<T: Serialize>(&self, value: &T) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)
    }
}

pub use crate::progress::human_size;

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
    fn tables_align() {
        let t = table(
            &["id", "file"],
            &[vec!["1".into(), "a".into()], vec!["10".into(), "bb".into()]],
        );
        assert_eq!(t, "id  file\n1   a\n10  bb\n");
    }
}
