//! The loader. A version 3 dump (it carries its structure) loads exactly as a plain dump does:
//! into the restore's staging schema, in one transaction around the same SQL
//! ([`crate::restore::plan`]), it creates every object from its structure — each statement held to
//! the restore guard, aimed at the staging schema — loads the rows with COPY, then builds keys,
//! indexes and foreign keys; the caller swaps the staging schema in ([`crate::restore::stage`]). A
//! version 2 dump (rows only) loads into the tenant's existing tables. Verify does the same and
//! rolls back.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::{Client, CopyInSink};

use super::check::check_foreign_keys;
use super::codec::RowDecoder;
use super::rebuild::Rebuild;
use super::structure::Structure;
use super::{
    tables, Header, SequenceValue, TableSpec, BATCH, FORMAT, FORMAT_VERSION, OLDEST_READABLE_VERSION, VALUE_SETTINGS,
};
use crate::pg::catalog::{insert_history, Catalog};
use crate::pg::connect::describe_pg_error_without_data;
use crate::pg::sql::{literal, qualified, quote_ident};
use crate::pg::target::DbTarget;
use crate::restore::guard::Scope;
use crate::restore::post::Deferred;
use crate::restore::{Plan, Target};

/// What a json restore should do around the load.
pub struct JsonRestore<'a> {
    /// The schema the dump must have been taken of: the tenant's, or the one `--from-tenant`
    /// names. A dump of another schema is refused, whatever its file name or manifest says.
    pub source_schema: &'a str,
    /// Where the restore goes (verify: [`Target::Scratch`]).
    pub target: &'a Target,
    pub catalog: &'a Catalog,
    /// The SQL around the load of a version 3 dump, the same as a plain dump's.
    pub plan: &'a Plan,
    /// What the dump's structure may do: the restore guard's scope for `source_schema`.
    pub scope: &'a Scope,
    /// Version 2 only (rows into the existing tables): carry over every row of the live history
    /// the dump lacks (by id, whatever its date).
    pub keep_history: bool,
    /// Version 2 only: the schema the tables' previous rows are copied into before they are
    /// replaced (none with `--drop-previous`).
    pub keep_previous_as: Option<&'a str>,
    pub lock_timeout: Duration,
    /// Where to ask, on a fresh connection, whether a COMMIT whose answer was lost went through.
    pub reconnect: Option<&'a DbTarget>,
    /// Version 3: hold the structure's last part back (checked and aimed) for the caller to build
    /// in parallel once the rows are committed, instead of building it in the load's transaction.
    pub defer_post_data: bool,
}

impl JsonRestore<'_> {
    fn verify_only(&self) -> bool {
        matches!(self.target, Target::Scratch)
    }
}

/// Where a json dump was loaded.
#[derive(Debug)]
pub enum Loaded {
    /// Into the staging schema (the plan's), committed: the caller builds what is held back
    /// (keys, indexes, foreign keys, triggers…, with [`JsonRestore::defer_post_data`]) and swaps
    /// it in.
    Staged(Vec<Deferred>),
    /// Into the tenant's existing tables (format version 2, or a structure that does not carry
    /// every object), committed: there is nothing to swap.
    InPlace,
}

/// Loads a json dump in one transaction, returning the rows loaded per table. Any error rolls
/// everything back.
pub async fn restore(
    client: &Client,
    input: Box<dyn BufRead + Send>,
    opts: &JsonRestore<'_>,
) -> Result<(BTreeMap<String, u64>, Loaded)> {
    restore_on(client, &[], input, opts).await
}

