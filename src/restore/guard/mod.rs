//! What a restored dump may execute: only its own SQL, on its own schema.
//!
//! The bucket is not trusted (anyone who can write an object can rewrite its manifest), so every
//! plain dump, and the SQL pg_restore makes of a custom archive, is checked statement by statement
//! as it is fed to psql ([`stream`]): the [`lexer`] splits the text as psql would; each statement is
//! parsed by PostgreSQL's own parser (`pg_query`) and held against [`rules`], and only then written
//! to psql, as the check decided (the dump's `SET lock_timeout` rewritten to the tool's, ownership
//! and privilege statements left out, pg_dump's `\restrict` lines dropped for the tool's own). A
//! psql meta-command other than pg_dump's own `\restrict`/`\unrestrict`, transaction control, a
//! statement kind pg_dump does not write for one schema, or a name in another schema refuses the
//! dump, naming the line: the refused statement never reaches psql, and what went before it is in
//! the restore's one transaction, which is then never committed (COMMIT is sent only after a
//! whole dump passed, closing line included). Reading the dump once, not once to check and once
//! to feed, is what keeps a restore as fast as psql alone.
//!
//! [`check`] is the same without a psql: it reads the whole dump and runs nothing.

mod lexer;
mod names;
mod rules;

use std::collections::HashSet;
use std::io::{Read, Write};

use anyhow::{Context as _, Result};
use tokio_postgres::Client;

pub use lexer::Verdict;
use lexer::{Lexer, Meta, Sink};

/// Why a dump is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Refusal {
    pub line: u64,
    pub reason: String,
}

/// Why reading stopped: the dump is refused, or writing to psql failed (it stopped on an error).
#[derive(Debug)]
pub enum Stop {
    Refused(Refusal),
    Write(std::io::Error),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

/// What the dump may name besides its own schema.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The schema the dump creates.
    pub schema: String,
    /// Every other schema of the database: a string naming one of them (`'mindcare.t'`) where
    /// a function takes a relation name is refused.
    pub other_schemas: HashSet<String>,
    /// `(schema, name)` of every object an extension owns (citext, gin_trgm_ops, uuid_generate_v4…):
    /// these may be referred to, wherever the extension lives.
    pub extension_members: HashSet<(String, String)>,
    /// What the dump's own `SET lock_timeout` becomes.
    pub lock_timeout_ms: u128,
}

impl Scope {
    /// The scope of a dump of `schema` restored into the database `client` is connected to.
    pub async fn load(client: &Client, schema: &str, lock_timeout_ms: u128) -> Result<Scope> {
        let rows = client
            .simple_query(EXTENSION_MEMBERS)
            .await
            .context("reading which objects belong to extensions")?;
        let mut scope = Scope {
            schema: schema.to_string(),
            lock_timeout_ms,
            ..Default::default()
        };
        for row in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
                let (ns, name) = (r.get(0).unwrap_or_default(), r.get(1).unwrap_or_default());
                if name.is_empty() {
                    if ns != schema && ns != "pg_catalog" {
                        scope.other_schemas.insert(ns.to_string());
                    }
                } else {
                    scope.extension_members.insert((ns.to_string(), name.to_string()));
                }
            }
        }
        Ok(scope)
    }
}

/// Every schema (with an empty name), then `(schema, name)` of each object an extension owns.
const EXTENSION_MEMBERS: &str = "SELECT nspname::text, '' FROM pg_catalog.pg_namespace \
     UNION ALL SELECT n.nspname::text, x.name::text FROM ( \
       SELECT pronamespace AS ns, proname AS name, 'pg_catalog.pg_proc'::pg_catalog.regclass AS cls, oid FROM pg_catalog.pg_proc \
       UNION ALL SELECT typnamespace, typname, 'pg_catalog.pg_type'::pg_catalog.regclass, oid FROM pg_catalog.pg_type \
       UNION ALL SELECT oprnamespace, oprname, 'pg_catalog.pg_operator'::pg_catalog.regclass, oid FROM pg_catalog.pg_operator \
       UNION ALL SELECT opcnamespace, opcname, 'pg_catalog.pg_opclass'::pg_catalog.regclass, oid FROM pg_catalog.pg_opclass \
       UNION ALL SELECT opfnamespace, opfname, 'pg_catalog.pg_opfamily'::pg_catalog.regclass, oid FROM pg_catalog.pg_opfamily \
       UNION ALL SELECT collnamespace, collname, 'pg_catalog.pg_collation'::pg_catalog.regclass, oid FROM pg_catalog.pg_collation \
       UNION ALL SELECT cfgnamespace, cfgname, 'pg_catalog.pg_ts_config'::pg_catalog.regclass, oid FROM pg_catalog.pg_ts_config \
       UNION ALL SELECT dictnamespace, dictname, 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, oid FROM pg_catalog.pg_ts_dict \
     ) x JOIN pg_catalog.pg_depend d ON d.classid = x.cls AND d.objid = x.oid AND d.deptype = 'e' \
     JOIN pg_catalog.pg_namespace n ON n.oid = x.ns";

/// What the check found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Ownership and privilege statements left out.
    pub skipped: usize,
    /// pg_dump's closing line was seen.
    pub complete: bool,
    /// Lines of the dump.
    pub lines: u64,
    /// Each COPY: the line its data follows, and its table (to name a failing row's line).
    pub copies: Vec<(u64, String)>,
}

