//! The loader: a json dump into the schema's existing tables (or, for verify, into temporary copies),
//! in one transaction.

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
use super::structure::{create_if_missing, Structure};
use super::{
    tables, Header, SequenceValue, TableSpec, BATCH, FORMAT, FORMAT_VERSION, OLDEST_READABLE_VERSION, VALUE_SETTINGS,
};
use crate::pg::catalog::{insert_history, Catalog};
use crate::pg::sql::{literal, qualified, quote_ident};
use crate::pg::target::DbTarget;

/// What a json restore should do around the load.
pub struct JsonRestore<'a> {
    pub schema: &'a str,
    pub catalog: &'a Catalog,
    /// Carry over every row of the live history the dump lacks (by id, whatever its date).
    pub keep_history: bool,
    /// Verify only: load into temporary copies of the tables, check the foreign keys between them,
    /// and roll back. The live tables are only read (the application keeps working meanwhile).
    pub verify_only: bool,
    pub lock_timeout: Duration,
    /// Where to ask, on a fresh connection, whether a COMMIT whose answer was lost went through.
    pub reconnect: Option<&'a DbTarget>,
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
            crate::pg::lock::timeout_ms(opts.lock_timeout)
        ))
        .await?;
    let xid: i64 = client
        .query_typed("SELECT pg_catalog.txid_current()", &[])
        .await?
        .first()
        .map(|r| r.get(0))
        .unwrap_or(0);
    let result = restore_inner(client, input, opts).await;
    match (&result, opts.verify_only) {
        // The COMMIT and the caller's report are one step for a stop; a COMMIT whose answer was
        // lost is settled from the server (pg_xact_status), not guessed.
        (Ok(_), false) => match crate::stop::shield() {
            Some(_commit) => {
                if let Err(e) = client.batch_execute("COMMIT").await {
                    return commit_lost(e, xid, opts).await.map(|()| result.unwrap_or_default());
                }
            }
            None => {
                client.batch_execute("ROLLBACK").await?;
                return Err(crate::stop::Stopped.into());
            }
        },
        _ => client.batch_execute("ROLLBACK").await?,
    }
    result
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
enum Event {
    Header(Header),
    Structure(Box<Structure>),
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
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&header.format_version) {
        anyhow::bail!(
            "this dump is in json format version {}, written by tenant-backup {}; this version reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION} only: restore it with tenant-backup {}",
            header.format_version,
            header.tool_version,
            header.tool_version
        );
    }
    // Version 3 carries the structure: a schema that is gone is created again (before the load
    // only what the rows need; keys, indexes and foreign keys after it).
    let structure = match header.format_version {
        2 => None,
        _ => match rx.recv().await.context("the dump ends after its header")?? {
            Event::Structure(s) => Some(s),
            _ => anyhow::bail!("the dump has no structure section after its header: it is damaged"),
        },
    };
    let created = create_if_missing(client, &header.schema, structure.as_deref(), opts).await?;
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
    if live.is_empty() {
        anyhow::bail!(
            "json backups hold rows, not tables, and {schema} has no tables (was it dropped?): recreate them first by running the application's migrations for this tenant (django-tenants: `python manage.py migrate_schemas --schema={schema}`), then restore again; or restore a sql or custom backup, which recreates the schema itself"
        );
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "the schema does not match the backup ({}): json backups hold rows, not tables, so run the application's migrations for this tenant first",
            problems.join("; ")
        );
    }

    // Where each table of the dump is loaded: the live table, or (verify) a temporary copy of it.
    let mut dest: BTreeMap<String, String> = BTreeMap::new();
    let records = opts.catalog.records_in(schema);
    let has_records = live.iter().any(|t| t.name == opts.catalog.records_table);
    let mut rebuild = Rebuild::default();
    if opts.verify_only {
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
        for t in &live {
            dest.insert(t.name.clone(), qualified(schema, &t.name));
        }
        if opts.keep_history && has_records {
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE tb_history ON COMMIT DROP AS SELECT * FROM {records}"
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
                    let q = literal(&qualified(schema, &s.name));
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
            Event::Header(_) | Event::Structure(_) | Event::Rows { .. } => {
                anyhow::bail!("a second header in the dump")
            }
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
    if let (true, Some(s)) = (created, &structure) {
        s.create_post_data(client, schema).await?;
    }
    if opts.keep_history && has_records {
        let users = opts.catalog.users_in(schema);
        client
            .batch_execute(&insert_history(&records, &users, "tb_history o"))
            .await
            .context("carrying the history over")?;
    }
    Ok(counts)
}
