//! One PostgreSQL advisory lock per tenant, held on a session connection for as long as a backup,
//! restore or cleanup of that tenant runs. PostgreSQL is the only coordinator: any number of
//! workers on any number of machines can tick at once.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::connect::pg_context;

/// The lock key: FNV-1a of `tenant-backup:<schema>`, stable across processes and versions.
pub fn lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in "tenant-backup:".bytes().chain(schema.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h as i64
}

/// `timeout` as a `lock_timeout` setting in milliseconds: PostgreSQL takes at most `i32::MAX`.
pub fn timeout_ms(timeout: Duration) -> u128 {
    timeout.as_millis().min(i32::MAX as u128)
}

/// Takes the tenant's lock if nobody holds it. The lock lives until `client` disconnects (or
/// [`unlock`]).
pub async fn try_lock(client: &Client, schema: &str) -> Result<bool> {
    let key = lock_key(schema);
    let rows = client
        .query_typed("SELECT pg_try_advisory_lock($1)", &[(&key, Type::INT8)])
        .await
        .map_err(pg_context(format!("taking the lock for {schema}")))?;
    Ok(rows[0].get(0))
}

pub async fn unlock(client: &Client, schema: &str) -> Result<()> {
    let key = lock_key(schema);
    client
        .query_typed("SELECT pg_advisory_unlock($1)", &[(&key, Type::INT8)])
        .await
        .map_err(pg_context(format!("releasing the lock for {schema}")))?;
    Ok(())
}

/// Waits up to `timeout` for the tenant's lock; then fails saying who holds it.
pub async fn lock_with_timeout(client: &Client, schema: &str, timeout: Duration) -> Result<()> {
    // No deadline when it lies beyond what an Instant can hold.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        if try_lock(client, schema).await? {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let holder = holder(client, schema).await.unwrap_or(None);
            anyhow::bail!(
                "tenant {schema} is busy: another backup, restore or cleanup holds its lock{} (waited {}s; raise --lock-timeout to wait longer)",
                holder.map(|h| format!(" ({h})")).unwrap_or_default(),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Who holds the tenant's lock, if PostgreSQL can tell: pid, application, client address, since when.
pub async fn holder(client: &Client, schema: &str) -> Result<Option<String>> {
    let key = lock_key(schema) as u64;
    let (classid, objid) = ((key >> 32) as u32, key as u32);
    let rows = client
        .query_typed(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1 LIMIT 1",
            &[(&classid, Type::OID), (&objid, Type::OID)],
        )
        .await?;
    Ok(rows.first().map(|r| {
        let pid: i32 = r.get(0);
        let app: String = r.get(1);
        let addr: String = r.get(2);
        let since: String = r.get(3);
        format!("pid {pid}, {app} from {addr}, connected since {since} UTC")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(lock_key("bienestar"), lock_key("bienestar"));
        assert_ne!(lock_key("bienestar"), lock_key("mindcare"));
        // Pinned: a change here would let old and new versions back up the same tenant at once.
        assert_eq!(lock_key("bienestar"), 0xc09b_19cc_d581_274d_u64 as i64);
    }
}
