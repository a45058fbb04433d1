//! The dumper: one snapshot, each table through `COPY … TO STDOUT`, encoded to JSON Lines on the
//! spool's thread.

use std::collections::BTreeMap;
use std::io::{self, Read};

use anyhow::{Context as _, Result};
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::codec::RowEncoder;
use super::objects::{Prefetched, SchemaObjects, Scope};
use super::structure::Structure;
use super::tables::tables_of;
use super::{Header, SequenceValue, TableSpec, BATCH, FORMAT, FORMAT_VERSION, VALUE_SETTINGS};
use crate::pg::sql::{qualified, quote_ident};

/// An error of the dumper, carried to the spool (`backup::spool::spool_stream`) through `io::Error`,
/// so the spool reports the dumper's own words.
#[derive(Debug)]
pub struct ProducerError(pub String);
impl std::fmt::Display for ProducerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ProducerError {}

/// What the dumper hands to the encoding side.
pub enum Piece {
    /// A finished line (header, markers).
    Line(Vec<u8>),
    /// The next table: its marker line is written and its rows follow.
    Table(TableSpec),
    /// COPY text rows of the current table, cut anywhere.
    Rows(Vec<u8>),
    /// Pieces handed over at once (see [`Batcher`]).
    Many(Vec<Piece>),
}

/// Hands pieces to the encoding side [`BATCH`] bytes at a time: a small tenant's thirty-odd
/// pieces (its header, structure, every table's marker and rows) go over in one hand-off, not one
/// wake-up of the other thread each.
struct Batcher<'a> {
    tx: &'a mpsc::Sender<io::Result<Piece>>,
    pending: Vec<Piece>,
    bytes: usize,
}

impl Batcher<'_> {
    async fn push(&mut self, piece: Piece, bytes: usize) -> Result<()> {
        self.pending.push(piece);
        self.bytes += bytes;
        if self.bytes >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.bytes = 0;
        let piece = match self.pending.len() {
            0 => return Ok(()),
            1 => self.pending.pop().expect("one piece"),
            _ => Piece::Many(std::mem::take(&mut self.pending)),
        };
        self.tx
            .send(Ok(piece))
            .await
            .map_err(|_| anyhow::anyhow!("the spool stopped"))
    }
}

/// Streams the schema into `tx` and returns each table's row count. Runs its own snapshot
/// transaction on `client` (a session connection). `prefetched`, the schema's structure read
/// earlier with other tenants' ([`super::prefetch`]), is used only when the snapshot shows the same
/// catalog rows it came from; otherwise the structure is read again in the snapshot, so the
/// structure written always matches the rows.
pub async fn dump(
    client: &Client,
    schema: &str,
    server_version: &str,
    created_at: chrono::DateTime<Utc>,
    guard: Option<super::SelfCheck<'_>>,
    prefetched: Option<Prefetched>,
    tx: mpsc::Sender<io::Result<Piece>>,
) -> Result<BTreeMap<String, u64>> {
    let result = dump_inner(
        client,
        schema,
        server_version,
        created_at,
        guard,
        prefetched,
        Skip::Nothing,
        &tx,
    )
    .await;
    finish(client, result, &tx).await
}

/// Whose rows a dump leaves out (their tables' markers are written, with no rows).
#[derive(Clone, Copy)]
pub enum Skip<'a> {
    Nothing,
    Tables(&'a std::collections::BTreeSet<String>),
    /// Every table's but these.
    AllBut(&'a std::collections::BTreeSet<String>),
}

impl Skip<'_> {
    fn skips(&self, table: &str) -> bool {
        match self {
            Skip::Nothing => false,
            Skip::Tables(t) => t.contains(table),
            Skip::AllBut(t) => !t.contains(table),
        }
    }
}

/// [`dump`] without the rows `skip_rows` names: the live schema a rows-only restore completes
/// (`restore::rows`).
pub async fn dump_skipping_rows(
    client: &Client,
    schema: &str,
    server_version: &str,
    created_at: chrono::DateTime<Utc>,
    skip_rows: Skip<'_>,
    tx: mpsc::Sender<io::Result<Piece>>,
) -> Result<BTreeMap<String, u64>> {
    let result = dump_inner(client, schema, server_version, created_at, None, None, skip_rows, &tx).await;
    finish(client, result, &tx).await
}

