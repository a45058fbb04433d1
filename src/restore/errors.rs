//! What psql said when a restore failed, told without patient data: only the first line of each
//! error (with its SQLSTATE), its line in the dump, and for a failing COPY row the table and the
//! row's line. DETAIL (`Failing row contains …`, `Key (…)=(…)`), the row in CONTEXT, the statement
//! excerpt psql prints, and a value quoted in the message itself are left out.

use super::guard::Checked;
use crate::pg::connect::withhold_values;

/// One error psql reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    /// The line of the dump it happened at (0: in the tool's own statements around it).
    pub dump_line: u64,
    pub sqlstate: Option<String>,
    pub message: String,
    /// `COPY table, line K` when a data row failed: (table, the row's line in the dump).
    pub copy_row: Option<(String, Option<u64>)>,
}

impl Failure {
    pub fn is_lock_timeout(&self) -> bool {
        self.sqlstate.as_deref() == Some("55P03")
    }
}

/// Reads psql's stderr (run with `VERBOSITY=verbose`, so each error carries its SQLSTATE).
/// `prologue` is the number of lines the tool sent before the dump.
pub fn failures(stderr: &str, prologue: u64, checked: Option<&Checked>) -> (Vec<Failure>, Vec<String>) {
    let mut out: Vec<Failure> = Vec::new();
    let mut other = Vec::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("psql:<stdin>:") {
            let (n, msg) = rest.split_once(':').unwrap_or(("0", rest));
            let n: u64 = n.trim().parse().unwrap_or(0);
            let dump_lines = checked.map(|c| c.lines).unwrap_or(u64::MAX);
            let dump_line = match n.checked_sub(prologue) {
                Some(d) if d >= 1 && d <= dump_lines => d,
                _ => 0,
            };
            let (sqlstate, message) = split_sqlstate(msg.trim());
            out.push(Failure {
                dump_line,
                sqlstate,
                message: withhold_values(&message),
                copy_row: None,
            });
        } else if let Some((table, row)) = copy_context(line) {
            if let Some(last) = out.last_mut() {
                let at = checked.and_then(|c| c.copy_row_line(&table, last.dump_line.max(1), row));
                last.copy_row = Some((table, at));
            }
        } else if line.starts_with("psql:") {
            // psql's own trouble (a connection that failed).
            other.push(line.to_string());
        }
        // Anything else continues an error (DETAIL, HINT, LOCATION, the statement): left out.
    }
    (out, other)
}

/// `ERROR:  55P03: canceling …` → (`55P03`, `ERROR: canceling …`).
fn split_sqlstate(msg: &str) -> (Option<String>, String) {
    if let Some((level, rest)) = msg.split_once(':') {
        let rest = rest.trim_start();
        if let Some((code, text)) = rest.split_once(": ") {
            if code.len() == 5 && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                return (Some(code.to_string()), format!("{level}: {text}"));
            }
        }
        return (None, format!("{level}: {rest}"));
    }
    (None, msg.to_string())
}

/// `CONTEXT:  COPY appointments_patient, line 5, column birth_date: "…"` → (table, 5), in any
/// language the server speaks.
fn copy_context(line: &str) -> Option<(String, u64)> {
    let (_, rest) = line.split_once(':')?;
    let rest = rest.trim_start().strip_prefix("COPY ")?;
    let (table, after) = rest.split_once(", ")?;
    let number: String = after
        .split_whitespace()
        .nth(1)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((table.to_string(), number.parse().ok()?))
}

/// The failures, one line each, for the error message.
pub fn describe(failures: &[Failure], other: &[String], source_hint: &str) -> String {
    let mut lines: Vec<String> = failures
        .iter()
        .map(|f| {
            let at = match (&f.copy_row, f.dump_line) {
                (Some((table, Some(row))), _) => format!("line {row} of {source_hint} (a row of {table})"),
                (Some((table, None)), _) => format!("a row of {table}"),
                (None, 0) => "in the tool's own statements around the dump".to_string(),
                (None, n) => format!("line {n} of {source_hint}"),
            };
            let code = f.sqlstate.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default();
            format!("{at}: {}{code}", f.message)
        })
        .collect();
    lines.extend(other.iter().cloned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_data_is_left_out() {
        let stderr = "psql:<stdin>:1648: ERROR:  22007: invalid input syntax for type date: \"SECRET-not-a-date\"\n\
            CONTEXT:  COPY appointments_patient, line 1, column birth_date: \"SECRET-not-a-date\"\n\
            LOCATION:  DateTimeParseError, datetime.c:4019\n\
            psql:<stdin>:9: ERROR:  23502: null value in column \"first_name\" of relation \"appointments_patient\" violates not-null constraint\n\
            DETAIL:  Failing row contains (1, Ana, Pérez, 12345678).\n\
            CONTEXT:  COPY appointments_patient, line 3: \"1\tAna\tPérez\"\n\
            psql:<stdin>:20: ERROR:  22003: value \"99999999999\" is out of range for type integer\n";
        let (f, other) = failures(stderr, 2, None);
        let text = describe(&f, &other, "the dump");
        for private in ["SECRET", "Ana", "Pérez", "12345678", "99999999999"] {
            assert!(!text.contains(private), "{private}: {text}");
        }
        assert_eq!(f[0].dump_line, 1646);
        assert_eq!(f[0].sqlstate.as_deref(), Some("22007"));
        assert_eq!(f[0].copy_row, Some(("appointments_patient".into(), None)));
        assert!(
            text.contains("invalid input syntax for type date: (value withheld)"),
            "{text}"
        );
        assert!(text.contains("value (withheld) is out of range"), "{text}");
        assert!(text.contains("line 18 of the dump"), "{text}");
    }

    #[test]
    fn lock_timeouts_are_recognised_by_their_sqlstate() {
        let (f, _) = failures(
            "psql:<stdin>:7: ERROR:  55P03: canceling statement due to lock timeout\n",
            2,
            None,
        );
        assert!(f[0].is_lock_timeout());
        assert_eq!(f[0].dump_line, 5);
    }
}
