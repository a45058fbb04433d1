//! The native `json` format: no pg_dump at all, only the driver. One consistent snapshot
//! (`REPEATABLE READ READ ONLY`) of every table of the schema, each streamed with
//! `COPY (SELECT …) TO STDOUT` and written as JSON Lines:
//!
//! ```text
//! {"format":"tenant-backup-jsonl","format_version":2,…,"tables":[{"name":…,"columns":[…]}…]}   header
//! ["table",{"name":"appointments_patient","columns":[{"name":"id","type":"bigint"},…]}]       a table starts
//! {"id":1,"first_name":"Ana","birth_date":"1980-02-29",…}                                     its rows
//! ["sequences",[{"name":…,"last_value":…,"is_called":…}]]
//! ["end",{"tables":N,"rows":M}]
//! ```
//!
//! Rows are objects and markers are arrays, so no column name can be mistaken for a marker. How
//! values are spelled is in [`codec`]. Restore loads into the existing tables (the application's
//! migrations define them, as with `loaddata`) in one transaction, with COPY, rebuilding the
//! schema's indexes and foreign keys after the load ([`rebuild`]).

mod codec;
mod rebuild;

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, CopyInSink};

use crate::backup::spool::ProducerError;
use crate::pg::catalog::Catalog;
use crate::pg::sql::quote_ident;
use crate::restore::{insert_history, literal};

use codec::{RowDecoder, RowEncoder};
use rebuild::Rebuild;

pub const FORMAT: &str = "tenant-backup-jsonl";
/// 2: values in PostgreSQL's text form (see [`codec`]); 1 (row_to_json) is no longer read.
pub const FORMAT_VERSION: u32 = 2;
/// How the server prints and reads values in both directions: pg_dump's settings, and UTC.
const VALUE_SETTINGS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; SET LOCAL TimeZone = 'UTC'";
/// Bytes handed on at a time, each way.
const BATCH: usize = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub format_version: u32,
    pub tool_version: String,
    pub schema: String,
    pub server_version: String,
    pub created_at: DateTime<Utc>,
    pub tables: Vec<TableSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SequenceValue {
    name: String,
    last_value: Option<i64>,
    is_called: bool,
}

/// The schema's base tables in foreign-key order (referenced first), with their non-generated
/// columns. A partitioned table's rows are read and written through the partitioned table itself,
/// so its partitions are not listed.
pub async fn tables(client: &Client, schema: &str) -> Result<Vec<TableSpec>> {
    let rows = client
        .query_typed(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname, a.attnum",
            &[(&schema, Type::TEXT)],
        )
        .await?;
    let mut specs: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for r in rows {
        specs.entry(r.get(0)).or_default().push(Column {
            name: r.get(1),
            type_name: r.get(2),
        });
    }
    let deps = client
        .query_typed(
            "SELECT c.relname::text, r.relname::text FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE k.contype = 'f' AND n.nspname = $1 AND rn.nspname = $1 AND c.oid <> r.oid",
            &[(&schema, Type::TEXT)],
        )
        .await?;
    let mut needs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in deps {
        needs.entry(d.get(0)).or_default().push(d.get(1));
    }
    // Kahn's order; tables in a cycle (rare, and their keys are deferrable in Django) go last.
    let mut done: Vec<String> = Vec::new();
    let mut left: Vec<String> = specs.keys().cloned().collect();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|t| {
                needs
                    .get(*t)
                    .is_none_or(|n| n.iter().all(|d| done.contains(d) || !specs.contains_key(d)))
            })
            .cloned()
            .collect();
        let next = if ready.is_empty() { vec![left[0].clone()] } else { ready };
        left.retain(|t| !next.contains(t));
        done.extend(next);
    }
    Ok(done
        .into_iter()
        .map(|name| TableSpec {
            columns: specs.remove(&name).unwrap_or_default(),
            name,
        })
        .collect())
}

/// What the dumper hands to the encoding side.
pub enum Piece {
    /// A finished line (header, markers).
    Line(Vec<u8>),
    /// The next table: its marker line is written and its rows follow.
    Table(TableSpec),
    /// COPY text rows of the current table, cut anywhere.
    Rows(Vec<u8>),
}

/// Streams the schema into `tx` and returns each table's row count. Runs its own snapshot
/// transaction on `client` (a session connection).
pub async fn dump(
    client: &Client,
    schema: &str,
    server_version: &str,
    tx: mpsc::Sender<io::Result<Piece>>,
) -> Result<BTreeMap<String, u64>> {
    let result = dump_inner(client, schema, server_version, &tx).await;
    let _ = client.batch_execute("COMMIT").await;
    if let Err(e) = &result {
        let _ = tx.send(Err(io::Error::other(ProducerError(format!("{e:#}"))))).await;
    }
    result
}

