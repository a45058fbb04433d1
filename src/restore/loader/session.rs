//! One restore's use of the loader role: the load lock, the staging schema and the grants, the
//! login window, the hand-over to the live owner, and the close that takes everything back.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{load_lock, Grants, LOGIN_VALID_FOR};
use crate::pg::connect::pg_context;
use crate::pg::sql::{literal, quote_ident, QualifiedName};
use crate::pg::target::DbTarget;

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
    pub(super) async fn start(
        role: &str,
        admin_target: &DbTarget,
        staging: &str,
        grants: &Grants,
        wait: Duration,
    ) -> Result<LoaderSession> {
        let keeper = admin_target
            .connect()
            .await
            .context("connecting to manage the loader role")?;
        wait_for_lock(&keeper, role, wait).await?;
        let mut session = LoaderSession {
            keeper: Some(keeper),
            role: role.to_string(),
            staging: staging.to_string(),
            target: None,
            admin_target: admin_target.clone(),
        };
        session.prepare(grants).await?;
        session.login().await?;
        Ok(session)
    }

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

    /// Seals the login window as soon as `count` loader sessions are connected (psql children
    /// connect on their own, while the load runs beside this), or gives up quietly once `done`
    /// says the load is over (then [`LoaderSession::hand_over`] or `close` seals it).
    pub async fn seal_once_connected(&mut self, count: i64, done: &std::sync::atomic::AtomicBool) -> Result<()> {
        loop {
            if self.wait_for_logins(count, Duration::from_millis(100)).await.is_ok() {
                return self.seal().await;
            }
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
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