/// [`restore`], with the rows of a dump that loads into the staging schema spread over `loaders`
/// (connections as the loader role, on the restore's settings: see
/// [`crate::restore::post::connect`]), each in a transaction of its own ([`super::parallel`]).
/// Without `loaders`, for verify, or when the last part is built here rather than by the caller
/// ([`JsonRestore::defer_post_data`]), everything runs in one transaction on `client`.
pub async fn restore_on(
    client: &Client,
    loaders: &[Client],
    input: Box<dyn BufRead + Send>,
    opts: &JsonRestore<'_>,
) -> Result<(BTreeMap<String, u64>, Loaded)> {
    let (tx, mut rx) = mpsc::channel::<Result<Event>>(8);
    let reader = tokio::task::spawn_blocking(move || read_events(input, tx));
    let (header, structure) = read_head(&mut rx, opts).await?;
    // A structure that does not carry every object of the schema (see `not_carried`) cannot
    // create it: its rows then load into the existing tables, as a version 2 dump's do.
    let structure = match structure {
        Some(s) if !s.not_carried.is_empty() => {
            if tables(client, opts.source_schema).await?.is_empty() {
                s.refuse_incomplete(opts.source_schema)?;
            }
            None
        }
        other => other,
    };
    if let Some(structure) = structure
        .as_deref()
        .filter(|_| !loaders.is_empty() && opts.defer_post_data && !opts.verify_only())
    {
        let result = super::parallel::load_staged(client, loaders, &header, structure, rx, opts).await;
        let result = match reader.await {
            Ok(()) => result,
            Err(_) => result.and(Err(anyhow::anyhow!("the dump reader panicked"))),
        };
        return result.map(|(counts, deferred)| (counts, Loaded::Staged(deferred)));
    }
    let begin = match &structure {
        Some(_) => opts.plan.prologue.clone(),
        None => {
            if !matches!(opts.target, Target::Replace { .. } | Target::Scratch) {
                anyhow::bail!(
                    "this json backup cannot create its schema (format version 2 holds rows only; a newer one that does not carry every object loads into the existing tables): --into and --from-tenant are not available for it"
                );
            }
            format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms';",
                crate::pg::lock::timeout_ms(opts.lock_timeout)
            )
        }
    };
    client.batch_execute(&begin).await?;
    client
        .batch_execute(&format!("SET CONSTRAINTS ALL DEFERRED; {VALUE_SETTINGS}"))
        .await?;
    let xid: i64 = client
        .query_typed("SELECT pg_catalog.txid_current()", &[])
        .await?
        .first()
        .map(|r| r.get(0))
        .unwrap_or(0);
    let mut deferred = Vec::new();
    let staged = structure.is_some();
    let result = match &structure {
        Some(structure) => load_new(client, &header, structure, rx, opts, &mut deferred).await,
        None => load_existing(client, &header, rx, opts).await,
    };
    let loaded = match staged {
        true => Loaded::Staged(deferred),
        false => Loaded::InPlace,
    };
    let result = match reader.await {
        Ok(()) => result,
        Err(_) => result.and(Err(anyhow::anyhow!("the dump reader panicked"))),
    };
    match (&result, opts.verify_only()) {
        // The COMMIT and the caller's report are one step for a stop; a COMMIT whose answer was
        // lost is settled from the server (pg_xact_status), not guessed.
        (Ok(_), false) => match crate::stop::shield() {
            Some(_commit) => {
                if let Err(e) = client.batch_execute("COMMIT").await {
                    return commit_lost(e, xid, opts)
                        .await
                        .map(|()| (result.unwrap_or_default(), loaded));
                }
            }
            None => {
                client.batch_execute("ROLLBACK").await?;
                return Err(crate::stop::Stopped.into());
            }
        },
        _ => client.batch_execute("ROLLBACK").await?,
    }
    result.map(|counts| (counts, loaded))
}

/// The header of a json dump (its first line), to say what a restore will do before it runs.
pub fn peek_header(mut input: Box<dyn BufRead + Send>) -> Result<Header> {
    let mut line = Vec::new();
    read_line(&mut input, &mut line).context("reading the dump (corrupt or truncated object)")?;
    serde_json::from_slice(&line).context("the dump has no tenant-backup json header")
}