async fn dump_inner(
    client: &Client,
    schema: &str,
    server_version: &str,
    tx: &mpsc::Sender<io::Result<Piece>>,
) -> Result<BTreeMap<String, u64>> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {VALUE_SETTINGS}"
        ))
        .await?;
    let specs = tables(client, schema).await.context("reading the schema's tables")?;
    if specs.is_empty() {
        anyhow::bail!("schema {schema:?} has no tables (does it exist?)");
    }
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        schema: schema.into(),
        server_version: server_version.into(),
        created_at: Utc::now(),
        tables: specs.clone(),
    };
    let send = |piece: Piece| async move {
        tx.send(Ok(piece))
            .await
            .map_err(|_| anyhow::anyhow!("the spool stopped"))
    };
    send(Piece::Line(line(&header))).await?;
    let mut counts = BTreeMap::new();
    let mut total = 0u64;
    for t in &specs {
        send(Piece::Table(t.clone())).await?;
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!(
            "COPY (SELECT {} FROM {}.{}) TO STDOUT",
            cols.join(", "),
            quote_ident(schema),
            quote_ident(&t.name)
        );
        let stream = client
            .copy_out(&sql)
            .await
            .with_context(|| format!("reading {}", t.name))?;
        futures::pin_mut!(stream);
        let mut rows = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {}", t.name))?;
            rows += memchr::memchr_iter(b'\n', &chunk).count() as u64;
            batch.extend_from_slice(&chunk);
            if batch.len() >= BATCH {
                send(Piece::Rows(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).await?;
            }
        }
        if !batch.is_empty() {
            send(Piece::Rows(batch)).await?;
        }
        total += rows;
        counts.insert(t.name.clone(), rows);
    }
    let seqs = client
        .query_typed(
            "SELECT sequencename::text, last_value, last_value IS NOT NULL FROM pg_sequences WHERE schemaname = $1 ORDER BY 1",
            &[(&schema, Type::TEXT)],
        )
        .await?;
    let seqs: Vec<SequenceValue> = seqs
        .iter()
        .map(|r| SequenceValue {
            name: r.get(0),
            last_value: r.get(1),
            is_called: r.get(2),
        })
        .collect();
    send(Piece::Line(line(&("sequences", &seqs)))).await?;
    send(Piece::Line(line(&(
        "end",
        serde_json::json!({"tables": specs.len(), "rows": total}),
    ))))
    .await?;
    Ok(counts)
}

fn line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("serializable");
    out.push(b'\n');
    out
}

/// A blocking `Read` of the finished JSON Lines: it takes the dumper's pieces and encodes the rows
/// on the spool's thread, beside the compression, while the server is busy with the next ones.
pub struct JsonLinesReader {
    rx: mpsc::Receiver<io::Result<Piece>>,
    encoder: Option<RowEncoder>,
    current: Vec<u8>,
    pos: usize,
}

impl JsonLinesReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Piece>>) -> Self {
        JsonLinesReader {
            rx,
            encoder: None,
            current: Vec::new(),
            pos: 0,
        }
    }

    /// Fills `current` with the next piece's bytes; false at the end.
    fn next_piece(&mut self) -> io::Result<bool> {
        self.current.clear();
        self.pos = 0;
        let finish = |encoder: &Option<RowEncoder>| encoder.as_ref().map_or(Ok(()), RowEncoder::finish);
        match self.rx.blocking_recv() {
            None => {
                finish(&self.encoder).map_err(io::Error::other)?;
                Ok(false)
            }
            Some(Err(e)) => Err(e),
            Some(Ok(Piece::Line(bytes))) => {
                finish(&self.encoder.take()).map_err(io::Error::other)?;
                self.current = bytes;
                Ok(true)
            }
            Some(Ok(Piece::Table(spec))) => {
                finish(&self.encoder).map_err(io::Error::other)?;
                self.encoder = Some(RowEncoder::new(&spec.columns));
                self.current = line(&("table", &spec));
                Ok(true)
            }
            Some(Ok(Piece::Rows(bytes))) => {
                let encoder = self
                    .encoder
                    .as_mut()
                    .ok_or_else(|| io::Error::other("rows before a table"))?;
                encoder.encode(&bytes, &mut self.current).map_err(io::Error::other)?;
                Ok(true)
            }
        }
    }
}

impl Read for JsonLinesReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.current.len() {
            if !self.next_piece()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What a json restore should do around the load.
pub struct JsonRestore<'a> {
    pub schema: &'a str,
    pub catalog: &'a Catalog,
    /// Carry history rows of at least this time over (the backup's own time).
    pub keep_history_since: Option<DateTime<Utc>>,
    /// Verify only: load into temporary copies of the tables, check the foreign keys between them,
    /// and roll back. The live tables are only read (the application keeps working meanwhile).
    pub verify_only: bool,
    pub lock_timeout: Duration,
}

