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

mod bound;
mod lexer;
mod names;
mod retarget;
mod rules;
mod settings;
mod tree;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_postgres::Client;

pub use lexer::Verdict;
use lexer::{Lexer, Meta, Sink};

use crate::restore::post::{Deferred, Kind};

/// What a statement is checked in: the scope, and where the search path stands.
pub(crate) struct Ctx<'a> {
    pub scope: &'a Scope,
    /// The search_path starts with the dump's own schema: an unqualified name is created there.
    pub own_first: &'a mut bool,
    /// The statement's text (a plpgsql body is parsed from it).
    pub text: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn own(&self) -> &str {
        &self.scope.schema
    }
}

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
    /// The schema the dump creates: its own schema, or the staging schema it is aimed at.
    pub schema: String,
    /// When the dump is aimed at a staging schema: the name the dump gives its schema, rewritten
    /// to `schema` wherever it binds when a statement runs ([`retarget`]). A function body may
    /// still name it (a body binds when it runs, after the swap has given `schema` this name), and
    /// the dump's `CREATE SCHEMA` is left out (the staging schema exists already).
    pub dumped_as: Option<String>,
    /// What the dump's own `SET lock_timeout` becomes.
    pub lock_timeout_ms: u128,
    /// What the database holds besides: read once, shared by every tenant of a run.
    pub names: Arc<Names>,
}

/// The database's names a dump is checked against (the same for every schema).
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Every schema of the database but pg_catalog: a string naming another one
    /// (`'mindcare.t'`) where a function takes a relation name is refused.
    pub schemas: HashSet<String>,
    /// `(schema, name)` of every object an extension owns (citext, gin_trgm_ops, uuid_generate_v4…):
    /// these may be referred to, wherever the extension lives.
    pub extension_members: HashSet<(String, String)>,
    /// The allowlist of functions outside the dump's own schema: `(schema, name)` of pg_catalog's
    /// and extensions' functions that only compute (every overload immutable or stable, not
    /// SECURITY DEFINER, not one that runs a query given as text or tells what lies outside the
    /// schema), and the few volatile ones a schema's defaults use ([`VOLATILE_ALLOWED`]). Every
    /// way a statement names a function is held to it: calls, operators' and triggers'
    /// functions, defaults, checks, index expressions.
    pub functions: HashSet<(String, String)>,
    /// Every function name pg_catalog has: an unqualified name is pg_catalog's if it is here
    /// (pg_catalog is searched first), and the dump's own otherwise.
    pub catalog_functions: HashSet<String>,
    /// Functions of the shared schema (`public`, next on a django-tenants search path) and of
    /// extensions that are not on the allowlist: an unqualified call of one of these names, in a
    /// function body run later with the application's search path, would reach them.
    pub shared_functions: HashSet<String>,
    /// Every relation name in pg_catalog and information_schema: an unqualified reference to one
    /// of them would read the server's catalog (roles, sessions, settings), never the schema.
    pub catalog_relations: HashSet<String>,
}

/// Volatile functions a Django schema's defaults and triggers use, allowed although volatile.
pub const VOLATILE_ALLOWED: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "statement_timestamp",
    "timeofday",
    "tsvector_update_trigger",
    "tsvector_update_trigger_column",
];

/// Stable functions that run a query given as text, or read the server's activity: never allowed.
const QUERY_TEXT: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "current_setting",
];

/// Stable functions that tell what lies outside the schema: other sessions and their queries,
/// settings, the server's files and addresses, other objects' definitions.
const REVEALING: &[&str] = &[
    "pg_stat_get_",
    "pg_show_",
    "pg_get_",
    "pg_ls_",
    "pg_read_",
    "pg_hba_",
    "pg_ident_",
    "pg_settings",
    "pg_conf_",
    "pg_postmaster_",
    "pg_current_",
    "pg_control_",
    "pg_tablespace_",
    "pg_backend_",
    "pg_blocking_",
    "pg_safe_snapshot_",
    "pg_stat_",
    "inet_",
    "current_setting",
    "current_query",
    "current_user",
    "session_user",
    "current_role",
];

impl Scope {
    /// The same scope, aimed at the staging schema `staging` (already created).
    pub fn staged(mut self, staging: &str) -> Scope {
        self.dumped_as = Some(std::mem::replace(&mut self.schema, staging.to_string()));
        self
    }

