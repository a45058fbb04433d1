//! The last part of a load, in parallel: the keys, indexes and foreign keys of a schema are built
//! once its rows are committed in the staging schema (private until the swap), on `--jobs`
//! connections at once, as `pg_restore -j` builds them. The statements come already checked by the
//! guard and aimed at the staging schema; their order is kept except inside a run of statements
//! that cannot depend on one another: indexes, primary keys, unique and exclusion constraints
//! (each reads one table and builds one index), then foreign keys (each needs the keys before it,
//! so they wait for every index). Inside a run no two run on one table at once: they would lock
//! each other out, and one waiting longer than the lock timeout would fail the restore, so a
//! connection takes the next statement whose tables are free. Everything else — a comment,
//! `CLUSTER ON`, a trigger, a setting — runs alone, in its place, after what went before it; a
//! setting runs on every connection.

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
    // A connection lost after its load's COMMIT went through (the server said so) builds nothing.
    let clients: Vec<&Client> = clients.iter().filter(|c| !c.is_closed()).collect();
    if clients.is_empty() && !statements.is_empty() {
        anyhow::bail!("every connection for the keys and indexes was lost");
    }
    let clients = clients.as_slice();
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
            Kind::Other => execute(clients[0], &run_of[0].sql).await?,
            Kind::Index | Kind::ForeignKey => run_apart(clients, run_of).await?,
        }
        at = end;
    }
    Ok(())
}

/// A relation a statement locks: (schema, name).
type Rel = (String, String);

/// The relations `sql` (an index, a key or a foreign key) locks: its table, and for a foreign key
/// the table it references too. Empty when the statement cannot be read (it then waits for
/// nobody, as before).
fn locked_relations(sql: &str) -> Vec<Rel> {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Vec::new();
    };
    let rel = |r: &pg_query::protobuf::RangeVar| (r.schemaname.clone(), r.relname.clone());
    let mut rels = Vec::new();
    for raw in &parsed.protobuf.stmts {
        match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(pg_query::NodeEnum::IndexStmt(i)) => rels.extend(i.relation.as_ref().map(rel)),
            Some(pg_query::NodeEnum::AlterTableStmt(a)) => {
                rels.extend(a.relation.as_ref().map(rel));
                for cmd in &a.cmds {
                    if let Some(pg_query::NodeEnum::AlterTableCmd(c)) = cmd.node.as_ref() {
                        if let Some(pg_query::NodeEnum::Constraint(k)) = c.def.as_ref().and_then(|d| d.node.as_ref()) {
                            rels.extend(k.pktable.as_ref().map(rel));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    rels
}

/// The first of `pending` that locks none of the relations `busy` holds.
fn pick(pending: &[(usize, Vec<Rel>)], busy: &[Rel]) -> Option<usize> {
    pending
        .iter()
        .position(|(_, rels)| !rels.iter().any(|r| busy.contains(r)))
}

/// A run of indexes, keys or foreign keys on every connection at once, never two on one table
/// at a time: they would lock each other out (a primary key locks its table against everything, a
/// foreign key against another foreign key or an index build on either of its tables), and a
/// build that waits longer than the lock timeout for another fails the restore. A connection with
/// nothing it may start waits for one to finish.
async fn run_apart(clients: &[&Client], run_of: &[Deferred]) -> Result<()> {
    struct Board {
        pending: Vec<(usize, Vec<Rel>)>,
        busy: Vec<Rel>,
    }
    let board = Mutex::new(Board {
        pending: run_of
            .iter()
            .enumerate()
            .map(|(i, d)| (i, locked_relations(&d.sql)))
            .collect(),
        busy: Vec::new(),
    });
    let finished = tokio::sync::Notify::new();
    let lock = || board.lock().unwrap_or_else(|e| e.into_inner());
    let workers = clients.iter().map(|c| async {
        loop {
            let waiting = finished.notified();
            tokio::pin!(waiting);
            // Registered before the board is read: a finish in between is not missed.
            waiting.as_mut().enable();
            let taken = {
                let mut b = lock();
                if b.pending.is_empty() {
                    return anyhow::Ok(());
                }
                match pick(&b.pending, &b.busy) {
                    Some(at) => {
                        let (i, rels) = b.pending.remove(at);
                        b.busy.extend(rels.iter().cloned());
                        Some((i, rels))
                    }
                    None => None,
                }
            };
            let Some((i, rels)) = taken else {
                waiting.await;
                continue;
            };
            let done = execute(c, &run_of[i].sql).await;
            {
                let mut b = lock();
                for r in &rels {
                    if let Some(at) = b.busy.iter().position(|x| x == r) {
                        b.busy.swap_remove(at);
                    }
                }
            }
            finished.notify_waiters();
            done?;
        }
    });
    futures::future::try_join_all(workers).await?;
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
    fn builds_on_one_table_never_run_at_once() {
        let rel = |t: &str| ("s".to_string(), t.to_string());
        assert_eq!(
            locked_relations("ALTER TABLE ONLY s.t ADD CONSTRAINT p PRIMARY KEY (id);"),
            [rel("t")]
        );
        assert_eq!(locked_relations("CREATE INDEX i ON s.t USING btree (a);"), [rel("t")]);
        assert_eq!(
            locked_relations("ALTER TABLE ONLY s.t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES s.u(id);"),
            [rel("t"), rel("u")]
        );
        let run = |sqls: &[&str]| -> Vec<(usize, Vec<Rel>)> {
            sqls.iter().enumerate().map(|(i, s)| (i, locked_relations(s))).collect()
        };
        // The big table's key is being built: its index waits, the other table's key goes.
        let pending = run(&[
            "CREATE INDEX i ON s.t (a);",
            "ALTER TABLE s.u ADD CONSTRAINT p PRIMARY KEY (id);",
        ]);
        assert_eq!(pick(&pending, &[rel("t")]), Some(1));
        // A foreign key waits for either of its tables.
        let fks = run(&[
            "ALTER TABLE s.a ADD CONSTRAINT f1 FOREIGN KEY (x) REFERENCES s.u(id);",
            "ALTER TABLE s.b ADD CONSTRAINT f2 FOREIGN KEY (x) REFERENCES s.v(id);",
        ]);
        assert_eq!(pick(&fks, &[rel("u")]), Some(1));
        assert_eq!(pick(&fks, &[rel("u"), rel("b")]), None);
        assert_eq!(pick(&fks, &[]), Some(0));
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