/// The snapshot ended, and a failure handed to the reading side in the dumper's own words.
async fn finish(
    client: &Client,
    result: Result<BTreeMap<String, u64>>,
    tx: &mpsc::Sender<io::Result<Piece>>,
) -> Result<BTreeMap<String, u64>> {
    // (A dump that went through ended its snapshot with its last read: `not_rewritten`.)
    if result.is_err() {
        let _ = client.batch_execute("COMMIT").await;
    }
    if let Err(e) = &result {
        let _ = tx.send(Err(io::Error::other(ProducerError(format!("{e:#}"))))).await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn dump_inner(
    client: &Client,
    schema: &str,
    server_version: &str,
    created_at: chrono::DateTime<Utc>,
    guard: Option<super::SelfCheck<'_>>,
    prefetched: Option<Prefetched>,
    skip_rows: Skip<'_>,
    tx: &mpsc::Sender<io::Result<Piece>>,
) -> Result<BTreeMap<String, u64>> {
    let begin = format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {VALUE_SETTINGS}");
    let current = match prefetched {
        Some(mut p) => {
            // In the snapshot the structure was read in, while its reader still holds it: no
            // fingerprint to check.
            let imported = match p.snapshot.take() {
                Some(lease) => {
                    let read = SchemaObjects::imported(client, &lease.id, &mut p.objects).await;
                    drop(lease);
                    match read {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!("{schema}: importing the batched read's snapshot: {e:#}; reading its structure in its own snapshot instead");
                            client.batch_execute("ROLLBACK").await?;
                            false
                        }
                    }
                }
                None => false,
            };
            // Else the snapshot begins in the same round trip as the fingerprint read in it.
            let compared = p.has_fingerprint();
            let current = if imported {
                Some(p.objects)
            } else {
                SchemaObjects::still_current(client, &begin, schema, p).await?
            };
            if current.is_none() && compared {
                tracing::info!(
                    "{schema}: its catalog changed since this run read it with other tenants' (a migration?); reading its structure again in the backup's own snapshot"
                );
            }
            current
        }
        None => {
            client.batch_execute(&begin).await?;
            None
        }
    };
    let objects = match current {
        Some(objects) => Some(objects),
        None => SchemaObjects::read(client, schema, Scope::Structure).await?,
    };
    let Some(objects) = objects else {
        anyhow::bail!("schema {schema:?} does not exist");
    };
    let specs = tables_of(&objects);
    if specs.is_empty() {
        anyhow::bail!("schema {schema:?} has no tables");
    }
    let structure = Structure::from_objects(schema, &objects);
    if let Some(guard) = guard {
        guard.passed.check(&structure, guard.scope).map_err(|why| {
            anyhow::anyhow!("{why}; the backup failed: a backup that a restore would refuse is not a backup")
        })?;
    }
    if !structure.not_carried.is_empty() {
        tracing::warn!(
            "{schema}: the json backup holds the data of every table, but it cannot create the schema again if it is dropped: it does not carry {}",
            structure.not_carried.join(", ")
        );
    }
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        schema: schema.into(),
        server_version: server_version.into(),
        created_at,
        tables: specs.clone(),
    };
    let mut out = Batcher {
        tx,
        pending: Vec::new(),
        bytes: 0,
    };
    let header = line(&header);
    let n = header.len();
    out.push(Piece::Line(header), n).await?;
    let structure = line(&("structure", &structure));
    let n = structure.len();
    out.push(Piece::Line(structure), n).await?;
    let mut counts = BTreeMap::new();
    let mut total = 0u64;
    for t in &specs {
        // (A marker line's size, about.)
        out.push(Piece::Table(t.clone()), 64 * t.columns.len()).await?;
        if skip_rows.skips(&t.name) {
            counts.insert(t.name.clone(), 0);
            continue;
        }
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = copy_out_sql(&objects, schema, &t.name, &cols);
        let stream = client
            .copy_out(&sql)
            .await
            .with_context(|| format!("reading {}", t.name))?;
        futures::pin_mut!(stream);
        let mut rows = 0u64;
        // Grown as rows come: a small table's few rows never pay for a whole batch.
        let mut batch = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {}", t.name))?;
            rows += memchr::memchr_iter(b'\n', &chunk).count() as u64;
            batch.extend_from_slice(&chunk);
            if batch.len() >= BATCH {
                let n = batch.len();
                out.push(Piece::Rows(std::mem::take(&mut batch)), n).await?;
            }
        }
        if !batch.is_empty() {
            let n = batch.len();
            out.push(Piece::Rows(batch), n).await?;
        }
        total += rows;
        counts.insert(t.name.clone(), rows);
    }
    not_rewritten(client, schema, &objects, &specs, skip_rows).await?;
    // Read with the rest of the catalog, in the same snapshot.
    let mut seqs: Vec<SequenceValue> = objects
        .sequences
        .iter()
        .filter_map(|q| {
            Some(SequenceValue {
                name: objects.relation(q.oid)?.name.clone(),
                last_value: q.last_value,
                is_called: q.last_value.is_some(),
            })
        })
        .collect();
    seqs.sort_by(|a, b| a.name.cmp(&b.name));
    let sequences = line(&("sequences", &seqs));
    let n = sequences.len();
    out.push(Piece::Line(sequences), n).await?;
    let end = line(&("end", serde_json::json!({"tables": specs.len(), "rows": total})));
    let n = end.len();
    out.push(Piece::Line(end), n).await?;
    out.flush().await?;
    Ok(counts)
}

