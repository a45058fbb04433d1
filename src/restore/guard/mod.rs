//! What a restored dump may execute: only its own SQL, on its own schema.
//!
//! The bucket is not trusted (anyone who can write an object can rewrite its manifest), so every
//! plain dump, and the SQL pg_restore makes of a custom archive, is read twice:
//!
//! 1. [`check`], before psql starts: the [`lexer`] splits the text as psql would; each statement is
//!    parsed by PostgreSQL's own parser (`pg_query`) and held against [`rules`]. A psql
//!    meta-command other than pg_dump's own `\restrict`/`\unrestrict`, transaction control, a
//!    statement kind pg_dump does not write for one schema, or a name in another schema refuses
//!    the whole dump, naming the line. Nothing has run at that point.
//! 2. [`Replay`], while feeding psql: the same lexer over the same bytes, applying what the check
//!    decided (the dump's `SET lock_timeout` rewritten to the tool's, ownership and privilege
//!    statements left out, pg_dump's `\restrict` lines dropped for the tool's own) without parsing
//!    again.

mod lexer;
mod names;
mod rules;

use std::collections::{HashMap, HashSet};
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

/// What the check decided, for the replay.
#[derive(Debug, Default)]
pub struct Checked {
    /// Statements (by their number in the dump) that are not passed on as they are.
    verdicts: HashMap<u64, Verdict>,
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
pub fn check(mut input: impl Read, scope: &Scope) -> Result<Checked, CheckError> {
    let mut lexer = Lexer::default();
    let mut checker = Checker {
        scope,
        own_first: false,
        index: 0,
        restrict: None,
        unrestricted: false,
        checked: Checked::default(),
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CheckError::Read(e)),
        };
        lexer.feed(&buf[..n], &mut checker).map_err(CheckError::from)?;
    }
    lexer.finish(&mut checker).map_err(CheckError::from)?;
    checker.checked.complete = lexer.is_complete();
    checker.checked.lines = lexer.lines();
    Ok(checker.checked)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("reading the dump (corrupt or truncated object): {0}")]
    Read(std::io::Error),
}

impl From<Stop> for CheckError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Refused(r) => CheckError::Refused(r),
            Stop::Write(e) => CheckError::Read(e),
        }
    }
}

struct Checker<'s> {
    scope: &'s Scope,
    /// The current search_path starts with the dump's own schema (unqualified names created go there).
    own_first: bool,
    index: u64,
    restrict: Option<String>,
    unrestricted: bool,
    checked: Checked,
}

impl Sink for Checker<'_> {
    fn statement(&mut self, text: &[u8], line: u64, last_line: u64) -> Result<Verdict, Stop> {
        self.index += 1;
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
        if verdict != Verdict::Forward {
            self.checked.verdicts.insert(self.index, verdict.clone());
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

    fn output(&mut self, _: &[u8]) -> Result<(), Stop> {
        Ok(())
    }
}

/// Feeds a checked dump to `out` (psql's stdin), applying the check's verdicts. The bytes must be
/// the very ones [`check`] read.
pub struct Replay<'c, W: Write> {
    lexer: Lexer,
    sink: Replayer<'c, W>,
}

struct Replayer<'c, W: Write> {
    checked: &'c Checked,
    index: u64,
    out: W,
}

impl<'c, W: Write> Replay<'c, W> {
    pub fn new(checked: &'c Checked, out: W) -> Self {
        Replay {
            lexer: Lexer::default(),
            sink: Replayer { checked, index: 0, out },
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Stop> {
        self.lexer.feed(chunk, &mut self.sink)
    }

    /// The end of the dump: the writer back, and whether pg_dump's closing line went by.
    pub fn finish(mut self) -> Result<(W, bool), Stop> {
        self.lexer.finish(&mut self.sink)?;
        Ok((self.sink.out, self.lexer.is_complete()))
    }
}

impl<W: Write> Sink for Replayer<'_, W> {
    fn statement(&mut self, _: &[u8], _: u64, _: u64) -> Result<Verdict, Stop> {
        self.index += 1;
        Ok(self
            .checked
            .verdicts
            .get(&self.index)
            .cloned()
            .unwrap_or(Verdict::Forward))
    }

    fn meta(&mut self, _: Meta, _: u64) -> Result<(), Stop> {
        Ok(())
    }

    fn output(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.out.write_all(bytes).map_err(Stop::Write)
    }
}

#[cfg(test)]
mod tests;
