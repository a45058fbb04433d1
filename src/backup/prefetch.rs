//! The structure of a run's tenants, read [`PREFETCH_CHUNK`] tenants at a time (one statement per
//! catalog for all of them) instead of a dozen statements per tenant. A chunk is read when the
//! first of its tenants is dumped, and each tenant takes its own part once. Only a few chunks are
//! held at a time, so memory does not grow with the number of tenants.
//!
//! The chunk is read in a snapshot exported (`pg_export_snapshot`) on a connection of its own,
//! which holds it open while the chunk's tenants import it for their dumps: each tenant's rows are
//! then read in the very snapshot its structure was read in, and nothing needs checking. The
//! holder lets the snapshot go once every part is imported (or dropped), and after [`HOLD`] at
//! most, so a slow chunk never holds back vacuum for long; a tenant that comes later reads its
//! structure again in its own snapshot. A chunk read with no holder free (at most [`HOLDERS`] at
//! once) is read with a fingerprint of its catalog rows, and each tenant's dump uses its part only
//! if its own snapshot shows the same rows (`jsonl::dump`): a migration that lands in between is
//! seen there, and that tenant's structure is read again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::jsonl::{Prefetched, SnapshotLease, PREFETCH_CHUNK};
use crate::pg::target::DbTarget;

/// The longest a chunk's snapshot is held open for its tenants. A chunk of small tenants takes
/// well under a second; a tenant that starts later than [`HOLD`] less a second uses its own snapshot.
const HOLD: Duration = Duration::from_secs(5);
/// Connections holding a chunk's snapshot at once, beside the workers' own.
const HOLDERS: usize = 2;

type Chunk = Arc<OnceCell<Read>>;

/// A chunk as read: each tenant's part, and when its snapshot was taken (None: not exported).
struct Read {
    parts: Mutex<BTreeMap<String, Prefetched>>,
    exported: Option<Instant>,
}

/// The run's tenants in the order they are backed up, and the chunks read so far.
#[derive(Default)]
pub struct Prefetch {
    plan: Mutex<Plan>,
    holders: Arc<Holders>,
}

#[derive(Default)]
struct Plan {
    place: HashMap<String, usize>,
    schemas: Vec<String>,
    chunks: BTreeMap<usize, Chunk>,
    /// Where a snapshot holder connects (None: chunks are read on the tenant's own connection).
    session: Option<DbTarget>,
}

/// Connections that hold a chunk's snapshot, and those idle between chunks.
#[derive(Default)]
struct Holders {
    idle: Mutex<Vec<Client>>,
    busy: AtomicUsize,
    /// A read in an exported snapshot failed (a server or pooler that cannot export one): the
    /// run's other chunks are read the other way.
    failed: std::sync::atomic::AtomicBool,
}

impl Prefetch {
    /// Sets the run's tenants, in the order their backups start, and where a connection that
    /// holds a chunk's snapshot connects (`session`). A run of one tenant reads its structure in
    /// its own snapshot, as before.
    pub fn plan(&self, schemas: Vec<String>, session: Option<DbTarget>) {
        let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        *plan = Plan::default();
        if schemas.len() < 2 {
            return;
        }
        plan.place = schemas.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        plan.schemas = schemas;
        plan.session = session;
    }

    /// The run is over: the chunks still held are let go, and with them their snapshots.
    pub fn finish(&self) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = Plan::default();
    }

    /// The tenant's structure as its chunk read it, once; None when the tenant is not in the plan,
    /// was taken already, or its chunk could not be read (the dump then reads it alone). Reads
    /// the chunk when it is the first of its tenants: in an exported snapshot on a holder
    /// connection, or else on `client` (outside any transaction).
    pub async fn take(&self, client: &Client, schema: &str) -> Option<Prefetched> {
        let (chunk, names, session) = {
            let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
            let k = *plan.place.get(schema)? / PREFETCH_CHUNK;
            // Tenants start in order, a few at a time: chunks two behind are done with.
            plan.chunks.retain(|c, _| *c + 1 >= k);
            let chunk = plan.chunks.entry(k).or_default().clone();
            let end = ((k + 1) * PREFETCH_CHUNK).min(plan.schemas.len());
            (
                chunk,
                plan.schemas[k * PREFETCH_CHUNK..end].to_vec(),
                plan.session.clone(),
            )
        };
        let read = chunk
            .get_or_init(|| async {
                if let Some(parts) = self.read_exported(session.as_ref(), &names).await {
                    return Read {
                        parts: Mutex::new(parts),
                        exported: Some(Instant::now()),
                    };
                }
                let parts = match crate::jsonl::prefetch(client, &names).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::debug!(
                            "reading the structure of {} tenants from {} at once: {e:#}; each is read on its own",
                            names.len(),
                            names[0]
                        );
                        BTreeMap::new()
                    }
                };
                Read {
                    parts: Mutex::new(parts),
                    exported: None,
                }
            })
            .await;
        let mut part = read.parts.lock().unwrap_or_else(|e| e.into_inner()).remove(schema)?;
        // Too late to import before the holder lets the snapshot go: the dump reads its own.
        if read
            .exported
            .is_some_and(|at| at.elapsed() + Duration::from_secs(1) > HOLD)
        {
            part.snapshot = None;
        }
        Some(part)
    }

    /// The chunk read in a snapshot exported on a holder connection, each part with its lease on
    /// the snapshot; a task holds the snapshot open until every lease is dropped, or [`HOLD`].
    /// None when no holder is free or the read failed (the chunk is then read the other way).
    async fn read_exported(
        &self,
        session: Option<&DbTarget>,
        names: &[String],
    ) -> Option<BTreeMap<String, Prefetched>> {
        let session = session?;
        let holders = &self.holders;
        if holders.failed.load(Ordering::SeqCst) {
            return None;
        }
        if holders.busy.fetch_add(1, Ordering::SeqCst) >= HOLDERS {
            holders.busy.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let idle = holders.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let client = match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => session.connect().await,
        };
        let read = match client {
            Ok(client) => crate::jsonl::prefetch_exported(&client, names)
                .await
                .map(|read| (client, read)),
            Err(e) => Err(e),
        };
        let (client, (id, mut parts)) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(
                    "reading the structure of {} tenants from {} in an exported snapshot: {e:#}",
                    names.len(),
                    names[0]
                );
                holders.failed.store(true, Ordering::SeqCst);
                holders.busy.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
        };
        let left = Arc::new(AtomicUsize::new(parts.len()));
        let done = Arc::new(tokio::sync::Notify::new());
        for part in parts.values_mut() {
            let (left, done) = (left.clone(), done.clone());
            part.snapshot = Some(Arc::new(SnapshotLease {
                id: id.clone(),
                on_drop: Some(Box::new(move || {
                    if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                        done.notify_one();
                    }
                })),
            }));
        }
        let holders = self.holders.clone();
        let none_left = parts.is_empty();
        tokio::spawn(async move {
            if !none_left {
                let _ = tokio::time::timeout(HOLD, done.notified()).await;
            }
            if client.batch_execute("COMMIT").await.is_ok() {
                holders.idle.lock().unwrap_or_else(|e| e.into_inner()).push(client);
            }
            holders.busy.fetch_sub(1, Ordering::SeqCst);
        });
        Some(parts)
    }
}