    /// `schema` is the dump's own where a name is only referred to (not created or altered): the
    /// schema it creates, or the name that schema will have after the swap.
    pub(crate) fn refers_to_own(&self, schema: &str) -> bool {
        schema == self.schema || self.dumped_as.as_deref() == Some(schema)
    }

    /// The scope of a dump of `schema` restored into the database `client` is connected to.
    pub async fn load(client: &Client, schema: &str, lock_timeout_ms: u128) -> Result<Scope> {
        Ok(Names::load(client).await?.scope(schema, lock_timeout_ms))
    }
}

impl Names {
    /// Reads the database's names (three catalog queries): once for many tenants.
    pub async fn load(client: &Client) -> Result<Arc<Names>> {
        let rows = client
            .simple_query(EXTENSION_MEMBERS)
            .await
            .context("reading which objects belong to extensions")?;
        let mut names = Names::default();
        for row in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
                let (ns, name) = (r.get(0).unwrap_or_default(), r.get(1).unwrap_or_default());
                if name.is_empty() {
                    if ns != "pg_catalog" {
                        names.schemas.insert(ns.to_string());
                    }
                } else {
                    names.extension_members.insert((ns.to_string(), name.to_string()));
                }
            }
        }
        for row in client
            .simple_query(FUNCTIONS)
            .await
            .context("reading which functions a dump may call")?
        {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
                let (ns, name, safe) = (
                    r.get(0).unwrap_or_default(),
                    r.get(1).unwrap_or_default(),
                    matches!(r.get(2), Some("t" | "true")),
                );
                if ns == "pg_catalog" {
                    names.catalog_functions.insert(name.to_string());
                }
                let reaches_out = QUERY_TEXT.contains(&name) || REVEALING.iter().any(|p| name.starts_with(p));
                if (safe && !reaches_out) || VOLATILE_ALLOWED.contains(&name) {
                    names.functions.insert((ns.to_string(), name.to_string()));
                } else if ns != "pg_catalog" {
                    names.shared_functions.insert(name.to_string());
                }
            }
        }
        for row in client
            .simple_query(CATALOG_RELATIONS)
            .await
            .context("reading the catalog's relations")?
        {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
                names.catalog_relations.insert(r.get(0).unwrap_or_default().to_string());
            }
        }
        Ok(Arc::new(names))
    }

    /// The scope of a dump of `schema`, sharing these names.
    pub fn scope(self: &Arc<Self>, schema: &str, lock_timeout_ms: u128) -> Scope {
        Scope {
            schema: schema.to_string(),
            dumped_as: None,
            lock_timeout_ms,
            names: Arc::clone(self),
        }
    }
}

/// The statements [`Names::load`] runs, for the test that they read the catalogs through indexes.
#[doc(hidden)]
pub const NAMES_QUERIES: [&str; 3] = [EXTENSION_MEMBERS, FUNCTIONS, CATALOG_RELATIONS];

/// Every schema (with an empty name), then `(schema, name)` of each object an extension owns:
/// found from the extensions (`pg_depend` by its reference index), each member by its oid. (A
/// join from every catalog's rows to `pg_depend` read both whole: 80 ms at 1,000 tenants, most of
/// a one-tenant backup's server time at 10,000.)
const EXTENSION_MEMBERS: &str = "SELECT nspname::text, '' FROM pg_catalog.pg_namespace \
     UNION ALL SELECT n.nspname::text, x.name::text FROM pg_catalog.pg_extension e \
     JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
       AND d.refobjid = e.oid AND d.deptype = 'e' \
     CROSS JOIN LATERAL ( \
       SELECT pronamespace AS ns, proname AS name FROM pg_catalog.pg_proc \
         WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT typnamespace, typname FROM pg_catalog.pg_type \
         WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT oprnamespace, oprname FROM pg_catalog.pg_operator \
         WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT opcnamespace, opcname FROM pg_catalog.pg_opclass \
         WHERE d.classid = 'pg_catalog.pg_opclass'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT opfnamespace, opfname FROM pg_catalog.pg_opfamily \
         WHERE d.classid = 'pg_catalog.pg_opfamily'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT collnamespace, collname FROM pg_catalog.pg_collation \
         WHERE d.classid = 'pg_catalog.pg_collation'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT cfgnamespace, cfgname FROM pg_catalog.pg_ts_config \
         WHERE d.classid = 'pg_catalog.pg_ts_config'::pg_catalog.regclass AND oid = d.objid \
       UNION ALL SELECT dictnamespace, dictname FROM pg_catalog.pg_ts_dict \
         WHERE d.classid = 'pg_catalog.pg_ts_dict'::pg_catalog.regclass AND oid = d.objid \
     ) x JOIN pg_catalog.pg_namespace n ON n.oid = x.ns";

