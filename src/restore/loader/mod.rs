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

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::connect::pg_context;
use crate::pg::lock::lock_key;
use crate::pg::sql::{literal, quote_ident, QualifiedName};
use crate::pg::target::DbTarget;

/// The loader roles' names begin so; the rest names the database ([`loader_role`]).
pub const LOADER_PREFIX: &str = "tenant_backup_loader";

/// The loader role of `database`: `tenant_backup_loader_<database>` (or a hash of a name that
/// does not fit, or needs quoting). One role per database, because a role and its one password
/// are the cluster's: restores into two databases of one server (several applications on one
/// cluster, every parallel test) would otherwise overwrite each other's login.
pub fn loader_role(database: &str) -> String {
    let plain = !database.is_empty()
        && database.len() <= 63 - LOADER_PREFIX.len() - 1
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

/// What the tool's connection is and can do about the loader role, read from the catalog.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The loader role of this database ([`loader_role`]).
    pub role_name: String,
    pub admin: String,
    pub admin_superuser: bool,
    pub admin_createrole: bool,
    /// Whether the admin has the loader's privileges (membership with INHERIT).
    pub admin_member: bool,
    /// PG16+: whether the admin holds ADMIN OPTION on the loader (needed to set its password).
    pub admin_has_admin_option: bool,
    pub server_major: u32,
    /// `None`: the role does not exist.
    pub role: Option<RoleFacts>,
}

#[derive(Debug, Clone)]
pub struct RoleFacts {
    /// Attributes that must be off (SUPERUSER, CREATEROLE, …), by name, when on.
    pub wrong_attributes: Vec<&'static str>,
    /// Roles the loader is a member of (it must be none).
    pub member_of: Vec<String>,
}

impl Readiness {
    pub async fn read(admin: &Client) -> Result<Readiness> {
        let row = admin
            .query_one(
                "SELECT current_user::text, r.rolsuper, r.rolcreaterole, \
                        current_setting('server_version_num')::int / 10000, current_database()::text \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(pg_context("reading the tool's role"))?;
        let server_major: i32 = row.get(3);
        let database: String = row.get(4);
        let mut readiness = Readiness {
            role_name: loader_role(&database),
            admin: row.get(0),
            admin_superuser: row.get(1),
            admin_createrole: row.get(2),
            admin_member: false,
            admin_has_admin_option: false,
            server_major: server_major as u32,
            role: None,
        };
        let role = admin
            .query_opt(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit, \
                        pg_has_role(current_user, oid, 'USAGE'), \
                        pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION'), \
                        ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid ORDER BY 1) \
                 FROM pg_roles r WHERE rolname = $1",
                &[&readiness.role_name],
            )
            .await
            .map_err(pg_context("reading the loader role"))?;
        if let Some(r) = role {
            let mut wrong = Vec::new();
            for (i, name) in [
                "SUPERUSER",
                "CREATEROLE",
                "CREATEDB",
                "REPLICATION",
                "BYPASSRLS",
                "INHERIT",
            ]
            .into_iter()
            .enumerate()
            {
                if r.get::<_, bool>(i) {
                    wrong.push(name);
                }
            }
            readiness.admin_member = r.get(6);
            readiness.admin_has_admin_option = r.get(7);
            readiness.role = Some(RoleFacts {
                wrong_attributes: wrong,
                member_of: r.get(8),
            });
        }
        Ok(readiness)
    }

    /// Whether the admin may set another role's password: superuser, or CREATEROLE (and, from
    /// PostgreSQL 16, ADMIN OPTION on that role).
    fn can_manage(&self) -> bool {
        self.admin_superuser
            || self.admin_createrole && (self.server_major < 16 || self.role.is_none() || self.admin_has_admin_option)
    }

    /// What is wrong, one phrase each; empty when a restore can use the loader.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let role_name = &self.role_name;
        match &self.role {
            None => out.push(format!("the role {role_name} does not exist")),
            Some(r) => {
                if !r.wrong_attributes.is_empty() {
                    out.push(format!(
                        "{role_name} has {} (it must have none of them)",
                        r.wrong_attributes.join(", ")
                    ));
                }
                if !r.member_of.is_empty() {
                    out.push(format!(
                        "{role_name} is a member of {} (it must be a member of no role)",
                        r.member_of.join(", ")
                    ));
                }
            }
        }
        if !self.can_manage() {
            out.push(format!(
                "{} cannot set {role_name}'s password (it needs CREATEROLE{})",
                self.admin,
                if self.server_major >= 16 {
                    " and ADMIN OPTION on the role"
                } else {
                    ""
                }
            ));
        }
        if self.role.is_some() && !self.admin_superuser && !self.admin_member {
            out.push(format!(
                "{} is not a member of {role_name} (it must be, to create the staging schema for it and take the restored objects back)",
                self.admin
            ));
        }
        out
    }

