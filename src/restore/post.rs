//! The last part of a load, in parallel: the keys, indexes and foreign keys of a schema are built
//! once its rows are committed in the staging schema (private until the swap), on `--jobs`
//! connections at once, as `pg_restore -j` builds them. The statements come already checked by the
//! guard and aimed at the staging schema; their order is kept except inside a run of statements
//! that cannot depend on one another: indexes, primary keys, unique and exclusion constraints
//! (each reads one table and builds one index), then foreign keys (each needs the keys before it,
//! so they wait for every index). Everything else — a comment, `CLUSTER ON`, a trigger, a setting
//! — runs alone, in its place, after what went before it; a setting runs on every connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result};
use pg_query::protobuf::{AlterTableType, ConstrType};
use tokio_postgres::Client;

use crate::pg::connect::describe_pg_error_without_data;
use crate::pg::target::DbTarget;

/// What one statement of the last part is, for ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An index, primary key, unique or exclusion constraint.
    Index,
    ForeignKey,
    /// A `SET`: runs on every connection.
    Setting,
    Other,
}

/// Reads a statement's kind from its parse tree (`{"Kind": {…}}`).
pub fn kind_of(stmt: &serde_json::Value) -> Kind {
    let Some((kind, body)) = stmt.as_object().and_then(|m| m.iter().next()) else {
        return Kind::Other;
    };
    match kind.as_str() {
        "IndexStmt" => Kind::Index,
        "VariableSetStmt" => Kind::Setting,
        "AlterTableStmt" => {
            let cmds: Vec<&serde_json::Value> = body["cmds"].as_array().into_iter().flatten().collect();
            let [cmd] = cmds.as_slice() else {
                return Kind::Other;
            };
            let cmd = &cmd["node"]["AlterTableCmd"];
            if cmd["subtype"].as_i64() != Some(AlterTableType::AtAddConstraint as i64) {
                return Kind::Other;
            }
            let contype = cmd["def"]["node"]["Constraint"]["contype"].as_i64();
            let is = |c: ConstrType| contype == Some(c as i64);
            if is(ConstrType::ConstrPrimary) || is(ConstrType::ConstrUnique) || is(ConstrType::ConstrExclusion) {
                Kind::Index
            } else if is(ConstrType::ConstrForeign) {
                Kind::ForeignKey
            } else {
                Kind::Other
            }
        }
        _ => Kind::Other,
    }
}

/// One statement of the last part.
#[derive(Clone, Debug)]
pub struct Deferred {
    pub sql: String,
    pub kind: Kind,
}

impl Deferred {
    /// A statement the guard has passed, its kind read from its parse tree.
    pub fn new(sql: String) -> Deferred {
        let kind = pg_query::parse(&sql, 0)
            .ok()
            .and_then(|p| {
                let node = p.protobuf.stmts.first()?.stmt.as_ref()?.node.as_ref()?.clone();
                serde_json::to_value(node).ok()
            })
            .map(|v| kind_of(&v))
            .unwrap_or(Kind::Other);
        Deferred { sql, kind }
    }
}

/// `jobs` connections to `target` for the last part, on the restore's settings (named like its
/// other sessions, its lock timeout, names resolved in pg_catalog only, as pg_dump's output
/// expects).
pub async fn connect(target: &DbTarget, jobs: usize, mark: &str, lock_timeout: Duration) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(jobs);
    for _ in 0..jobs.max(1) {
        let client = target.connect().await?;
        super::run::prepare_session(&client, mark, lock_timeout).await?;
        client
            .batch_execute(
                "SELECT pg_catalog.set_config('search_path', '', false); SET standard_conforming_strings = on; \
                 SET check_function_bodies = false; SET client_min_messages = warning",
            )
            .await
            .context("setting up a connection for the keys and indexes")?;
        clients.push(client);
    }
    Ok(clients)
}

/// Runs `statements` on `clients` (each already on the restore's settings), in parallel where the
/// order allows. The first failure stops the rest and is returned.
pub async fn run(clients: &[Client], statements: &[Deferred]) -> Result<()> {
    let mut at = 0;
    while at < statements.len() {
        let kind = statements[at].kind;
        let end = match kind {
            Kind::Index | Kind::ForeignKey => at + statements[at..].iter().take_while(|s| s.kind == kind).count(),
            _ => at + 1,
        };
        let run_of = &statements[at..end];
        match kind {
            Kind::Setting => {
                for c in clients {
                    execute(c, &run_of[0].sql).await?;
                }
            }
            Kind::Other => execute(&clients[0], &run_of[0].sql).await?,
            Kind::Index | Kind::ForeignKey => {
                let queue = Mutex::new(run_of.iter().collect::<VecDeque<_>>());
                let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let workers = clients.iter().map(|c| async {
                    while let Some(s) = next() {
                        execute(c, &s.sql).await?;
                    }
                    anyhow::Ok(())
                });
                futures::future::try_join_all(workers).await?;
            }
        }
        at = end;
    }
    Ok(())
}

async fn execute(client: &Client, sql: &str) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_pg_error_without_data(&e)))
        .with_context(|| format!("building {}", first_words(sql)))
}

/// The start of a statement, to name it in an error (names and keywords only, never a value:
/// the statements here hold none).
fn first_words(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(8).collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sql: &str) -> Kind {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let node = parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap();
        kind_of(&serde_json::to_value(node).unwrap())
    }

    #[test]
    fn statements_are_told_apart_for_ordering() {
        assert_eq!(kind("CREATE INDEX i ON s.t USING btree (a);"), Kind::Index);
        assert_eq!(
            kind("ALTER TABLE ONLY s.t ADD CONSTRAINT p PRIMARY KEY (id);"),
            Kind::Index
        );
        assert_eq!(kind("ALTER TABLE ONLY s.t ADD CONSTRAINT u UNIQUE (a);"), Kind::Index);
        assert_eq!(
            kind("ALTER TABLE ONLY s.t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES s.u(id) DEFERRABLE INITIALLY DEFERRED;"),
            Kind::ForeignKey
        );
        assert_eq!(kind("ALTER TABLE s.t CLUSTER ON i;"), Kind::Other);
        assert_eq!(
            kind("CREATE TRIGGER x AFTER INSERT ON s.t FOR EACH ROW EXECUTE FUNCTION s.f();"),
            Kind::Other
        );
        assert_eq!(kind("SET default_tablespace = '';"), Kind::Setting);
        assert_eq!(
            kind("ALTER TABLE s.t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;"),
            Kind::Other
        );
    }
}