/// pg_catalog's and extensions' functions by name: is every overload one that only computes.
const FUNCTIONS: &str = "SELECT n.nspname::text, p.proname::text, \
       pg_catalog.bool_and(p.provolatile IN ('i', 's') AND NOT p.prosecdef AND p.prokind IN ('f', 'a', 'w'))::text \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname IN ('pg_catalog', 'public') OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e') \
     GROUP BY 1, 2";

/// The names of pg_catalog's and information_schema's relations, without reading all of
/// `pg_class` (it has no index by schema, and holds every tenant's relations: 60 ms at 1,000
/// tenants): those made by initdb have oids below 16384 (`FirstNormalObjectId`), read through the
/// oid index; any made since has a `pg_depend` row on its schema, read through the reference
/// index. (Except in pg_catalog, whose dependents are not recorded: only a superuser running the
/// server with `allow_system_table_mods` can add a relation there.)
const CATALOG_RELATIONS: &str = "SELECT c.relname::text FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid < 16384 AND n.nspname IN ('pg_catalog', 'information_schema') \
     UNION SELECT c.relname::text FROM pg_catalog.pg_namespace n \
     JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.refobjid = n.oid \
       AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
     JOIN pg_catalog.pg_class c ON c.oid = d.objid \
     WHERE n.nspname IN ('pg_catalog', 'information_schema')";

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
    /// The last part of the dump, held back from psql ([`stream_deferring`]): checked, aimed,
    /// in order.
    pub deferred: Vec<Deferred>,
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

/// The same check on its own thread, fed the dump's bytes as they stream past (a backup checks
/// what it wrote as it writes it): `feed` each piece, then `finish` for the verdict.
pub struct Beside {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: std::thread::JoinHandle<Result<(), CheckError>>,
}

impl Beside {
    pub fn start(scope: Scope) -> Beside {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let thread = std::thread::spawn(move || {
            let input = Pieces {
                rx,
                piece: Vec::new(),
                at: 0,
            };
            check(input, &scope).map(|_| ())
        });
        Beside { tx: Some(tx), thread }
    }

    /// One more piece; false once the check has stopped (it has refused the dump).
    pub fn feed(&self, piece: &[u8]) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(piece.to_vec()).is_ok())
    }

    pub fn finish(mut self) -> Result<(), CheckError> {
        drop(self.tx.take());
        self.thread
            .join()
            .unwrap_or_else(|_| Err(CheckError::Read(std::io::Error::other("the check panicked"))))
    }
}