    /// Whether the tool can create the role itself, on first use.
    fn can_bootstrap(&self) -> bool {
        self.role.is_none() && (self.admin_superuser || self.admin_createrole)
    }

    /// The one-time SQL for a superuser (or the provider's console) that makes the setup right.
    pub fn one_time_sql(&self) -> String {
        let admin = quote_ident(&self.admin);
        let role = quote_ident(&self.role_name);
        let mut sql = Vec::new();
        match &self.role {
            None => sql.push(format!("CREATE ROLE {role} NOLOGIN NOINHERIT;")),
            Some(r) => {
                if !r.wrong_attributes.is_empty() {
                    sql.push(format!(
                        "ALTER ROLE {role} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS NOINHERIT;"
                    ));
                }
                for parent in &r.member_of {
                    sql.push(format!("REVOKE {} FROM {role};", quote_ident(parent)));
                }
            }
        }
        if !self.admin_superuser {
            if !self.admin_createrole {
                sql.push(format!("ALTER ROLE {admin} CREATEROLE;"));
            }
            if !self.admin_member || self.server_major >= 16 && !self.admin_has_admin_option {
                sql.push(if self.server_major >= 16 {
                    format!("GRANT {role} TO {admin} WITH ADMIN TRUE, INHERIT TRUE;")
                } else {
                    format!("GRANT {role} TO {admin};")
                });
            }
        }
        sql.join("\n")
    }
}

