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
//! * [`stage`]: the staging schema every format is loaded into, and the swap.
//!
//! A restore loads the dump into an empty staging schema of its own (`<tenant>__restore_<mark>`),
//! every statement aimed there ([`guard`]'s retarget), in one transaction: psql fed on stdin
//! (`BEGIN`, the dump, `COMMIT`) for plain dumps and custom archives, the driver for native json
//! ([`crate::jsonl`]). psql runs with `ON_ERROR_STOP`, and `COMMIT` is sent only once the whole
//! dump has streamed through complete. The live schema is not touched until the load has
//! committed; then one short transaction renames it aside, renames the staging schema in and
//! carries the history over. Any failure before that drops the staging schema: the live schema
//! is exactly as before.

pub mod access;
pub mod child;
pub mod engine;
pub mod errors;
pub mod guard;
pub mod loader;
pub mod local;
pub mod post;
pub mod psql;
pub mod rows;
pub mod run;
pub mod script;
pub mod source;
pub mod stage;
pub mod state;
pub mod writes;

pub use psql::{open_decompressed, Counts, PsqlJob};
pub use script::{plan, staging_name, Plan, STAGING};
pub use source::{fetch_verified, resolve_at, Source, Which};
pub use state::{BucketRow, Facts, Target};
