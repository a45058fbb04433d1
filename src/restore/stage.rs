//! The staging schema and the swap. A restore loads into a schema of its own
//! (`<tenant>__restore_<mark>`, see [`staging_name`](super::script::staging_name)), created empty
//! and committed first, so the load's transaction takes no lock the application could wait for and
//! the live schema is not touched at all. Once the load is committed, one short transaction
//! (bounded by `--lock-timeout`) renames the live schema aside and renames the staging schema in
//! ([`swap`]; the loader has carried the history over already, and the swap checks that the live
//! history did not grow meanwhile). Until then a stop, a failure or a kill leaves the tenant as it
//! was: the staging schema is dropped on the way out, or, when the process was killed, left for
//! `cleanup --orphans` to find (no restore holds its tenant's lock) and drop (the next restore in
//! the database drops it too: it belongs to the loader role).

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_postgres::Client;

use super::script::Plan;
use super::writes::Writes;
use crate::pg::connect::describe_pg_error;
use crate::pg::sql::quote_ident;
use crate::pg::target::DbTarget;

/// A staging schema that is dropped (on a connection of its own, see [`crate::stop::defer`])
/// unless the swap made it the tenant's.
pub struct Staged {
    name: String,
    target: DbTarget,
    lock_timeout: Duration,
    armed: bool,
}

impl Staged {
    /// The staging schema (created, empty, by the loader's session: see
    /// [`crate::restore::loader`]), to be dropped unless swapped in.
    pub fn adopt(name: &str, target: &DbTarget, lock_timeout: Duration) -> Staged {
        Staged {
            name: name.to_string(),
            target: target.clone(),
            lock_timeout,
            armed: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The swap committed: the staging schema is the tenant's now, never to be dropped.
    pub fn swapped(mut self) {
        self.armed = false;
    }

    /// Drops the staging schema now (verify's end, and any failure the caller reports).
    pub async fn discard(mut self) -> Result<()> {
        self.armed = false;
        drop_schema(&self.target, &self.name, self.lock_timeout).await
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (target, name, timeout) = (self.target.clone(), self.name.clone(), self.lock_timeout);
        // The driver's connect is not `Send`: it runs on a blocking thread of its own.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let dropping = tokio::task::spawn_blocking(move || {
            runtime
                .block_on(drop_schema(&target, &name, timeout))
                .map_err(|e| (e, name))
        });
        crate::stop::defer(async move {
            match dropping
                .await
                .unwrap_or_else(|_| Err((anyhow::anyhow!("the task panicked"), String::new())))
            {
                Ok(()) => true,
                Err((e, name)) => {
                    tracing::warn!(
                        "the staging schema {name} could not be dropped ({e:#}); the tenant is unchanged: drop it with `tenant-backup cleanup --orphans --fix`"
                    );
                    false
                }
            }
        });
    }
}

/// `DROP SCHEMA … CASCADE` on a fresh connection (the restore's own may be gone or mid-way through
/// a failed transaction), waiting for the load's session to end no longer than the lock timeout.
async fn drop_schema(target: &DbTarget, name: &str, lock_timeout: Duration) -> Result<()> {
    let client = target.connect().await?;
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'; DROP SCHEMA IF EXISTS {} CASCADE",
            crate::pg::lock::timeout_ms(lock_timeout.max(Duration::from_secs(5))),
            quote_ident(name)
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e)))
}

