//! Restore, atomically, keeping the history.
//!
//! * [`source`]: which backup (id, latest, key), fetched to a temporary file and checked against its
//!   manifest before anything runs.
//! * [`guard`]: what a dump may execute (its own SQL, on its own schema), each statement checked
//!   before psql gets it.
//! * [`state`] and [`script`]: what is there (read under the tenant's lock), and the SQL around the
//!   dump (rename aside, history carry-over, COMMIT or ROLLBACK) decided from it.
//! * [`psql`], [`child`], [`errors`], [`run`]: driving a restricted psql (and pg_restore for
//!   custom archives) that dies with the tool, and telling what happened, truthfully.
//!
//! The whole restore is one psql session fed on stdin: `BEGIN`, rename the live schema aside, the
//! dump (which recreates the schema), carry over the history rows the dump lacks, `COMMIT`. psql
//! runs with `ON_ERROR_STOP`, and `COMMIT` is sent only once the whole dump has streamed through
//! complete, so any failure (a bad statement, a truncated or corrupt object, a lock timeout) ends
//! the session without committing: the live schema is exactly as before. Native json backups load
//! through the driver instead ([`crate::jsonl`]).

pub mod access;
pub mod child;
pub mod errors;
pub mod guard;
pub mod local;
pub mod psql;
pub mod run;
pub mod script;
pub mod source;
pub mod state;
pub mod writes;

pub use psql::{open_decompressed, Counts, PsqlJob};
pub use script::{plan, Plan};
pub use source::{fetch_verified, resolve_at, Source, Which};
pub use state::{BucketRow, Facts, Target};

use std::path::Path;

use anyhow::Result;
use tokio_postgres::Client;

use crate::backup::format::DumpFormat;
use crate::pg::tools::PgDump;

/// What restoring a dump of `format` needs: pg_dump's installation (for psql and pg_restore), or
/// nothing for the native json format, which is loaded through the driver.
pub async fn tools_for(client: &Client, format: DumpFormat, explicit_pg_dump: Option<&Path>) -> Result<Option<PgDump>> {
    if format == DumpFormat::Json {
        return Ok(None);
    }
    Ok(Some(crate::pg::tools::for_server(client, explicit_pg_dump).await?.0))
}