/// Fails when a table whose rows were read was rewritten between the snapshot and its `COPY`:
/// `TRUNCATE`, a rewriting `ALTER TABLE`, `VACUUM FULL` or `CLUSTER` gives it a new file, in which
/// an older snapshot sees no rows at all (PostgreSQL's documented MVCC caveat), so the backup
/// would hold an empty table and say OK. Each `COPY` holds its table's lock to the end of the
/// transaction, so the file the server names now (`pg_relation_filenode`, read from the current
/// catalog) is the one the `COPY` read; the snapshot's own `pg_class` row names the file it knew.
/// The snapshot's read-only transaction ends in the same round trip.
async fn not_rewritten(
    client: &Client,
    schema: &str,
    objects: &SchemaObjects,
    specs: &[TableSpec],
    skip_rows: Skip<'_>,
) -> Result<()> {
    let read: Vec<String> = specs
        .iter()
        .filter(|t| !skip_rows.skips(&t.name))
        .filter_map(|t| objects.relations.iter().find(|r| r.name == t.name && r.kind == "r"))
        .map(|r| r.oid.to_string())
        .collect();
    let sql = format!(
        "SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = ANY('{{{}}}'::pg_catalog.oid[]) \
         AND pg_catalog.pg_relation_filenode(c.oid) IS DISTINCT FROM c.relfilenode ORDER BY 1; COMMIT",
        read.join(",")
    );
    let rewritten: Vec<String> = client
        .simple_query(&sql)
        .await
        .context("checking that no table was rewritten during the backup")?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    if !rewritten.is_empty() {
        anyhow::bail!(
            "{schema}: {} rewritten (TRUNCATE, ALTER TABLE, VACUUM FULL or CLUSTER) after the backup's snapshot was taken and before its rows were read, so the snapshot saw it empty; nothing was stored: run the backup again",
            rewritten.join(", ")
        );
    }
    Ok(())
}

/// How a table's rows are read. A plain table through `COPY table (columns)`, which the server
/// runs without planning a query (`COPY (SELECT …)` planned each of a tenant's tables in a
/// backend that had never seen them: at 1,000 tenants a tenant's 15 tables took about twice the
/// server time through a query), and which, like pg_dump's, reads the table's own rows only (a
/// query also read its inheritance children's, which are dumped as tables of their own). A
/// partitioned table cannot be copied from directly, nor a table with no column to list: their
/// rows are read through a query.
fn copy_out_sql(objects: &SchemaObjects, schema: &str, table: &str, cols: &[String]) -> String {
    let partitioned = objects.relations.iter().any(|r| r.name == table && r.kind == "p");
    if partitioned || cols.is_empty() {
        format!(
            "COPY (SELECT {} FROM {}) TO STDOUT",
            cols.join(", "),
            qualified(schema, table)
        )
    } else {
        format!("COPY {} ({}) TO STDOUT", qualified(schema, table), cols.join(", "))
    }
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
    /// The rest of a [`Piece::Many`].
    queue: std::collections::VecDeque<Piece>,
    encoder: Option<RowEncoder>,
    current: Vec<u8>,
    pos: usize,
}

impl JsonLinesReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Piece>>) -> Self {
        JsonLinesReader {
            rx,
            queue: Default::default(),
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
        let mut next = self.queue.pop_front().map(Ok).or_else(|| self.rx.blocking_recv());
        while let Some(Ok(Piece::Many(pieces))) = next {
            self.queue.extend(pieces);
            next = self.queue.pop_front().map(Ok).or_else(|| self.rx.blocking_recv());
        }
        match next {
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
            Some(Ok(Piece::Many(_))) => unreachable!("unpacked above"),
            Some(Ok(Piece::Rows(bytes))) => {
                let encoder = self
                    .encoder
                    .as_mut()
                    .ok_or_else(|| io::Error::other("rows before a table"))?;
                encoder.encode(&bytes, &mut self.current).map_err(io::Error::other)?;
                // Rows come whole: a line longer than a restore reads fails the backup here.
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', &self.current).chain([self.current.len()]) {
                    if (end - start) as u64 > super::load::MAX_LINE {
                        return Err(io::Error::other(ProducerError(format!(
                            "a row of more than {} MiB as json, which a restore would refuse: back up this tenant with --format sql",
                            super::load::MAX_LINE >> 20
                        ))));
                    }
                    start = end + 1;
                }
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
