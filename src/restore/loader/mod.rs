//! The second wall of a restore: the load runs in LOGIN sessions of a role of its own,
//! `tenant_backup_loader_<database>` ([`loader_role`]), that can create and write only inside the
//! staging schema.
//!
//! `SET ROLE` is no wall (the dump, or a trigger it plants, can `RESET ROLE`). A session whose
//! session user *is* the loader can never become anyone else, so the loader logs in itself: for
//! each restore the tool gives it LOGIN and a fresh random password, sent as a SCRAM verifier made
//! here (the plaintext never reaches the server or its logs), valid for a few minutes, and takes
//! LOGIN away again as soon as the loader's connections are open ([`LoaderSession::seal`]) and in
//! every way a restore ends ([`LoaderSession::close`], or its `Drop`); a crashed restore's
//! password expires by itself (`VALID UNTIL`).
//!
//! The loader is NOLOGIN NOINHERIT outside a restore and a member of no role. It owns the staging
//! schema (and so everything it creates there), may use what PUBLIC may use (the `public` schema,
//! its functions), and gets REFERENCES on the shared tables the tenant's foreign keys point to, for
//! the restore only. [`LoaderSession::hand_over`] gives everything it made to the live schema's
//! owner; [`LoaderSession::close`] then revokes whatever it was granted or granted itself
//! (`DROP OWNED`: default privileges, large objects, anything not handed over) and resets any
//! setting it gave itself (`ALTER ROLE … SET`).
//!
//! One role serves every restore of a database (each database has its own: a role's password is
//! the cluster's), one load at a time: [`Loader::open`] takes an
//! advisory lock that the session holds until it is closed, so no load can reach another's
//! staging schema (both would be the loader's) and `DROP OWNED` / `REASSIGN OWNED` touch only the
//! current restore's objects (and a crashed restore's leftovers). Everything else a restore does
//! (download, guard, swap) runs concurrently.
//!
//! The tool's own connection ("admin": a superuser, or the database owner on a managed server)
//! manages the role, so it needs CREATEROLE (to set the loader's password) and membership in the
//! loader (to create the staging schema for it and take its objects back). [`Loader::ensure`]
//! creates the role when it can and otherwise fails (exit 2) with the one-time SQL to run.
//!
//! * [`role`]: what the tool's connection and the role are ([`Readiness`]), the bootstrap, the
//!   one-time SQL, and `doctor`'s check.
//! * [`session`]: one restore's use of the role, from [`Loader::open`] to
//!   [`LoaderSession::close`]: the lock, the grants, the login window, the hand-over.

mod role;
mod session;

pub use role::{doctor, Readiness, RoleFacts};
pub use session::{reach_outside, references_of, LoaderSession};

use std::time::Duration;

use anyhow::Result;
use tokio_postgres::Client;

use crate::pg::lock::lock_key;
use crate::pg::sql::QualifiedName;
use crate::pg::target::DbTarget;

/// The loader roles' names begin so; the rest names the database ([`loader_role`]).
pub const LOADER_PREFIX: &str = "tenant_backup_loader";

/// The loader role of `database`: `tenant_backup_loader_<database>` (or a hash of a name that
/// does not fit, or needs quoting). One role per database, because a role and its one password
/// are the cluster's: restores into two databases of one server (several applications on one
/// cluster, every parallel test) would otherwise overwrite each other's login.
pub fn loader_role(database: &str) -> String {
    let plain = !database.is_empty()
        // prefix, `_` and name within the 63 bytes of a role name
        && database.len() < 63 - LOADER_PREFIX.len()
        && database
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        format!("{LOADER_PREFIX}_{database}")
    } else {
        format!("{LOADER_PREFIX}_{:016x}", lock_key(database) as u64)
    }
}

/// How long a password given to the loader is valid: enough to open the load's connections.
/// Sessions already open are not ended by the expiry; a crashed restore's login is.
pub const LOGIN_VALID_FOR: Duration = Duration::from_secs(120);

/// The advisory lock keys: one load at a time per database, one bootstrap at a time. A `:` never
/// appears in a tenant's name, so no tenant lock shares these keys.
fn load_lock() -> i64 {
    lock_key(":loader")
}
fn bootstrap_lock() -> i64 {
    lock_key(":loader-bootstrap")
}

/// The loader role, present and manageable by the tool's connection.
#[derive(Debug, Clone)]
pub struct Loader {
    role: String,
}

impl Loader {
    /// Makes sure the loader role exists with the right attributes and that `admin` can manage it:
    /// creates it (race-free, under an advisory lock) when `admin` may create roles, and otherwise
    /// fails with exit 2 and the one-time SQL to run.
    pub async fn ensure(admin: &Client) -> Result<Loader> {
        let mut ready = Readiness::read(admin).await?;
        if ready.can_bootstrap() {
            role::bootstrap(admin, &ready).await?;
            ready = Readiness::read(admin).await?;
        }
        let problems = ready.problems();
        if !problems.is_empty() {
            let role = &ready.role_name;
            return Err(crate::usage!(
                "restores into this database load as the role {role}, which is not ready: {}. Nothing was touched. \
                 Run this once as a superuser (on Supabase, Neon or Render: in the provider's SQL console as the \
                 database owner), then retry (see docs/restore.md, \"The loader role\"):\n\n{}\n",
                problems.join("; "),
                ready.one_time_sql()
            ));
        }
        Ok(Loader { role: ready.role_name })
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// Starts a load into the new schema `staging`: waits (up to `wait`) for any other load of
    /// this database to end, clears what an earlier crashed load left to the role, creates
    /// `staging` owned by the loader, grants REFERENCES on `references` (the shared tables the
    /// tenant's foreign keys point to) and USAGE on `usage` (extension schemas PUBLIC may not
    /// use), checks that the loader can reach nothing else, and opens the login window.
    ///
    /// `admin_target` must be a session connection (not a transaction pooler); the session keeps
    /// one connection of its own on it for the lock and the role's management.
    pub async fn open(
        &self,
        admin_target: &DbTarget,
        staging: &str,
        grants: &Grants,
        wait: Duration,
    ) -> Result<LoaderSession> {
        LoaderSession::start(&self.role, admin_target, staging, grants, wait).await
    }
}

/// What the loader gets for one restore, taken back when it closes.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Tables outside the staging schema its foreign keys may point to (REFERENCES).
    pub references: Vec<QualifiedName>,
    /// Schemas whose types and functions the dump uses and PUBLIC may not use (USAGE).
    pub usage: Vec<String>,
}