/// `doctor`'s check: whether restores into this database can load as the loader role (or the
/// first one will create it), and the one-time SQL when not. `tenant_schemas` are the live
/// schemas whose owners the restored objects go to.
pub async fn doctor(admin: &Client, tenant_schemas: &[String]) -> (bool, String) {
    let ready = match Readiness::read(admin).await {
        Ok(r) => r,
        Err(e) => return (false, format!("{e:#}")),
    };
    let role = &ready.role_name;
    let mut problems = if ready.can_bootstrap() {
        Vec::new()
    } else {
        ready.problems()
    };
    let owners = admin
        .query(
            "SELECT DISTINCT nspowner::regrole::text FROM pg_namespace \
             WHERE nspname = ANY($1) AND NOT pg_has_role(current_user, nspowner, 'USAGE') ORDER BY 1",
            &[&tenant_schemas],
        )
        .await;
    match owners {
        Ok(rows) if !rows.is_empty() => problems.push(format!(
            "{} cannot give restored objects to {} (the owner of tenant schemas; it must be a member of that role)",
            ready.admin,
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("cannot read the tenant schemas' owners: {e}")),
    }
    if ready.role.is_some() && problems.is_empty() {
        match reach_outside(admin, role, "", &Grants::default()).await {
            Ok(reach) if !reach.is_empty() => problems.push(format!(
                "{role} could reach beyond a staging schema: {} (revoke those privileges from PUBLIC or from {role})",
                reach.join("; ")
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        let sql = ready.one_time_sql();
        let fix = if sql.is_empty() {
            String::new()
        } else {
            format!(
                "; run this once as a superuser (on Supabase, Neon or Render: in the provider's SQL console as the database owner):\n{sql}"
            )
        };
        return (false, format!("{}{fix}", problems.join("; ")));
    }
    if ready.role.is_none() {
        return (
            true,
            format!(
                "{role} does not exist yet: the first restore creates it ({} may create roles); restores load as it",
                ready.admin
            ),
        );
    }
    (
        true,
        format!(
            "restores load as {role} (no attributes, a member of no role, reaching nothing outside its staging schema); {} sets its login per restore",
            ready.admin
        ),
    )
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
            bootstrap(admin, &ready).await?;
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
        let keeper = admin_target
            .connect()
            .await
            .context("connecting to manage the loader role")?;
        wait_for_lock(&keeper, &self.role, wait).await?;
        let mut session = LoaderSession {
            keeper: Some(keeper),
            role: self.role.clone(),
            staging: staging.to_string(),
            target: None,
            admin_target: admin_target.clone(),
        };
        session.prepare(grants).await?;
        session.login().await?;
        Ok(session)
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

/// The shared tables (outside `schema`) that `schema`'s foreign keys point to: what the restored
/// copy of a live tenant needs REFERENCES on.
pub async fn references_of(admin: &Client, schema: &str) -> Result<Vec<QualifiedName>> {
    let rows = admin
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text FROM pg_constraint k \
               JOIN pg_class c ON c.oid = k.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE k.contype = 'f' AND k.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1) \
               AND n.nspname <> $1 ORDER BY 1, 2",
            &[&schema],
        )
        .await
        .map_err(pg_context(format!("reading the foreign keys of {schema}")))?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

async fn bootstrap(admin: &Client, ready: &Readiness) -> Result<()> {
    let role = quote_ident(&ready.role_name);
    let key = bootstrap_lock();
    let tx = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({key}); \
         DO $do$ BEGIN \
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN \
             CREATE ROLE {role} NOLOGIN NOINHERIT; \
           END IF; \
         END $do$; {grant} COMMIT;",
        name = literal(&ready.role_name),
        // A superuser has every role's privileges already; anyone else takes the loader's (on
        // PostgreSQL 16, the creator holds ADMIN OPTION on it and may grant it to itself).
        grant = if ready.admin_superuser {
            String::new()
        } else {
            format!("GRANT {role} TO {};", quote_ident(&ready.admin))
        },
    );
    if let Err(e) = admin.batch_execute(&tx).await {
        let _ = admin.batch_execute("ROLLBACK").await;
        return Err(pg_context(format!("creating the role {}", ready.role_name))(e));
    }
    tracing::info!(
        "created the role {} (NOLOGIN NOINHERIT), which restores into this database load as",
        ready.role_name
    );
    Ok(())
}

async fn wait_for_lock(keeper: &Client, role: &str, wait: Duration) -> Result<()> {
    let deadline = Instant::now().checked_add(wait);
    loop {
        let row = keeper
            .query_one("SELECT pg_try_advisory_lock($1)", &[&load_lock()])
            .await
            .map_err(pg_context("taking the loader's lock"))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            anyhow::bail!(
                "another restore of this database is loading (one load at a time runs as {role}); waited {}s: raise --lock-timeout to wait longer",
                wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One restore's use of the loader role, from [`Loader::open`] to [`LoaderSession::close`].
/// Dropped without `close` inside the runtime, it closes itself in the background (and the process
/// waits for it, `stop::defer`); dropped outside one, or when the process dies, its connection goes
/// and with it the load lock, the password expires within [`LOGIN_VALID_FOR`], and the next
/// [`Loader::open`] clears the rest.
pub struct LoaderSession {
    keeper: Option<Client>,
    role: String,
    staging: String,
    /// The loader's login while the window is open.
    target: Option<DbTarget>,
    admin_target: DbTarget,
}

impl LoaderSession {
    fn keeper(&self) -> Result<&Client> {
        self.keeper.as_ref().context("the loader session is closed")
    }

    pub fn staging(&self) -> &str {
        &self.staging
    }

    /// The loader's login, for psql and pg_restore (`libpq_env`) and the driver, while the window
    /// is open (until [`LoaderSession::seal`]).
    pub fn target(&self) -> Result<&DbTarget> {
        self.target
            .as_ref()
            .context("the loader's login window is closed: open every loader connection before sealing it")
    }

    /// A driver connection as the loader (only while the login window is open).
    pub async fn connect(&self) -> Result<Client> {
        let target = self.target()?;
        target
            .connect()
            .await
            .with_context(|| format!("connecting as {} for the load", self.role))
    }

    async fn prepare(&mut self, grants: &Grants) -> Result<()> {
        let keeper = self.keeper()?;
        let role = quote_ident(&self.role);
        // Anything the role still has is a crashed load's (we hold the one load lock): its
        // sessions, its settings, what it owns or was granted.
        end_sessions(keeper, &self.role).await?;
        reset_role(keeper, &self.role).await?;
        let leftovers: i64 = keeper
            .query_one(
                "SELECT count(*) FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass \
                   AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
                   AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&self.role],
            )
            .await
            .map_err(pg_context("reading what the loader role holds"))?
            .get(0);
        if leftovers > 0 {
            tracing::warn!(
                "{} held {leftovers} objects or privileges left by an interrupted restore (a staging schema, grants): dropping them",
                self.role
            );
            keeper
                .batch_execute(&format!("DROP OWNED BY {role} CASCADE"))
                .await
                .map_err(pg_context(format!("dropping what {} was left with", self.role)))?;
        }
        let mut sql = format!(
            "BEGIN; CREATE SCHEMA {} AUTHORIZATION {role};",
            quote_ident(&self.staging)
        );
        for table in &grants.references {
            sql.push_str(&format!(
                "GRANT REFERENCES ON TABLE {} TO {role};",
                crate::pg::sql::qualified(&table.schema, &table.name)
            ));
        }
        for schema in &grants.usage {
            sql.push_str(&format!("GRANT USAGE ON SCHEMA {} TO {role};", quote_ident(schema)));
        }
        sql.push_str("COMMIT;");
        if let Err(e) = keeper.batch_execute(&sql).await {
            let _ = keeper.batch_execute("ROLLBACK").await;
            return Err(pg_context(format!(
                "creating the staging schema {} for {}",
                self.staging, self.role
            ))(e));
        }
        let reach = reach_outside(keeper, &self.role, &self.staging, grants).await?;
        if !reach.is_empty() {
            let _ = self.close_inner().await;
            return Err(crate::usage!(
                "{} could reach beyond its staging schema, so it would be no wall: {}. Nothing was restored. \
                 Revoke those privileges from PUBLIC (or from {}), then retry",
                self.role,
                reach.join("; "),
                self.role
            ));
        }
        Ok(())
    }

    /// Gives the loader LOGIN and a new password for [`LOGIN_VALID_FOR`].
    async fn login(&mut self) -> Result<()> {
        use rand::RngCore;
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let password = hex::encode(bytes);
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let keeper = self.keeper()?;
        let until: String = keeper
            .query_one(
                "SELECT to_char((now() + make_interval(secs => $1)) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'",
                &[&(LOGIN_VALID_FOR.as_secs_f64())],
            )
            .await
            .map_err(pg_context("reading the server's clock"))?
            .get(0);
        keeper
            .batch_execute(&format!(
                "ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {}",
                quote_ident(&self.role),
                literal(&verifier),
                literal(&until)
            ))
            .await
            .map_err(pg_context(format!("letting {} log in", self.role)))?;
        self.target = Some(self.admin_target.as_login(&self.role, &password));
        Ok(())
    }

    /// Waits (up to `timeout`) until `count` loader sessions are connected to this database:
    /// psql children connect on their own once started.
    pub async fn wait_for_logins(&self, count: i64, timeout: Duration) -> Result<()> {
        let keeper = self.keeper()?;
        let deadline = Instant::now() + timeout;
        loop {
            let n: i64 = keeper
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
                    &[&self.role],
                )
                .await
                .map_err(pg_context("counting the loader's sessions"))?
                .get(0);
            if n >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{n} of {count} loader connections came up within {}s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes LOGIN and the password away: the connections already open go on, no new one can
    /// start. Call it once every loader connection is open.
    pub async fn seal(&mut self) -> Result<()> {
        self.target = None;
        seal(self.keeper()?, &self.role).await
    }

    /// Gives every object the loader made (the staging schema and all in it: tables, sequences,
    /// types, functions …) to `new_owner`, the live schema's owner. Ends the loader's sessions
    /// first, so none can act meanwhile, and drops any large object it created (a tenant's dump
    /// has none). Runs no code of the dump: ownership changes execute nothing.
    pub async fn hand_over(&mut self, new_owner: &str) -> Result<()> {
        self.seal().await?;
        let keeper = self.keeper()?;
        end_sessions(keeper, &self.role).await?;
        let role = quote_ident(&self.role);
        let sql = format!(
            "BEGIN; \
             SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE lomowner = (SELECT oid FROM pg_roles WHERE rolname = {name}); \
             REASSIGN OWNED BY {role} TO {owner}; COMMIT;",
            name = literal(&self.role),
            owner = quote_ident(new_owner)
        );
        if let Err(e) = keeper.batch_execute(&sql).await {
            let _ = keeper.batch_execute("ROLLBACK").await;
            return Err(pg_context(format!(
                "handing the staging schema {} over to {new_owner}",
                self.staging
            ))(e));
        }
        Ok(())
    }

    /// Ends the restore's use of the role: no login, no session, nothing owned or granted (what
    /// was not handed over, the staging schema included, is dropped), no setting of its own; then
    /// the next load may start.
    pub async fn close(mut self) -> Result<()> {
        self.close_inner().await
    }

    async fn close_inner(&mut self) -> Result<()> {
        let Some(keeper) = self.keeper.take() else {
            return Ok(());
        };
        self.target = None;
        let result = close_on(&keeper, &self.role).await;
        // The lock goes with the connection anyway; unlocking first lets the next load start now.
        let _ = keeper.query("SELECT pg_advisory_unlock($1)", &[&load_lock()]).await;
        result
    }
}

impl Drop for LoaderSession {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            let role = self.role.clone();
            crate::stop::defer(async move { close_on(&keeper, &role).await.is_ok() });
        }
    }
}

async fn close_on(keeper: &Client, role: &str) -> Result<()> {
    seal(keeper, role).await?;
    end_sessions(keeper, role).await?;
    keeper
        .batch_execute(&format!("DROP OWNED BY {} CASCADE", quote_ident(role)))
        .await
        .map_err(pg_context(format!("taking back what {role} was granted")))?;
    reset_role(keeper, role).await
}

async fn seal(keeper: &Client, role: &str) -> Result<()> {
    keeper
        .batch_execute(&format!(
            "ALTER ROLE {} NOLOGIN PASSWORD NULL VALID UNTIL '-infinity'",
            quote_ident(role)
        ))
        .await
        .map_err(pg_context(format!("taking LOGIN away from {role}")))
}

/// Ends every session of the loader in this database (and waits for each to be gone).
async fn end_sessions(keeper: &Client, role: &str) -> Result<()> {
    keeper
        .query_typed(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE usename = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
            &[(&role, Type::TEXT)],
        )
        .await
        .map_err(pg_context(format!("ending the sessions of {role}")))?;
    Ok(())
}

/// Forgets settings the role gave itself (`ALTER ROLE … SET`), which would reach its next sessions.
async fn reset_role(keeper: &Client, role: &str) -> Result<()> {
    let database: String = keeper
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(pg_context("reading the database's name"))?
        .get(0);
    keeper
        .batch_execute(&format!(
            "ALTER ROLE {0} RESET ALL; ALTER ROLE {0} IN DATABASE {1} RESET ALL",
            quote_ident(role),
            quote_ident(&database)
        ))
        .await
        .map_err(pg_context(format!("resetting the settings of {role}")))
}

/// What the loader could do outside `staging` and its grants, one phrase each (at most a few).
pub async fn reach_outside(keeper: &Client, role: &str, staging: &str, grants: &Grants) -> Result<Vec<String>> {
    let granted: Vec<String> = grants
        .references
        .iter()
        .map(|t| crate::pg::sql::qualified(&t.schema, &t.name))
        .collect();
    let rows = keeper
        .query(
            "WITH me AS (SELECT oid FROM pg_roles WHERE rolname = $1), \
                  granted AS (SELECT coalesce(array_agg(to_regclass(t)::oid), '{}') AS oids FROM unnest($3::text[]) t) \
             SELECT 'CREATE on the database' FROM me WHERE has_database_privilege(me.oid, current_database(), 'CREATE') \
             UNION ALL \
             SELECT * FROM (SELECT format('CREATE on schema %I', n.nspname) FROM pg_namespace n, me \
               WHERE n.nspname <> $2 AND n.nspowner <> me.oid AND has_schema_privilege(me.oid, n.oid, 'CREATE') \
               ORDER BY 1 LIMIT 5) s \
             UNION ALL \
             SELECT * FROM (SELECT format('%s on %s', \
                 concat_ws(', ', CASE WHEN has_table_privilege(me.oid, c.oid, 'SELECT') THEN 'SELECT' END, \
                                 CASE WHEN has_table_privilege(me.oid, c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE') THEN 'writes' END, \
                                 CASE WHEN has_table_privilege(me.oid, c.oid, 'TRIGGER') THEN 'TRIGGER' END, \
                                 CASE WHEN has_table_privilege(me.oid, c.oid, 'REFERENCES') \
                                       AND NOT c.oid = ANY(granted.oids) THEN 'REFERENCES' END), \
                 format('%I.%I', n.nspname, c.relname)) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, me, granted \
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relowner <> me.oid \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> $2 \
                 AND has_schema_privilege(me.oid, n.oid, 'USAGE') \
                 AND (has_table_privilege(me.oid, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,TRIGGER') \
                      OR has_table_privilege(me.oid, c.oid, 'REFERENCES') \
                         AND NOT c.oid = ANY(granted.oids)) \
               ORDER BY 1 LIMIT 5) t",
            &[&role, &staging, &granted],
        )
        .await
        .map_err(pg_context(format!("checking what {role} can reach")))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(superuser: bool, createrole: bool, member: bool, role: bool, major: u32) -> Readiness {
        Readiness {
            role_name: loader_role("app"),
            admin: "app_owner".into(),
            admin_superuser: superuser,
            admin_createrole: createrole,
            admin_member: member,
            admin_has_admin_option: false,
            server_major: major,
            role: role.then(|| RoleFacts {
                wrong_attributes: vec![],
                member_of: vec![],
            }),
        }
    }

    #[test]
    fn a_role_per_database_named_plainly_or_hashed() {
        assert_eq!(loader_role("app"), "tenant_backup_loader_app");
        assert_eq!(loader_role("t123_4"), "tenant_backup_loader_t123_4");
        // Needs quoting, or too long for a role name: a stable hash instead.
        for name in ["My App", "a\"b", &"x".repeat(43)] {
            let role = loader_role(name);
            assert!(role.len() <= 63 && role.starts_with("tenant_backup_loader_"), "{role}");
            assert_eq!(role, loader_role(name));
        }
        assert_ne!(loader_role("My App"), loader_role("My App2"));
    }

    #[test]
    fn the_one_time_sql_asks_for_what_is_missing_only() {
        // An owner without CREATEROLE and no role yet (the managed case).
        let r = ready(false, false, false, false, 15);
        assert!(!r.can_bootstrap());
        assert_eq!(
            r.one_time_sql(),
            "CREATE ROLE \"tenant_backup_loader_app\" NOLOGIN NOINHERIT;\n\
             ALTER ROLE \"app_owner\" CREATEROLE;\n\
             GRANT \"tenant_backup_loader_app\" TO \"app_owner\";"
        );
        // With CREATEROLE the tool creates the role itself.
        assert!(ready(false, true, false, false, 15).can_bootstrap());
        assert!(ready(true, false, false, false, 15).can_bootstrap());
        // The role exists, the owner has CREATEROLE but is no member: only the grant.
        let r = ready(false, true, false, true, 15);
        assert_eq!(r.one_time_sql(), "GRANT \"tenant_backup_loader_app\" TO \"app_owner\";");
        assert_eq!(r.problems().len(), 1, "{:?}", r.problems());
        // PostgreSQL 16: ADMIN OPTION too, even for a member.
        let r = ready(false, true, true, true, 16);
        assert!(r.one_time_sql().contains("WITH ADMIN TRUE, INHERIT TRUE"));
        assert!(!r.problems().is_empty());
        // A superuser needs nothing once the role is right.
        let r = ready(true, false, false, true, 15);
        assert!(r.problems().is_empty());
        assert_eq!(r.one_time_sql(), "");
    }

    #[test]
    fn a_role_with_privileges_is_refused_with_the_fix() {
        let mut r = ready(true, false, false, true, 15);
        r.role = Some(RoleFacts {
            wrong_attributes: vec!["SUPERUSER", "INHERIT"],
            member_of: vec!["app_owner".into()],
        });
        let problems = r.problems().join("; ");
        assert!(problems.contains("has SUPERUSER, INHERIT"), "{problems}");
        assert!(problems.contains("is a member of app_owner"), "{problems}");
        let sql = r.one_time_sql();
        assert!(sql.contains("NOSUPERUSER") && sql.contains("NOINHERIT"), "{sql}");
        assert!(
            sql.contains("REVOKE \"app_owner\" FROM \"tenant_backup_loader_app\";"),
            "{sql}"
        );
    }
}