/// Whether a json dump loads into the tenant's existing tables (format version 2, or a structure
/// that does not carry every object of the schema) rather than into a staging schema of its own.
pub fn loads_in_place(mut input: Box<dyn BufRead + Send>) -> Result<bool> {
    let mut line = Vec::new();
    read_line(&mut input, &mut line).context("reading the dump (corrupt or truncated object)")?;
    let header: Header = serde_json::from_slice(&line).context("the dump has no tenant-backup json header")?;
    if header.format_version == 2 {
        return Ok(true);
    }
    line.clear();
    read_line(&mut input, &mut line).context("reading the dump (corrupt or truncated object)")?;
    let marker: (String, serde_json::Value) =
        serde_json::from_slice(&line).map_err(|_| anyhow::anyhow!("a damaged line"))?;
    if marker.0 != "structure" {
        anyhow::bail!("the dump has no structure section after its header: it is damaged");
    }
    let structure: Structure = serde_json::from_value(marker.1)?;
    Ok(!structure.not_carried.is_empty())
}

/// The header and (version 3) the structure, checked before anything runs: the format, its
/// version, and the schema the dump was taken of.
async fn read_head(
    rx: &mut mpsc::Receiver<Result<Event>>,
    opts: &JsonRestore<'_>,
) -> Result<(Header, Option<Box<Structure>>)> {
    let header = match rx.recv().await.context("the dump is empty")?? {
        Event::Header(h) => h,
        _ => anyhow::bail!("the dump has no tenant-backup json header"),
    };
    if header.format != FORMAT {
        anyhow::bail!("unsupported dump format {:?}", header.format);
    }
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&header.format_version) {
        anyhow::bail!(
            "this dump is in json format version {}, written by tenant-backup {}; this version reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION} only: restore it with tenant-backup {}",
            header.format_version,
            header.tool_version,
            header.tool_version
        );
    }
    if header.schema != opts.source_schema {
        anyhow::bail!(
            "this json backup is of schema {}, not {}: it is not this tenant's backup, whatever its name or manifest says (if you mean to restore {}'s data here, say so with --from-tenant {})",
            header.schema,
            opts.source_schema,
            header.schema,
            header.schema
        );
    }
    // Version 3 carries the structure.
    let structure = match header.format_version {
        2 => None,
        _ => match rx.recv().await.context("the dump ends after its header")?? {
            Event::Structure(s) => Some(s),
            _ => anyhow::bail!("the dump has no structure section after its header: it is damaged"),
        },
    };
    Ok((header, structure))
}

/// COMMIT failed: if the connection was lost rather than the COMMIT refused, the server is asked
/// what happened.
async fn commit_lost(e: tokio_postgres::Error, xid: i64, opts: &JsonRestore<'_>) -> Result<()> {
    let error = anyhow::Error::new(e).context("committing the restore");
    let Some(target) = opts.reconnect.filter(|_| xid != 0) else {
        return Err(error);
    };
    match crate::pg::xact::committed(target, xid).await {
        Ok(Some(true)) => {
            tracing::warn!(
                "the connection was lost after COMMIT was sent; the server says transaction {xid} committed, so the restore is done"
            );
            Ok(())
        }
        Ok(Some(false)) => Err(error),
        _ => Err(error.context(format!(
            "the connection was lost at COMMIT and the server could not be asked whether transaction {xid} committed: look at the schema before doing anything else"
        ))),
    }
}

/// What the reading thread finds in the dump, rows already turned into COPY text.
pub(super) enum Event {
    Header(Header),
    Structure(Box<Structure>),
    Table(TableSpec),
    Rows { copy: Vec<u8>, rows: u64 },
    Sequences(Vec<SequenceValue>),
    End { rows: u64 },
}

/// The longest line a json dump may have: one row (its values as text) or one marker. A line is
/// held a few times over while it is decoded (`cargo bench --bench guard`: a 60 MiB row took
/// 258 MB), so this bounds a restore to about 130 MB; the dumper refuses to write a longer row (a
/// backup that says OK restores), and a line without end is refused, not held in memory.
pub const MAX_LINE: u64 = 32 << 20;

/// One line, up to [`MAX_LINE`] bytes.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let n = std::io::Read::take(input, MAX_LINE + 1).read_until(b'\n', line)?;
    if n as u64 > MAX_LINE {
        return Err(std::io::Error::other(format!(
            "a line longer than {} MiB, which tenant-backup never writes: the object is not a backup",
            MAX_LINE >> 20
        )));
    }
    Ok(n)
}