/// Loads a json dump into the schema's existing tables in one transaction, returning the rows
/// loaded per table. Any error rolls everything back.
pub async fn restore(
    client: &Client,
    input: Box<dyn BufRead + Send>,
    opts: &JsonRestore<'_>,
) -> Result<BTreeMap<String, u64>> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET CONSTRAINTS ALL DEFERRED; {VALUE_SETTINGS}",
            opts.lock_timeout.as_millis()
        ))
        .await?;
    let result = restore_inner(client, input, opts).await;
    match (&result, opts.verify_only) {
        (Ok(_), false) => client.batch_execute("COMMIT").await.context("committing the restore")?,
        _ => client.batch_execute("ROLLBACK").await?,
    }
    result
}

/// Verify: every foreign key between the schema's tables must hold between their loaded copies (a
/// restore would fail on the first one that does not).
async fn check_foreign_keys(client: &Client, schema: &str, copies: &BTreeMap<String, String>) -> Result<()> {
    let fks = client
        .query_typed(
            "SELECT k.conname::text, c.relname::text, r.relname::text, \
               ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.i), \
               ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.i) \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE k.contype = 'f' AND k.convalidated AND n.nspname = $1 AND r.relnamespace = n.oid ORDER BY 1",
            &[(&schema, Type::TEXT)],
        )
        .await
        .context("reading the schema's foreign keys")?;
    for fk in fks {
        let (name, child, parent): (String, String, String) = (fk.get(0), fk.get(1), fk.get(2));
        let (cols, refs): (Vec<String>, Vec<String>) = (fk.get(3), fk.get(4));
        let (Some(c), Some(p)) = (copies.get(&child), copies.get(&parent)) else {
            continue;
        };
        // MATCH SIMPLE: a row with a NULL in the key references nothing.
        let not_null: Vec<String> = cols
            .iter()
            .map(|a| format!("c.{} IS NOT NULL", quote_ident(a)))
            .collect();
        let joined: Vec<String> = cols
            .iter()
            .zip(&refs)
            .map(|(a, b)| format!("p.{} = c.{}", quote_ident(b), quote_ident(a)))
            .collect();
        let broken: i64 = client
            .query_typed(
                &format!(
                    "SELECT count(*) FROM {c} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {p} p WHERE {})",
                    not_null.join(" AND "),
                    joined.join(" AND ")
                ),
                &[],
            )
            .await
            .with_context(|| format!("checking foreign key {name}"))?[0]
            .get(0);
        if broken > 0 {
            anyhow::bail!(
                "{broken} row(s) of {child} reference missing {parent} rows (foreign key {name}): a restore of this backup would fail"
            );
        }
    }
    Ok(())
}

