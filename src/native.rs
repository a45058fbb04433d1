//! The native `json` format: no pg_dump at all, only the driver. One consistent snapshot
//! (`REPEATABLE READ READ ONLY`) of every table of the schema, streamed with
//! `COPY (SELECT row_to_json(…)) TO STDOUT` as JSON Lines:
//!
//! ```text
//! {"format":"tenant-backup-jsonl","format_version":1,…,"tables":[{"name":…,"columns":[…]}…]}   header
//! ["table","appointments_patient"]                                                              a table starts
//! {"id":1,"first_name":"Ana",…}                                                                 its rows
//! ["sequences",[{"name":…,"last_value":…,"is_called":…}]]
//! ["end",{"tables":N,"rows":M}]
//! ```
//!
//! Rows are objects and markers are arrays, so no column name can be mistaken for a marker. json and
//! jsonb columns are written as text, so SQL NULL, JSON `null` and `''` stay three different things.
//! Restore loads into the existing tables (the application's migrations define them, as with
//! `loaddata`) in one transaction.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::ident::quote_ident;
use crate::records::Catalog;
use crate::restore::{insert_history, literal};
use crate::spool::ProducerError;

pub const FORMAT: &str = "tenant-backup-jsonl";
pub const FORMAT_VERSION: u32 = 1;
/// COPY's CSV mode with quote and delimiter bytes that JSON text never holds: lines come out raw.
const RAW_LINES: &str = "(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')";

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
/// columns.
pub async fn tables(client: &Client, schema: &str) -> Result<Vec<TableSpec>> {
    let rows = client
        .query_typed(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname, a.attnum",
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

/// Streams the schema into `tx` as JSON Lines and returns each table's row count. Runs its own
/// snapshot transaction on `client` (a session connection).
pub async fn dump(
    client: &Client,
    schema: &str,
    server_version: &str,
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
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
    tx: &mpsc::Sender<io::Result<Vec<u8>>>,
) -> Result<BTreeMap<String, u64>> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
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
    let send = |bytes: Vec<u8>| async move {
        tx.send(Ok(bytes))
            .await
            .map_err(|_| anyhow::anyhow!("the spool stopped"))
    };
    send(line(&header)).await?;
    let mut counts = BTreeMap::new();
    let mut total = 0u64;
    for t in &specs {
        send(line(&("table", &t.name))).await?;
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| {
                let q = quote_ident(&c.name);
                if c.type_name == "json" || c.type_name == "jsonb" {
                    format!("{q}::text AS {q}")
                } else {
                    q
                }
            })
            .collect();
        let sql = format!(
            "COPY (SELECT row_to_json(x)::text FROM (SELECT {} FROM {}.{}) x) TO STDOUT WITH {RAW_LINES}",
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
        let mut batch = Vec::with_capacity(256 * 1024);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {}", t.name))?;
            rows += memchr::memchr_iter(b'\n', &chunk).count() as u64;
            batch.extend_from_slice(&chunk);
            if batch.len() >= 256 * 1024 {
                send(std::mem::replace(&mut batch, Vec::with_capacity(256 * 1024))).await?;
            }
        }
        if !batch.is_empty() {
            send(batch).await?;
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
    send(line(&("sequences", &seqs))).await?;
    send(line(&(
        "end",
        serde_json::json!({"tables": specs.len(), "rows": total}),
    )))
    .await?;
    Ok(counts)
}

fn line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("serializable");
    out.push(b'\n');
    out
}

/// A blocking `Read` over the chunks the async dumper sends.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.current.len() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => {
                    self.current = bytes;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
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
    /// Roll back at the end (verify) instead of committing.
    pub rollback: bool,
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
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET CONSTRAINTS ALL DEFERRED",
            opts.lock_timeout.as_millis()
        ))
        .await?;
    let result = restore_inner(client, input, opts).await;
    match (&result, opts.rollback) {
        (Ok(_), false) => client.batch_execute("COMMIT").await.context("committing the restore")?,
        _ => client.batch_execute("ROLLBACK").await?,
    }
    result
}