/// Runs the plan's swap in one transaction on `client`: the COMMIT and the caller's report are one
/// step for a stop, and a COMMIT whose answer was lost is settled by asking the server.
///
/// `unwritten`: the swap is refused (rolled back) when the application wrote to the live schema
/// since the restore started (`--maintenance`); counted once the live schema is renamed aside, in
/// the swap's own transaction, which the application's statements do not wait for.
pub async fn swap(client: &Client, plan: &Plan, session: &DbTarget, unwritten: Option<&Writes>) -> Result<()> {
    let body = plan.swap.strip_suffix("COMMIT;\n").unwrap_or(&plan.swap);
    let fail = |e: tokio_postgres::Error| anyhow::anyhow!("{}", describe_pg_error(&e));
    let prepared = async {
        client.batch_execute(body).await.map_err(fail)?;
        if let Some((records, count, max_id)) = &plan.history_check {
            let row = client
                .query_one(
                    &format!("SELECT count(*), coalesce(max(id), 0)::bigint FROM {records}"),
                    &[],
                )
                .await
                .map_err(fail)?;
            let now: (i64, i64) = (row.get(0), row.get(1));
            if now != (*count, *max_id) {
                anyhow::bail!(
                    "the tenant's history changed while the restore ran (another program recorded a backup?), so the restored one would miss it; run the restore again"
                );
            }
        }
        if let Some(writes) = unwritten {
            if let Some(previous) = &plan.kept_as {
                if !writes.is(client, previous).await? {
                    anyhow::bail!(
                        "the tenant's schema was made again while the restore ran, so what the application wrote to it cannot be counted (--maintenance): restore again"
                    );
                }
            }
            let n = writes.since(client).await?;
            if n > 0 {
                anyhow::bail!(
                    "the application wrote {n} row(s) to the tenant while the restore ran, and --maintenance says it is stopped: stop its writes and restore again, or restore without --maintenance (what it writes is then kept in the previous schema and reported)"
                );
            }
        }
        let xid: i64 = client
            .query_one("SELECT pg_catalog.txid_current()", &[])
            .await
            .map_err(fail)?
            .get(0);
        anyhow::Ok(xid)
    }
    .await;
    let xid = match prepared {
        Ok(xid) => xid,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.context(format!(
                "swapping the restored schema in; the live schema is unchanged and the restored copy is dropped ({})",
                plan.staging
            )));
        }
    };
    let Some(_commit) = crate::stop::shield() else {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(crate::stop::Stopped.into());
    };
    match client.batch_execute("COMMIT").await {
        Ok(()) => Ok(()),
        Err(e) => match crate::pg::xact::committed(session, xid).await {
            Ok(Some(true)) => {
                tracing::warn!(
                    "the connection was lost after COMMIT was sent; the server says transaction {xid} committed, so the swap is done"
                );
                Ok(())
            }
            Ok(Some(false)) => Err(fail(e).context("committing the swap; the live schema is unchanged")),
            _ => Err(fail(e).context(format!(
                "the connection was lost at the swap's COMMIT and the server could not be asked whether transaction {xid} committed: look at the schema before doing anything else"
            ))),
        },
    }
}

/// Who the restored schema is handed to: the owner of `schema` (the live tenant's) when it
/// exists, or the tool's own role.
pub async fn owner_for(client: &Client, schema: &str) -> Result<String> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT pg_catalog.pg_get_userbyid(nspowner)::text FROM pg_catalog.pg_namespace WHERE nspname = $1), current_user::text)",
            &[&schema],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error(&e)))
        .context("reading who owns the tenant's schema")?;
    Ok(row.get(0))
}

/// Starts a load into the plan's staging schema as the loader role (see
/// [`crate::restore::loader`]): the role made ready (or the one-time SQL, exit 2), REFERENCES on
/// the shared tables the foreign keys of the first existing schema of `references_from` point to,
/// the staging schema created as the loader's, and its guard, which drops it unless swapped in.
pub async fn open_load(
    admin: &Client,
    admin_target: &DbTarget,
    staging: &str,
    references_from: &[&str],
    lock_timeout: Duration,
) -> Result<(crate::restore::loader::LoaderSession, Staged)> {
    use crate::restore::loader::{references_of, Grants, Loader};
    let loader = Loader::ensure(admin).await?;
    let mut references = Vec::new();
    for schema in references_from {
        if super::state::schema_exists(admin, schema).await? {
            references = references_of(admin, schema).await?;
            break;
        }
    }
    let grants = Grants {
        references,
        usage: Vec::new(),
    };
    let loading = loader.open(admin_target, staging, &grants, lock_timeout).await?;
    Ok((loading, Staged::adopt(staging, admin_target, lock_timeout)))
}