/// What the reading thread finds in the dump, rows already turned into COPY text.
enum Event {
    Header(Header),
    Table(TableSpec),
    Rows { copy: Vec<u8>, rows: u64 },
    Sequences(Vec<SequenceValue>),
    End { rows: u64 },
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
        match input.read_until(b'\n', &mut line) {
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
            let marker: (String, serde_json::Value) = serde_json::from_slice(&line).context("a damaged line")?;
            Ok(Some(match marker.0.as_str() {
                "table" => {
                    let spec: TableSpec = serde_json::from_value(marker.1)?;
                    decoder = Some(RowDecoder::new(&spec.columns));
                    Event::Table(spec)
                }
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

async fn restore_inner(
    client: &Client,
    input: Box<dyn BufRead + Send>,
    opts: &JsonRestore<'_>,
) -> Result<BTreeMap<String, u64>> {
    let schema = opts.schema;
    let (tx, mut rx) = mpsc::channel::<Result<Event>>(8);
    let reader = tokio::task::spawn_blocking(move || read_events(input, tx));
    let header = match rx.recv().await.context("the dump is empty")?? {
        Event::Header(h) => h,
        _ => anyhow::bail!("the dump has no tenant-backup json header"),
    };
    if header.format != FORMAT {
        anyhow::bail!("unsupported dump format {:?}", header.format);
    }
    if header.format_version != FORMAT_VERSION {
        anyhow::bail!(
            "this dump is in json format version {}, written by tenant-backup {}; this version reads version {FORMAT_VERSION} only: restore it with tenant-backup {}",
            header.format_version,
            header.tool_version,
            header.tool_version
        );
    }
    // The tables must be there, with every column the dump holds.
    let live = tables(client, schema).await?;
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
    if !problems.is_empty() {
        anyhow::bail!(
            "the schema does not match the backup ({}): run the application's migrations for this tenant first",
            problems.join("; ")
        );
    }

    // Where each table of the dump is loaded: the live table, or (verify) a temporary copy of it.
    let mut dest: BTreeMap<String, String> = BTreeMap::new();
    let records = format!("{}.{}", quote_ident(schema), quote_ident(&opts.catalog.records_table));
    let has_records = live.iter().any(|t| t.name == opts.catalog.records_table);
    let mut rebuild = Rebuild::default();
    if opts.verify_only {
        for (i, t) in header.tables.iter().enumerate() {
            let copy = format!("pg_temp.tb_verify_{i}");
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE tb_verify_{i} (LIKE {}.{} INCLUDING ALL) ON COMMIT DROP",
                    quote_ident(schema),
                    quote_ident(&t.name)
                ))
                .await
                .with_context(|| format!("copying the structure of {}", t.name))?;
            dest.insert(t.name.clone(), copy);
        }
    } else {
        for t in &live {
            dest.insert(
                t.name.clone(),
                format!("{}.{}", quote_ident(schema), quote_ident(&t.name)),
            );
        }
        if let (Some(since), true) = (opts.keep_history_since, has_records) {
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE tb_history ON COMMIT DROP AS SELECT * FROM {records} WHERE created_at >= {}::timestamptz",
                    literal(&since.to_rfc3339())
                ))
                .await?;
        }
        let all: Vec<&str> = dest.values().map(String::as_str).collect();
        client
            .batch_execute(&format!("TRUNCATE {}", all.join(", ")))
            .await
            .context("emptying the tables")?;
        rebuild = Rebuild::plan(client, schema).await?;
        rebuild.drop_all(client).await?;
    }

    let mut counts = BTreeMap::new();
    let mut sink: Option<(String, Pin<Box<CopyInSink<Bytes>>>)> = None;
    let mut loaded = 0u64;
    let mut ended = false;
    while let Some(event) = rx.recv().await {
        let event = event?;
        if let Event::Rows { copy, rows } = event {
            let (name, s) = sink.as_mut().context("rows before a table")?;
            s.send(Bytes::from(copy))
                .await
                .with_context(|| format!("loading {name}"))?;
            *counts.entry(name.clone()).or_insert(0) += rows;
            loaded += rows;
            continue;
        }
        if let Some((name, mut s)) = sink.take() {
            s.as_mut().finish().await.with_context(|| format!("loading {name}"))?;
        }
        match event {
            Event::Table(t) => {
                if !header.tables.iter().any(|h| h.name == t.name && h.columns == t.columns) {
                    anyhow::bail!("table {} does not match the dump's header: the dump is damaged", t.name);
                }
                let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
                let copy = client
                    .copy_in(&format!("COPY {} ({}) FROM STDIN", dest[&t.name], cols.join(", ")))
                    .await
                    .with_context(|| format!("loading {}", t.name))?;
                counts.insert(t.name.clone(), 0);
                sink = Some((t.name, Box::pin(copy)));
            }
            Event::Sequences(_) if opts.verify_only => {}
            Event::Sequences(seqs) => {
                for s in seqs {
                    let q = literal(&format!("{}.{}", quote_ident(schema), quote_ident(&s.name)));
                    if let Some(v) = s.last_value {
                        client
                            .batch_execute(&format!(
                                "SELECT setval({q}, {v}, {}) WHERE to_regclass({q}) IS NOT NULL",
                                s.is_called
                            ))
                            .await?;
                    }
                }
            }
            Event::End { rows } => {
                if rows != loaded {
                    anyhow::bail!("the dump says it holds {rows} rows but {loaded} were read: it is damaged");
                }
                ended = true;
            }
            Event::Header(_) | Event::Rows { .. } => anyhow::bail!("a second header in the dump"),
        }
    }
    reader.await.context("the dump reader panicked")?;
    if !ended {
        anyhow::bail!("the dump is truncated (no end marker)");
    }
    if opts.verify_only {
        check_foreign_keys(client, schema, &dest).await?;
        return Ok(counts);
    }
    // Deferred checks still queued (foreign keys to tables outside the schema, which stay in place)
    // run now: the table cannot be altered while they are pending.
    client
        .batch_execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
        .await
        .context("checking the foreign keys to tables outside the schema")?;
    rebuild
        .create_all(client)
        .await
        .context("rebuilding the indexes and constraints after the load")?;
    if let (Some(_), true) = (opts.keep_history_since, has_records) {
        let users = format!("{}.{}", quote_ident(schema), quote_ident("users_user"));
        client
            .batch_execute(&insert_history(&records, &users, "tb_history o"))
            .await
            .context("carrying the newer history over")?;
    }
    Ok(counts)
}