async fn restore_inner(
    client: &Client,
    input: Box<dyn BufRead + Send>,
    opts: &JsonRestore<'_>,
) -> Result<BTreeMap<String, u64>> {
    let schema = opts.schema;
    // Lines are read on a blocking thread and handed over in batches.
    let (tx, mut rx) = mpsc::channel::<io::Result<Vec<u8>>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut input = input;
        loop {
            let mut buf = Vec::new();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let header_line = rx.recv().await.context("the dump is empty")??;
    let header: Header = serde_json::from_slice(&header_line).context("the dump has no tenant-backup json header")?;
    if header.format != FORMAT || header.format_version > FORMAT_VERSION {
        anyhow::bail!("unsupported dump format {} v{}", header.format, header.format_version);
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

    let records = format!("{}.{}", quote_ident(schema), quote_ident(&opts.catalog.records_table));
    let has_records = live.iter().any(|t| t.name == opts.catalog.records_table);
    if let (Some(since), true) = (opts.keep_history_since, has_records) {
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE tb_history ON COMMIT DROP AS SELECT * FROM {records} WHERE created_at >= {}::timestamptz",
                literal(&since.to_rfc3339())
            ))
            .await?;
    }
    let all: Vec<String> = live
        .iter()
        .map(|t| format!("{}.{}", quote_ident(schema), quote_ident(&t.name)))
        .collect();
    client
        .batch_execute(&format!("TRUNCATE {}", all.join(", ")))
        .await
        .context("emptying the tables")?;
    client
        .batch_execute("CREATE TEMP TABLE tb_rows (line text) ON COMMIT DROP")
        .await?;

    let mut counts = BTreeMap::new();
    let mut current: Option<&TableSpec> = None;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut ended = false;
    while let Some(line) = rx.recv().await {
        let line = line.context("reading the dump (corrupt or truncated object)")?;
        if line.first() == Some(&b'{') {
            if current.is_none() {
                anyhow::bail!("a row before any table marker: the dump is damaged");
            }
            pending.push(line);
            if pending.len() >= 5000 {
                copy_rows(client, &mut pending).await?;
            }
            continue;
        }
        // A marker: finish the table being loaded first.
        if let Some(t) = current.take() {
            copy_rows(client, &mut pending).await?;
            counts.insert(t.name.clone(), load_table(client, schema, t, &live).await?);
        }
        let marker: serde_json::Value = serde_json::from_slice(&line).context("a damaged line in the dump")?;
        match marker[0].as_str() {
            Some("table") => {
                let name = marker[1].as_str().unwrap_or_default();
                current = Some(
                    header
                        .tables
                        .iter()
                        .find(|t| t.name == name)
                        .context("a table missing from the header")?,
                );
            }
            Some("sequences") => {
                let seqs: Vec<SequenceValue> = serde_json::from_value(marker[1].clone())?;
                for s in seqs {
                    let q = format!("{}.{}", quote_ident(schema), quote_ident(&s.name));
                    if let Some(v) = s.last_value {
                        client
                            .batch_execute(&format!(
                                "SELECT setval({}, {v}, {}) WHERE to_regclass({}) IS NOT NULL",
                                literal(&q),
                                s.is_called,
                                literal(&q)
                            ))
                            .await?;
                    }
                }
            }
            Some("end") => ended = true,
            _ => anyhow::bail!("an unknown marker in the dump"),
        }
    }
    reader.await.ok();
    if !ended {
        anyhow::bail!("the dump is truncated (no end marker)");
    }
    if let (Some(_), true) = (opts.keep_history_since, has_records) {
        let users = format!("{}.{}", quote_ident(schema), quote_ident("users_user"));
        client
            .batch_execute(&insert_history(&records, &users, "tb_history o"))
            .await
            .context("carrying the newer history over")?;
    }
    Ok(counts)
}

async fn copy_rows(client: &Client, pending: &mut Vec<Vec<u8>>) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let sink = client
        .copy_in(&format!("COPY tb_rows (line) FROM STDIN WITH {RAW_LINES}"))
        .await?;
    futures::pin_mut!(sink);
    let mut buf = Vec::with_capacity(pending.iter().map(Vec::len).sum());
    for l in pending.drain(..) {
        buf.extend_from_slice(&l);
    }
    sink.send(bytes::Bytes::from(buf)).await?;
    sink.finish().await?;
    Ok(())
}

/// Moves the staged rows of one table into it: typed by the live table, json columns from text,
/// identity values kept, generated columns recomputed.
async fn load_table(client: &Client, schema: &str, t: &TableSpec, live: &[TableSpec]) -> Result<u64> {
    let live_t = live.iter().find(|l| l.name == t.name).context("table vanished")?;
    let mut defs = Vec::new();
    let mut names = Vec::new();
    let mut values = Vec::new();
    for c in &t.columns {
        let ty = live_t
            .columns
            .iter()
            .find(|l| l.name == c.name)
            .map(|l| l.type_name.clone())
            .unwrap_or_default();
        let q = quote_ident(&c.name);
        if ty == "json" || ty == "jsonb" {
            defs.push(format!("{q} text"));
            values.push(format!("x.{q}::{ty}"));
        } else {
            defs.push(format!("{q} {ty}"));
            values.push(format!("x.{q}"));
        }
        names.push(q);
    }
    let sql = format!(
        "INSERT INTO {}.{} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM tb_rows r, json_to_record(r.line::json) AS x({}); TRUNCATE tb_rows",
        quote_ident(schema),
        quote_ident(&t.name),
        names.join(", "),
        values.join(", "),
        defs.join(", ")
    );
    let counted = client
        .query_typed("SELECT count(*) FROM tb_rows", &[])
        .await?
        .first()
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap_or(0);
    client
        .batch_execute(&sql)
        .await
        .with_context(|| format!("loading {}", t.name))?;
    Ok(counted)
}