/// The pieces a [`Beside`] is fed, read as one stream.
struct Pieces {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(p) => (self.piece, self.at) = (p, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads the whole dump and checks every statement. Nothing is executed.
pub fn check(input: impl Read, scope: &Scope) -> Result<Checked, CheckError> {
    let (checked, outcome) = run(input, scope, None, None);
    outcome.map(|()| checked)
}

/// Checks the dump statement by statement, writing each one to `out` (psql's stdin) only once it
/// has passed, as the check decided. What was found comes back whatever happened (it names the
/// dump's lines in psql's errors); the outcome says whether the whole dump passed and was written.
/// A dump without its closing line passes here: `complete` says so, and the caller must not commit.
pub fn stream(input: impl Read, scope: &Scope, out: &mut dyn Write) -> (Checked, Result<(), CheckError>) {
    run(input, scope, Some(out), None)
}

/// [`stream`], holding back the dump's last part — from the first index, key or foreign key after
/// its data, everything — for the caller to build in parallel once psql has committed the rows
/// (`Checked::deferred`). Should a COPY come after that point (pg_dump never writes one there), what
/// was held back is sent to psql first, in its place, and nothing more is held back.
pub fn stream_deferring(input: impl Read, scope: &Scope, out: &mut dyn Write) -> (Checked, Result<(), CheckError>) {
    run(input, scope, Some(out), Some(Deferring::default()))
}

/// Where the holding back of the last part stands.
#[derive(Default)]
struct Deferring {
    seen_copy: bool,
    active: bool,
    /// A COPY came after the last part began: nothing more is held back.
    over: bool,
}

fn run(
    mut input: impl Read,
    scope: &Scope,
    out: Option<&mut dyn Write>,
    defer: Option<Deferring>,
) -> (Checked, Result<(), CheckError>) {
    let mut lexer = Lexer::default();
    let mut checker = Checker {
        scope,
        own_first: false,
        restrict: None,
        unrestricted: false,
        checked: Checked::default(),
        out,
        defer,
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
    defer: Option<Deferring>,
}

impl Checker<'_, '_> {
    /// The verdict for psql once the last part is held back: `Blank` for a statement kept for
    /// later; a COPY after the last part began sends what was kept first.
    fn hold_back(&mut self, text: &str, verdict: Verdict, kind: Kind) -> Result<Verdict, Stop> {
        let Some(d) = self.defer.as_mut() else {
            return Ok(verdict);
        };
        if matches!(verdict, Verdict::CopyIn | Verdict::CopyInRewritten(_)) {
            d.seen_copy = true;
            if d.active {
                d.active = false;
                d.over = true;
                let kept = std::mem::take(&mut self.checked.deferred);
                if let Some(out) = self.out.as_mut() {
                    for s in kept {
                        out.write_all(s.sql.as_bytes()).map_err(Stop::Write)?;
                        out.write_all(b"\n").map_err(Stop::Write)?;
                    }
                }
            }
            return Ok(verdict);
        }
        let starts = d.seen_copy && !d.over && matches!(kind, Kind::Index | Kind::ForeignKey);
        if !(d.active || starts) {
            return Ok(verdict);
        }
        let sql = match verdict {
            Verdict::Forward => text.trim().to_string(),
            Verdict::Rewritten(t) | Verdict::Replace(t) => t.trim().to_string(),
            other => return Ok(other),
        };
        d.active = true;
        self.checked.deferred.push(Deferred { sql, kind });
        Ok(Verdict::Blank)
    }
}

impl Sink for Checker<'_, '_> {
    fn statement(&mut self, text: &[u8], line: u64, last_line: u64) -> Result<Verdict, Stop> {
        let refuse = |reason: String| Stop::Refused(Refusal { line, reason });
        if self.unrestricted {
            return Err(refuse("SQL after the dump's closing \\unrestrict".into()));
        }
        let text = std::str::from_utf8(text).map_err(|_| refuse("text that is not valid UTF-8".into()))?;
        let checked = examine(text, self.scope, &mut self.own_first).map_err(refuse)?;
        if checked.verdict == Verdict::Blank {
            self.checked.skipped += 1;
        }
        if matches!(checked.verdict, Verdict::CopyIn | Verdict::CopyInRewritten(_)) {
            self.checked.copies.push((last_line, checked.copy_table));
        }
        self.hold_back(text, checked.verdict, checked.kind)
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

/// The most tokens one statement may have (see [`bound::tokens`]). Parsing costs memory in
/// proportion to the parse tree: about 2 KB of RSS per token at worst (multi-row `VALUES`:
/// `cargo bench --bench guard` measured 222 MB at 100,000 tokens), so this bounds one
/// statement's check to about 110 MB. pg_dump writes one row per `INSERT` and a function or view
/// per statement: a schema's statements are far below it.
pub const MAX_TOKENS: usize = 50_000;

/// Above this many tokens a statement is checked on a thread of its own with a large stack: the
/// tree's depth (a long chain of operators) is bounded by its tokens, and parsing, reading and
/// freeing the tree all recurse.
const DEEP_TOKENS: usize = 200;

/// What [`examine`] decided about one statement.
struct Examined {
    verdict: Verdict,
    copy_table: String,
    /// What the statement is, for the last part's order ([`crate::restore::post`]).
    kind: Kind,
}

/// Checks one statement's text (which psql would send as one): its size, then its parse tree
/// against the rules.
fn examine(text: &str, scope: &Scope, own_first: &mut bool) -> Result<Examined, String> {
    let Some(from) = scope.dumped_as.as_deref() else {
        return examine_bounded(text, scope, own_first);
    };
    let aimed = retarget::retarget(text, from, &scope.schema);
    let mut examined = examine_bounded(&aimed, scope, own_first)?;
    if let std::borrow::Cow::Owned(new) = aimed {
        examined.verdict = match examined.verdict {
            Verdict::Forward => Verdict::Rewritten(new),
            Verdict::CopyIn => Verdict::CopyInRewritten(new),
            other => other,
        };
    }
    Ok(examined)
}

fn examine_bounded(text: &str, scope: &Scope, own_first: &mut bool) -> Result<Examined, String> {
    let tokens = bound::tokens(text.as_bytes());
    if tokens > MAX_TOKENS {
        return Err(format!(
            "a statement of {tokens} tokens, more than the {MAX_TOKENS} one statement may have (pg_dump writes one row per INSERT, and no schema object is this large)"
        ));
    }
    if tokens <= DEEP_TOKENS {
        return examine_tree(text, scope, own_first);
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("guard-deep".into())
            .stack_size(1 << 30)
            .spawn_scoped(s, || examine_tree(text, scope, own_first))
            .map_err(|e| format!("cannot be examined ({e})"))?
            .join()
            .map_err(|_| "cannot be examined (the check panicked)".to_string())?
    })
}

fn examine_tree(text: &str, scope: &Scope, own_first: &mut bool) -> Result<Examined, String> {
    let parsed = pg_query::parse(text, 0).map_err(|e| format!("not valid SQL ({e})"))?;
    let stmts = &parsed.protobuf.stmts;
    let mut verdict = Verdict::Forward;
    let mut kind = Kind::Other;
    for raw in stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        let start = (raw.stmt_location.max(0) as usize).min(text.len());
        let end = match raw.stmt_len {
            0 => text.len(),
            n => (start + n as usize).min(text.len()),
        };
        let json = serde_json::to_value(node).map_err(|e| format!("cannot be examined ({e})"))?;
        let mut ctx = Ctx {
            scope,
            own_first: &mut *own_first,
            text: &text[start..end],
        };
        let v = rules::check(&json, &mut ctx)?;
        kind = crate::restore::post::kind_of(&json);
        if v != Verdict::Forward && stmts.len() > 1 {
            return Err("several statements in one, which psql would send together".into());
        }
        verdict = v;
    }
    let copy_table = if verdict == Verdict::CopyIn {
        copy_table(&parsed)
    } else {
        String::new()
    };
    Ok(Examined {
        verdict,
        copy_table,
        kind,
    })
}

/// Checks one statement the tool sends itself (a json backup's structure), never through psql:
/// it must be exactly one statement, and pass. Returns what to run: the statement, the tool's
/// replacement for it, or nothing when it is left out (ownership, privileges).
pub fn single(text: &str, scope: &Scope, own_first: &mut bool) -> Result<Option<String>, String> {
    let trimmed = text.trim_end();
    let text = if trimmed.ends_with(';') {
        format!("{trimmed}\n")
    } else {
        format!("{trimmed}\n;\n")
    };
    let mut lexer = Lexer::default();
    let mut one = One {
        scope,
        own_first,
        seen: 0,
        run: None,
    };
    let fed = lexer
        .feed(text.as_bytes(), &mut one)
        .and_then(|()| lexer.finish(&mut one));
    match fed {
        Err(Stop::Refused(r)) => return Err(r.reason),
        Err(Stop::Write(e)) => return Err(e.to_string()),
        Ok(()) => {}
    }
    match one.seen {
        1 => Ok(one.run),
        0 => Err("an empty statement".into()),
        _ => Err("several statements in one".into()),
    }
}

/// The [`Sink`] of [`single`]: one statement, no meta-command, no COPY.
struct One<'s, 'b> {
    scope: &'s Scope,
    own_first: &'b mut bool,
    seen: usize,
    run: Option<String>,
}

impl Sink for One<'_, '_> {
    fn statement(&mut self, text: &[u8], line: u64, _last_line: u64) -> Result<Verdict, Stop> {
        let refuse = |reason: String| Stop::Refused(Refusal { line, reason });
        self.seen += 1;
        if self.seen > 1 {
            return Err(refuse("several statements in one".into()));
        }
        let sql = std::str::from_utf8(text).map_err(|_| refuse("text that is not valid UTF-8".into()))?;
        let examined = examine(sql, self.scope, self.own_first).map_err(refuse)?;
        self.run = match &examined.verdict {
            Verdict::Forward => Some(sql.trim().to_string()),
            Verdict::Replace(s) => Some(s.clone()),
            Verdict::Rewritten(s) => Some(s.trim().to_string()),
            Verdict::Blank => None,
            Verdict::CopyIn | Verdict::CopyInRewritten(_) => {
                return Err(refuse("a COPY, which only the loader runs".into()))
            }
        };
        // The lexer is told to leave it out: nothing is written anywhere.
        Ok(Verdict::Blank)
    }

    fn meta(&mut self, _meta: Meta, line: u64) -> Result<(), Stop> {
        Err(Stop::Refused(Refusal {
            line,
            reason: "a psql meta-command".into(),
        }))
    }

    fn output(&mut self, _bytes: &[u8]) -> Result<(), Stop> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