/// Reads and decodes the dump on a blocking thread, so that parsing runs beside the server's load.
fn read_events(mut input: Box<dyn BufRead + Send>, tx: mpsc::Sender<Result<Event>>) {
    let send = |e: Result<Event>| tx.blocking_send(e).is_ok();
    let mut decoder: Option<RowDecoder> = None;
    let mut copy = Vec::with_capacity(BATCH + BATCH / 4);
    let mut rows = 0u64;
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        match read_line(&mut input, &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                send(Err(
                    anyhow::Error::new(e).context("reading the dump (corrupt or truncated object)")
                ));
                return;
            }
        }
        let result = (|| -> Result<Option<Event>> {
            if number == 1 {
                let header: Header =
                    serde_json::from_slice(&line).context("the dump has no tenant-backup json header")?;
                return Ok(Some(Event::Header(header)));
            }
            if line.first() == Some(&b'{') {
                let decoder = decoder.as_mut().context("a row before any table marker")?;
                decoder.decode(&line, &mut copy)?;
                rows += 1;
                return Ok(None);
            }
            let marker: (String, serde_json::Value) =
                serde_json::from_slice(&line).map_err(|_| anyhow::anyhow!("a damaged line"))?;
            Ok(Some(match marker.0.as_str() {
                "table" => {
                    let spec: TableSpec = serde_json::from_value(marker.1)?;
                    decoder = Some(RowDecoder::new(&spec.columns));
                    Event::Table(spec)
                }
                "structure" => Event::Structure(Box::new(serde_json::from_value(marker.1)?)),
                "sequences" => Event::Sequences(serde_json::from_value(marker.1)?),
                "end" => Event::End {
                    rows: marker.1["rows"].as_u64().context("an end marker without a row count")?,
                },
                other => anyhow::bail!("an unknown marker {other:?}"),
            }))
        })();
        match result {
            Ok(None) if copy.len() < BATCH => continue,
            Ok(event) => {
                // Rows decoded so far go before the marker that ends them.
                if !copy.is_empty() {
                    let copy = std::mem::replace(&mut copy, Vec::with_capacity(BATCH + BATCH / 4));
                    if !send(Ok(Event::Rows { copy, rows })) {
                        return;
                    }
                    rows = 0;
                }
                if let Some(event) = event {
                    if !send(Ok(event)) {
                        return;
                    }
                }
            }
            Err(e) => {
                send(Err(e.context(format!("line {number} of the dump"))));
                return;
            }
        }
    }
}

/// A version 3 dump: everything is created from its structure in the staging schema (the guard's
/// scope is aimed there), loaded, completed, and the plan's epilogue run.
async fn load_new(
    client: &Client,
    header: &Header,
    structure: &Structure,
    rx: mpsc::Receiver<Result<Event>>,
    opts: &JsonRestore<'_>,
    deferred: &mut Vec<Deferred>,
) -> Result<BTreeMap<String, u64>> {
    let schema = opts.scope.schema.as_str();
    structure.create_pre_data(client, opts.scope).await?;
    let live = tables(client, schema).await?;
    let problems = missing_columns(header, &live, schema);
    if !problems.is_empty() {
        anyhow::bail!(
            "the backup's structure does not create what its rows need ({}): it is damaged",
            problems.join("; ")
        );
    }
    let dest: BTreeMap<String, String> = header
        .tables
        .iter()
        .map(|t| (t.name.clone(), qualified(schema, &t.name)))
        .collect();
    let counts = load_rows(client, header, rx, &dest, schema).await?;
    client
        .batch_execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))
        .context("checking the rows' constraints")?;
    if opts.defer_post_data && !opts.verify_only() {
        *deferred = held_back(structure, opts.scope)?;
    } else {
        structure.create_post_data(client, opts.scope).await?;
    }
    if !opts.verify_only() {
        let epilogue = &opts.plan.epilogue;
        let body = epilogue.strip_suffix("COMMIT;\n").unwrap_or(epilogue);
        client
            .batch_execute(body)
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))
            .context("putting the restored schema in place and carrying the history over")?;
    }
    Ok(counts)
}

