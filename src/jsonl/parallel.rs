//! A version 3 dump loaded into the restore's staging schema on several connections at once, as
//! `pg_restore -j` loads: the staging schema is private until the swap (and dropped by the
//! restore's [`Staged`](crate::restore::stage::Staged) guard on any failure), so its tables are
//! created and committed first, on the load's own connection, then their rows are loaded by every
//! loader connection at once, each in one transaction of its own, committed only once the whole
//! dump has been read and every row counted. The keys, indexes and foreign keys come after, built
//! by the caller ([`crate::restore::post`]).
//!
//! The dump is one stream, read in order; its rows come in pieces of whole rows (about
//! [`BATCH`](super::BATCH) bytes each), and each piece goes to whichever connection is free, with a
//! COPY into the piece's table open there. A table's rows may so be spread over several
//! connections: nothing in the staging schema checks one row against another until the keys are
//! built. What is held at once is bounded: a piece per connection waiting, and what each
//! connection has in flight.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::{Client, CopyInSink};

use super::load::{held_back, missing_columns, set_sequences, Event, JsonRestore};
use super::structure::Structure;
use super::{Header, VALUE_SETTINGS};
use crate::pg::connect::describe_pg_error_without_data;
use crate::pg::sql::{qualified, quote_ident};
use crate::restore::post::Deferred;

/// One piece of rows for the table `table` (its place in the dump's header), in COPY text.
struct Piece {
    table: usize,
    copy: Bytes,
}

/// Loads the dump (its header and structure already read from `rx`) into the staging schema:
/// the structure on `client`, committed; the rows (and the sequences) on `loaders`, committed once
/// all are in. A COMMIT whose answer is lost is settled by asking the server. Returns
/// the rows loaded per table and the structure's last part, checked and aimed, for the caller to
/// build. On an error nothing of the rows is committed unless a COMMIT failed half-way; either way
/// the caller drops the staging schema.
pub(super) async fn load_staged(
    client: &Client,
    loaders: &[Client],
    header: &Header,
    structure: &Structure,
    rx: mpsc::Receiver<Result<Event>>,
    opts: &JsonRestore<'_>,
) -> Result<(BTreeMap<String, u64>, Vec<Deferred>)> {
    // The last part is checked before a row is loaded: a refused statement refuses the dump now.
    let deferred = held_back(structure, opts.scope)?;
    create_structure(client, header, structure, opts).await?;
    let loaded = load_rows(loaders, header, rx, opts.scope.schema.as_str()).await;
    let (counts, xids) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            roll_back(loaders).await;
            return Err(e);
        }
    };
    // Nothing is visible before the swap: a stop asked for now rolls the rows back, one that
    // comes later waits for the COMMITs.
    let Some(_commit) = crate::stop::shield() else {
        roll_back(loaders).await;
        return Err(crate::stop::Stopped.into());
    };
    for (loader, xid) in loaders.iter().zip(xids) {
        commit(loader, xid, opts, "committing the rows loaded into the staging schema").await?;
    }
    Ok((counts, deferred))
}

/// The transaction id of the transaction `client` is in.
async fn xid(client: &Client) -> Result<i64> {
    Ok(client
        .query_one("SELECT pg_catalog.txid_current()", &[])
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))?
        .get(0))
}

/// COMMIT on `client`; when its answer is lost (the connection dropped), the server is asked on a
/// fresh connection whether transaction `xid` committed, and the load goes on if it did.
async fn commit(client: &Client, xid: i64, opts: &JsonRestore<'_>, what: &str) -> Result<()> {
    let Err(e) = client.batch_execute("COMMIT").await else {
        return Ok(());
    };
    let error = anyhow::anyhow!("{}", describe_pg_error_without_data(&e)).context(what.to_string());
    let Some(target) = opts.reconnect else {
        return Err(error);
    };
    match crate::pg::xact::committed(target, xid).await {
        Ok(Some(true)) => {
            tracing::warn!(
                "the connection was lost after COMMIT was sent; the server says transaction {xid} committed, so the load goes on"
            );
            Ok(())
        }
        _ => Err(error),
    }
}