impl Checked {
    /// The dump line of data row `row` (1-based) of the last COPY into `table` before `line`.
    pub fn copy_row_line(&self, table: &str, before: u64, row: u64) -> Option<u64> {
        self.copies
            .iter()
            .rev()
            .find(|(l, t)| t == table && *l < before)
            .map(|(l, _)| l + row)
    }
}

fn copy_table(parsed: &pg_query::ParseResult) -> String {
    parsed
        .protobuf
        .stmts
        .iter()
        .find_map(|s| match s.stmt.as_ref()?.node.as_ref()? {
            pg_query::NodeEnum::CopyStmt(c) => c.relation.as_ref().map(|r| r.relname.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Reads the whole dump and checks every statement. Nothing is executed.
pub fn check(input: impl Read, scope: &Scope) -> Result<Checked, CheckError> {
    let (checked, outcome) = run(input, scope, None);
    outcome.map(|()| checked)
}

/// Checks the dump statement by statement, writing each one to `out` (psql's stdin) only once it
/// has passed, as the check decided. What was found comes back whatever happened (it names the
/// dump's lines in psql's errors); the outcome says whether the whole dump passed and was written.
/// A dump without its closing line passes here: `complete` says so, and the caller must not commit.
pub fn stream(input: impl Read, scope: &Scope, out: &mut dyn Write) -> (Checked, Result<(), CheckError>) {
    run(input, scope, Some(out))
}

fn run(mut input: impl Read, scope: &Scope, out: Option<&mut dyn Write>) -> (Checked, Result<(), CheckError>) {
    let mut lexer = Lexer::default();
    let mut checker = Checker {
        scope,
        own_first: false,
        restrict: None,
        unrestricted: false,
        checked: Checked::default(),
        out,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let outcome = loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break lexer.finish(&mut checker).map_err(CheckError::from),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(CheckError::Read(e)),
        };
        if let Err(e) = lexer.feed(&buf[..n], &mut checker) {
            break Err(CheckError::from(e));
        }
    };
    let mut checked = checker.checked;
    checked.complete = lexer.is_complete();
    checked.lines = lexer.lines();
    (checked, outcome)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("reading the dump (corrupt or truncated object): {0}")]
    Read(std::io::Error),
    /// psql stopped reading (its own error says why).
    #[error("psql stopped reading the dump: {0}")]
    Write(std::io::Error),
}

impl From<Stop> for CheckError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Refused(r) => CheckError::Refused(r),
            Stop::Write(e) => CheckError::Write(e),
        }
    }
}

struct Checker<'s, 'o> {
    scope: &'s Scope,
    /// The current search_path starts with the dump's own schema (unqualified names created go there).
    own_first: bool,
    restrict: Option<String>,
    unrestricted: bool,
    checked: Checked,
    /// Where what passed is written (psql), if anywhere.
    out: Option<&'o mut dyn Write>,
}

impl Sink for Checker<'_, '_> {
    fn statement(&mut self, text: &[u8], line: u64, last_line: u64) -> Result<Verdict, Stop> {
        let refuse = |reason: String| Stop::Refused(Refusal { line, reason });
        if self.unrestricted {
            return Err(refuse("SQL after the dump's closing \\unrestrict".into()));
        }
        let text = std::str::from_utf8(text).map_err(|_| refuse("text that is not valid UTF-8".into()))?;
        let parsed = pg_query::parse(text, 0).map_err(|e| refuse(format!("not valid SQL ({e})")))?;
        let stmts = &parsed.protobuf.stmts;
        let mut verdict = Verdict::Forward;
        for raw in stmts {
            let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
                continue;
            };
            let start = (raw.stmt_location.max(0) as usize).min(text.len());
            let end = match raw.stmt_len {
                0 => text.len(),
                n => (start + n as usize).min(text.len()),
            };
            let json = serde_json::to_value(node).map_err(|e| refuse(format!("cannot be examined ({e})")))?;
            let mut ctx = rules::Ctx {
                scope: self.scope,
                own_first: &mut self.own_first,
                text: &text[start..end],
            };
            let v = rules::check(&json, &mut ctx).map_err(refuse)?;
            if v != Verdict::Forward && stmts.len() > 1 {
                return Err(refuse(
                    "several statements in one, which psql would send together".into(),
                ));
            }
            verdict = v;
        }
        if verdict == Verdict::Blank {
            self.checked.skipped += 1;
        }
        if verdict == Verdict::CopyIn {
            self.checked.copies.push((last_line, copy_table(&parsed)));
        }
        Ok(verdict)
    }

    fn meta(&mut self, meta: Meta, line: u64) -> Result<(), Stop> {
        let refuse = |reason: &str| {
            Stop::Refused(Refusal {
                line,
                reason: reason.to_string(),
            })
        };
        match meta {
            Meta::Restrict(key) if self.restrict.is_none() => self.restrict = Some(key),
            Meta::Restrict(_) => return Err(refuse("a second \\restrict")),
            Meta::Unrestrict(key) if self.restrict.as_ref() == Some(&key) && !self.unrestricted => {
                self.unrestricted = true
            }
            Meta::Unrestrict(_) => return Err(refuse("an \\unrestrict that does not close the dump's \\restrict")),
        }
        Ok(())
    }

    fn output(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        match self.out.as_mut() {
            Some(out) => out.write_all(bytes).map_err(Stop::Write),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