/// The structure's last part, each statement checked and aimed as it would be when run.
pub(super) fn held_back(structure: &Structure, scope: &Scope) -> Result<Vec<Deferred>> {
    let mut own_first = false;
    let mut out = Vec::new();
    for d in &structure.post_data {
        let checked = crate::restore::guard::single(&d.sql, scope, &mut own_first).map_err(|why| {
            anyhow::anyhow!(
                "the backup's structure is refused at {}: {why} (the object is not what tenant-backup writes; nothing was changed)",
                d.object
            )
        })?;
        out.extend(checked.map(Deferred::new));
    }
    Ok(out)
}

/// Every table and column of the dump's header that `live` lacks.
pub(super) fn missing_columns(header: &Header, live: &[TableSpec], schema: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for t in &header.tables {
        match live.iter().find(|l| l.name == t.name) {
            None => problems.push(format!("table {schema}.{} is missing", t.name)),
            Some(l) => {
                for c in &t.columns {
                    if !l.columns.iter().any(|lc| lc.name == c.name) {
                        problems.push(format!("column {schema}.{}.{} is missing", t.name, c.name));
                    }
                }
            }
        }
    }
    problems
}

/// A version 2 dump (rows only): into the tenant's existing tables, or (verify) temporary copies
/// of them. Only the tables the dump holds are replaced, and their previous rows are first copied
/// into the pre-restore schema unless `--drop-previous`.
async fn load_existing(
    client: &Client,
    header: &Header,
    rx: mpsc::Receiver<Result<Event>>,
    opts: &JsonRestore<'_>,
) -> Result<BTreeMap<String, u64>> {
    let schema = opts.source_schema;
    if let Target::Replace { schema: target, .. } = opts.target {
        if target != schema {
            anyhow::bail!(
                "this json backup loads into {schema}'s own tables (it cannot create its schema), so --from-tenant is not available for it"
            );
        }
    }
    let live = tables(client, schema).await?;
    if live.is_empty() {
        anyhow::bail!(
            "this json backup (format version 2) holds rows, not tables, and {schema} has no tables (was it dropped?): recreate them first by running the application's migrations for this tenant (django-tenants: `python manage.py migrate_schemas --schema={schema}`), then restore again; or restore a newer backup, which recreates the schema itself"
        );
    }
    let problems = missing_columns(header, &live, schema);
    if !problems.is_empty() {
        anyhow::bail!(
            "the schema does not match the backup ({}): json backups of format version 2 hold rows, not tables, so run the application's migrations for this tenant first",
            problems.join("; ")
        );
    }

    // Where each table of the dump is loaded: the live table, or (verify) a temporary copy of it.
    let mut dest: BTreeMap<String, String> = BTreeMap::new();
    let records = opts.catalog.records_in(schema);
    let has_records = live.iter().any(|t| t.name == opts.catalog.records_table);
    let mut rebuild = Rebuild::default();
    if opts.verify_only() {
        for (i, t) in header.tables.iter().enumerate() {
            let copy = format!("pg_temp.tb_verify_{i}");
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE tb_verify_{i} (LIKE {} INCLUDING ALL) ON COMMIT DROP",
                    qualified(schema, &t.name)
                ))
                .await
                .with_context(|| format!("copying the structure of {}", t.name))?;
            dest.insert(t.name.clone(), copy);
        }
    } else {
        for t in &header.tables {
            dest.insert(t.name.clone(), qualified(schema, &t.name));
        }
        if opts.keep_history && has_records {
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE tb_history ON COMMIT DROP AS SELECT * FROM {records}"
                ))
                .await?;
        }
        if let Some(previous) = opts.keep_previous_as {
            let mut copy = format!("CREATE SCHEMA {};", quote_ident(previous));
            for t in &header.tables {
                copy.push_str(&format!(
                    " CREATE TABLE {} AS TABLE {};",
                    qualified(previous, &t.name),
                    qualified(schema, &t.name)
                ));
            }
            client
                .batch_execute(&copy)
                .await
                .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))
                .with_context(|| format!("keeping the previous rows in {previous}"))?;
        }
        // The keys go first: a table the dump does not hold (an application dumpdata covers only
        // the models that had rows) may reference one it replaces; they are checked when rebuilt.
        rebuild = Rebuild::plan(client, schema).await?;
        rebuild.drop_all(client).await?;
        let all: Vec<&str> = dest.values().map(String::as_str).collect();
        client
            .batch_execute(&format!("TRUNCATE {}", all.join(", ")))
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))
            .context("emptying the tables the backup holds")?;
    }
    let counts = load_rows(client, header, rx, &dest, schema).await?;
    if opts.verify_only() {
        check_foreign_keys(client, schema, &dest).await?;
        return Ok(counts);
    }
    // Deferred checks still queued (foreign keys to tables outside the schema, which stay in place)
    // run now: the table cannot be altered while they are pending.
    client
        .batch_execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))
        .context("checking the foreign keys to tables outside the schema")?;
    rebuild
        .create_all(client)
        .await
        .context("rebuilding the indexes and constraints after the load")?;
    if opts.keep_history && has_records {
        let users = opts.catalog.users_in(schema);
        client
            .batch_execute(&insert_history(&records, &users, "tb_history o"))
            .await
            .context("carrying the history over")?;
    }
    Ok(counts)
}

