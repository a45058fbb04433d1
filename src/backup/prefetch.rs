//! The structure of a run's tenants, read [`PREFETCH_CHUNK`] tenants at a time (one statement per
//! catalog for all of them) instead of a dozen statements per tenant. A chunk is read when the
//! first of its tenants is dumped, and each tenant takes its own part once. The dump uses it only
//! if the tenant's own snapshot shows the same catalog rows (`jsonl::dump`): a migration that lands
//! in between is seen there, and that tenant's structure is read again in its snapshot. Only a few
//! chunks are held at a time, so memory does not grow with the number of tenants.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::jsonl::{Prefetched, PREFETCH_CHUNK};

type Chunk = Arc<OnceCell<Mutex<BTreeMap<String, Prefetched>>>>;

/// The run's tenants in the order they are backed up, and the chunks read so far.
#[derive(Default)]
pub struct Prefetch {
    plan: Mutex<Plan>,
}

#[derive(Default)]
struct Plan {
    place: HashMap<String, usize>,
    schemas: Vec<String>,
    chunks: BTreeMap<usize, Chunk>,
}

impl Prefetch {
    /// Sets the run's tenants, in the order their backups start. A run of one tenant reads its
    /// structure in its own snapshot, as before.
    pub fn plan(&self, schemas: Vec<String>) {
        let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        *plan = Plan::default();
        if schemas.len() < 2 {
            return;
        }
        plan.place = schemas.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        plan.schemas = schemas;
    }

    /// The tenant's structure as its chunk read it, once; None when the tenant is not in the plan,
    /// was taken already, or its chunk could not be read (the dump then reads it alone). Reads
    /// the chunk on `client` (outside any transaction) when it is the first of its tenants.
    pub async fn take(&self, client: &Client, schema: &str) -> Option<Prefetched> {
        let (chunk, names) = {
            let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
            let k = *plan.place.get(schema)? / PREFETCH_CHUNK;
            // Tenants start in order, a few at a time: chunks two behind are done with.
            plan.chunks.retain(|c, _| *c + 1 >= k);
            let chunk = plan.chunks.entry(k).or_default().clone();
            let end = ((k + 1) * PREFETCH_CHUNK).min(plan.schemas.len());
            (chunk, plan.schemas[k * PREFETCH_CHUNK..end].to_vec())
        };
        let read = chunk
            .get_or_init(|| async {
                match crate::jsonl::prefetch(client, &names).await {
                    Ok(found) => Mutex::new(found),
                    Err(e) => {
                        tracing::debug!(
                            "reading the structure of {} tenants from {} at once: {e:#}; each is read on its own",
                            names.len(),
                            names[0]
                        );
                        Mutex::new(BTreeMap::new())
                    }
                }
            })
            .await;
        let mut read = read.lock().unwrap_or_else(|e| e.into_inner());
        read.remove(schema)
    }
}
