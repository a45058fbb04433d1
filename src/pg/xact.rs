//! What became of a transaction whose COMMIT got no answer (the connection dropped after it was
//! sent): asked of the server on a fresh connection, by the transaction id read inside it.

use std::time::Duration;

use anyhow::Result;
use tokio_postgres::types::Type;

use super::target::DbTarget;

/// Whether transaction `xid` committed (`None`: the server no longer knows), asked on a fresh
/// connection, waiting while the server is still finishing it.
pub async fn committed(target: &DbTarget, xid: i64) -> Result<Option<bool>> {
    let client = target.connect().await?;
    for _ in 0..300 {
        let rows = client
            .query_typed("SELECT pg_catalog.txid_status($1)", &[(&xid, Type::INT8)])
            .await?;
        let status: Option<String> = rows[0].get(0);
        match status.as_deref() {
            Some("committed") => return Ok(Some(true)),
            Some("aborted") => return Ok(Some(false)),
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await, // in progress
            None => return Ok(None),
        }
    }
    Ok(None)
}