/// The rows, table by table, into `dest` (the dump's table → where it goes), and the sequences.
async fn load_rows(
    client: &Client,
    header: &Header,
    mut rx: mpsc::Receiver<Result<Event>>,
    dest: &BTreeMap<String, String>,
    schema: &str,
) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    let mut sink: Option<(String, Pin<Box<CopyInSink<Bytes>>>)> = None;
    let mut loaded = 0u64;
    let mut ended = false;
    let failed = |name: &str, e: tokio_postgres::Error| {
        anyhow::anyhow!("{}", describe_pg_error_without_data(&e)).context(format!("loading {name}"))
    };
    // Each marker is found by name: a header may name many tables.
    let specs: BTreeMap<&str, &TableSpec> = header.tables.iter().map(|t| (t.name.as_str(), t)).collect();
    while let Some(event) = rx.recv().await {
        let event = event?;
        if let Event::Rows { copy, rows } = event {
            let (name, s) = sink.as_mut().context("rows before a table")?;
            s.send(Bytes::from(copy)).await.map_err(|e| failed(name, e))?;
            *counts.entry(name.clone()).or_insert(0) += rows;
            loaded += rows;
            continue;
        }
        if let Some((name, mut s)) = sink.take() {
            s.as_mut().finish().await.map_err(|e| failed(&name, e))?;
        }
        match event {
            Event::Table(t) => {
                let Some(to) = dest
                    .get(&t.name)
                    .filter(|_| specs.get(t.name.as_str()).is_some_and(|h| h.columns == t.columns))
                else {
                    anyhow::bail!(
                        "table {:?} does not match the dump's header: the dump is damaged",
                        t.name
                    );
                };
                let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
                let copy = client
                    .copy_in(&format!("COPY {to} ({}) FROM STDIN", cols.join(", ")))
                    .await
                    .map_err(|e| failed(&t.name, e))?;
                counts.insert(t.name.clone(), 0);
                sink = Some((t.name, Box::pin(copy)));
            }
            Event::Sequences(seqs) => set_sequences(client, schema, &seqs).await?,
            Event::End { rows } => {
                if rows != loaded {
                    anyhow::bail!("the dump says it holds {rows} rows but {loaded} were read: it is damaged");
                }
                ended = true;
            }
            Event::Header(_) | Event::Structure(_) | Event::Rows { .. } => {
                anyhow::bail!("a second header in the dump")
            }
        }
    }
    if !ended {
        anyhow::bail!("the dump is truncated (no end marker)");
    }
    Ok(counts)
}

pub(super) async fn set_sequences(client: &Client, schema: &str, seqs: &[SequenceValue]) -> Result<()> {
    for s in seqs {
        let q = literal(&qualified(schema, &s.name));
        if let Some(v) = s.last_value {
            client
                .batch_execute(&format!(
                    "SELECT pg_catalog.setval({q}, {v}, {}) WHERE pg_catalog.to_regclass({q}) IS NOT NULL",
                    s.is_called
                ))
                .await?;
        }
    }
    Ok(())
}