/// The staging schema's tables (and everything else of the structure's first part), created and
/// committed in one transaction on `client`, with the plan's settings.
async fn create_structure(
    client: &Client,
    header: &Header,
    structure: &Structure,
    opts: &JsonRestore<'_>,
) -> Result<()> {
    client.batch_execute(&opts.plan.prologue).await?;
    let created = async {
        client
            .batch_execute(&format!("SET CONSTRAINTS ALL DEFERRED; {VALUE_SETTINGS}"))
            .await?;
        structure.create_pre_data(client, opts.scope).await?;
        let schema = opts.scope.schema.as_str();
        let problems = missing_columns(header, &super::tables(client, schema).await?, schema);
        if !problems.is_empty() {
            anyhow::bail!(
                "the backup's structure does not create what its rows need ({}): it is damaged",
                problems.join("; ")
            );
        }
        xid(client).await
    }
    .await;
    match created {
        Ok(xid) => commit(client, xid, opts, "committing the staging schema's tables").await,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The rows, read in order from `rx` and spread over `loaders`, and the sequences set on the first
/// of them once every row is in. Every table's rows are counted twice: as read from the dump and
/// as the server loaded them. Returns the rows per table and each loader's transaction id.
async fn load_rows(
    loaders: &[Client],
    header: &Header,
    mut rx: mpsc::Receiver<Result<Event>>,
    schema: &str,
) -> Result<(BTreeMap<String, u64>, Vec<i64>)> {
    let copies: Vec<String> = header
        .tables
        .iter()
        .map(|t| {
            let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
            format!("COPY {} ({}) FROM STDIN", qualified(schema, &t.name), cols.join(", "))
        })
        .collect();
    let names: Vec<&str> = header.tables.iter().map(|t| t.name.as_str()).collect();
    // Each table marker found by name, not against the whole header (a hostile header may be long).
    let place: std::collections::HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // One piece waiting per connection: the reader stays just ahead of the load.
    let (pieces, waiting) = mpsc::channel::<Piece>(loaders.len().max(1));
    let waiting = Mutex::new(waiting);
    let read = async move {
        let mut read: Vec<u64> = vec![0; header.tables.len()];
        let mut sequences = Vec::new();
        let mut table: Option<usize> = None;
        let mut total = 0u64;
        let mut ended = false;
        while let Some(event) = rx.recv().await {
            match event? {
                Event::Rows { copy, rows } => {
                    let at = table.context("rows before a table")?;
                    // A closed channel means a loader failed: its error is the one to tell.
                    if pieces
                        .send(Piece {
                            table: at,
                            copy: Bytes::from(copy),
                        })
                        .await
                        .is_err()
                    {
                        return Ok((read, sequences));
                    }
                    read[at] += rows;
                    total += rows;
                }
                Event::Table(t) => {
                    let at = place
                        .get(t.name.as_str())
                        .copied()
                        .filter(|&at| header.tables[at].columns == t.columns);
                    let Some(at) = at else {
                        anyhow::bail!("table {} does not match the dump's header: the dump is damaged", t.name);
                    };
                    table = Some(at);
                }
                Event::Sequences(seqs) => sequences.extend(seqs),
                Event::End { rows } => {
                    if rows != total {
                        anyhow::bail!("the dump says it holds {rows} rows but {total} were read: it is damaged");
                    }
                    ended = true;
                }
                Event::Header(_) | Event::Structure(_) => anyhow::bail!("a second header in the dump"),
            }
        }
        if !ended {
            anyhow::bail!("the dump is truncated (no end marker)");
        }
        Ok((read, sequences))
    };
    let loads = loaders.iter().map(|c| load_pieces(c, &waiting, &copies, &names));
    let ((read, sequences), loaded) = futures::future::try_join(read, futures::future::try_join_all(loads)).await?;
    let xids = loaded.iter().map(|(xid, _)| *xid).collect();
    let loaded: Vec<BTreeMap<usize, u64>> = loaded.into_iter().map(|(_, l)| l).collect();
    if let Some(first) = loaders.first() {
        set_sequences(first, schema, &sequences).await?;
    }
    let mut counts = BTreeMap::new();
    for (at, name) in names.iter().enumerate() {
        let by_server: u64 = loaded.iter().map(|l| l.get(&at).copied().unwrap_or(0)).sum();
        if by_server != read[at] {
            anyhow::bail!(
                "table {name}: the dump holds {} rows but the server loaded {by_server}: the dump is damaged",
                read[at]
            );
        }
        counts.insert(name.to_string(), read[at]);
    }
    Ok((counts, xids))
}

/// One loader connection's share: in one transaction, every piece it takes, each into a COPY of
/// its table (opened when the table changes). Returns its transaction's id and the rows the server
/// loaded per table.
async fn load_pieces(
    client: &Client,
    waiting: &Mutex<mpsc::Receiver<Piece>>,
    copies: &[String],
    names: &[&str],
) -> Result<(i64, BTreeMap<usize, u64>)> {
    let failed = |at: usize, e: tokio_postgres::Error| {
        anyhow::anyhow!("{}", describe_pg_error_without_data(&e)).context(format!("loading {}", names[at]))
    };
    client
        .batch_execute(&format!("BEGIN; SET CONSTRAINTS ALL DEFERRED; {VALUE_SETTINGS}"))
        .await
        .context("starting a load's transaction")?;
    let xid = xid(client).await?;
    let mut loaded = BTreeMap::new();
    let mut copy: Option<(usize, Pin<Box<CopyInSink<Bytes>>>)> = None;
    loop {
        // Whoever is free takes the next piece.
        let piece = waiting.lock().await.recv().await;
        let Some(piece) = piece else { break };
        if copy.as_ref().map(|(at, _)| *at) != Some(piece.table) {
            if let Some((at, mut sink)) = copy.take() {
                let n = sink.as_mut().finish().await.map_err(|e| failed(at, e))?;
                *loaded.entry(at).or_insert(0) += n;
            }
            let sink = client
                .copy_in(&copies[piece.table])
                .await
                .map_err(|e| failed(piece.table, e))?;
            copy = Some((piece.table, Box::pin(sink)));
        }
        if let Some((at, sink)) = copy.as_mut() {
            sink.send(piece.copy).await.map_err(|e| failed(*at, e))?;
        }
    }
    if let Some((at, mut sink)) = copy.take() {
        let n = sink.as_mut().finish().await.map_err(|e| failed(at, e))?;
        *loaded.entry(at).or_insert(0) += n;
    }
    Ok((xid, loaded))
}

/// Rolls every loader's transaction back, not waiting long for one whose connection is stuck (the
/// restore fails anyway; the staging schema is dropped and the loader's sessions ended).
async fn roll_back(loaders: &[Client]) {
    let all = loaders.iter().map(|c| c.batch_execute("ROLLBACK"));
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(all)).await;
}
