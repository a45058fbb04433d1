//! One restore through psql, told truthfully: who blocked it when a lock did not come in time, what
//! failed (without row data), and — when psql lost its connection after COMMIT was sent — what the
//! server actually did, asked on a fresh connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_postgres::types::Type;

use super::errors::{describe, failures};
use super::psql::{run_psql, Counts, PsqlJob, PsqlRun};
use crate::pg::target::DbTarget;

/// A restore (or verify) that went through.
pub struct Ran {
    pub counts: Counts,
    /// The dump's last part, held back to be built in parallel (see [`super::post`]).
    pub deferred: Vec<super::post::Deferred>,
    /// Said when the outcome had to be asked of the server.
    pub note: Option<String>,
}

/// Runs `job` (psql's session is watched by `watch`). `commits`: the script ends in COMMIT
/// (restore), not ROLLBACK (verify).
pub async fn execute(job: PsqlJob, session: &DbTarget, commits: bool, watch: &Watch) -> Result<Ran> {
    let mark = job.plan.mark.clone();
    let format_hint = if job.source.format == crate::backup::format::DumpFormat::Custom {
        "the SQL pg_restore makes of the archive"
    } else {
        "the dump"
    };
    // stop::blocking: a stop interrupts psql and waits for a COMMIT already sent.
    let run = crate::stop::blocking(move || run_psql(&job))
        .await
        .context("the restore task panicked");
    let mut run: PsqlRun = run??;
    let deferred = std::mem::take(&mut run.checked.deferred);
    if run.success {
        return Ok(Ran {
            counts: run.counts(&mark),
            deferred,
            note: None,
        });
    }
    if commits && run.epilogue_sent {
        if let Some(xid) = run.xid(&mark) {
            match crate::pg::xact::committed(session, xid).await {
                Ok(Some(true)) => {
                    return Ok(Ran {
                        counts: Counts::new(),
                        deferred,
                        note: Some(format!(
                            "psql lost its connection after COMMIT was sent; the server says transaction {xid} committed, so the restore is done"
                        )),
                    })
                }
                Ok(Some(false)) => {}
                Ok(None) | Err(_) => anyhow::bail!(
                    "psql lost its connection after COMMIT was sent, and the server could not be asked whether transaction {xid} committed: look at the schema (and `tenant-backup list`) before doing anything else"
                ),
            }
        }
    }
    let (found, other) = failures(&run.stderr, run.prologue_lines, Some(&run.checked));
    let detail = describe(&found, &other, format_hint);
    if found.iter().any(|f| f.is_lock_timeout()) {
        return Err(watch.timed_out(&detail));
    }
    anyhow::bail!("the restore failed and was rolled back; the live schema is unchanged:\n{detail}");
}

/// Who blocks the sessions of one restore (the tool's own, and psql's: both carry
/// `application_name`), watched from a connection of its own for as long as this lives.
pub struct Watch {
    seen: Arc<Mutex<Vec<String>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    lock_timeout: Duration,
}

impl Watch {
    pub async fn start(target: &DbTarget, application_name: &str, lock_timeout: Duration) -> Watch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = match target.connect().await {
            Ok(client) => Some(tokio::spawn(watch(client, application_name.to_string(), seen.clone()))),
            Err(e) => {
                tracing::debug!("no connection to watch for blocking sessions: {e:#}");
                None
            }
        };
        Watch {
            seen,
            task,
            lock_timeout,
        }
    }

    /// The error for a lock not granted in time, naming who held it.
    pub fn timed_out(&self, detail: &str) -> anyhow::Error {
        let seen = self.seen.lock().map(|b| b.clone()).unwrap_or_default();
        let who = if seen.is_empty() {
            "another session (gone before it could be named)".to_string()
        } else {
            seen.join("; ")
        };
        anyhow::anyhow!(
            "a lock was not granted within --lock-timeout ({} s): blocked by {who}. Everything was rolled back; the live schema is unchanged. Try again when that session is done, or raise --lock-timeout.{}",
            self.lock_timeout.as_secs(),
            if detail.is_empty() { String::new() } else { format!("\n{detail}") }
        )
    }

    /// `err`, or when one of the tool's own statements met the lock timeout, who caused it.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        let text = format!("{err:#}");
        if text.contains("due to lock timeout") && !text.contains("--lock-timeout") {
            return err.context(self.timed_out(""));
        }
        err
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Polls who blocks the session named `app`, keeping the last ones seen.
async fn watch(client: tokio_postgres::Client, app: String, seen: Arc<Mutex<Vec<String>>>) {
    const WHO: &str = "SELECT b.pid, coalesce(b.application_name, ''), coalesce(b.state, ''), coalesce(host(b.client_addr), 'local'), \
                  coalesce(to_char(b.xact_start AT TIME ZONE 'UTC', 'HH24:MI:SS'), '') \
           FROM pg_catalog.pg_stat_activity w \
           CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS bp(pid) \
           JOIN pg_catalog.pg_stat_activity b ON b.pid = bp.pid \
           WHERE w.application_name = $1";
    loop {
        if let Ok(rows) = client.query_typed(WHO, &[(&app, Type::TEXT)]).await {
            if !rows.is_empty() {
                let now: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let (pid, name, state, addr, since): (i32, String, String, String, String) =
                            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                        let name = if name.is_empty() {
                            "no application_name".into()
                        } else {
                            name
                        };
                        let since = if since.is_empty() {
                            String::new()
                        } else {
                            format!(", in a transaction since {since} UTC")
                        };
                        format!("pid {pid} (application_name {name}, {state}, from {addr}{since})")
                    })
                    .collect();
                if let Ok(mut s) = seen.lock() {
                    *s = now;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The application_name of a restore's sessions.
pub fn application_name(mark: &str) -> String {
    format!("tenant-backup restore {mark}")
}

/// Readies the tool's own session for a restore: named like psql's (so the watch sees it) and
/// bounded by the lock timeout like the dump.
pub async fn prepare_session(client: &tokio_postgres::Client, mark: &str, lock_timeout: Duration) -> Result<()> {
    client
        .batch_execute(&format!(
            // A session whose client died notices it within a second, even while it waits for a lock.
            "SET application_name = {}; SET lock_timeout = '{}ms'; \
             SELECT pg_catalog.set_config('client_connection_check_interval', '1000', false) \
             WHERE pg_catalog.current_setting('server_version_num')::int >= 140000",
            crate::pg::sql::literal(&application_name(mark)),
            crate::pg::lock::timeout_ms(lock_timeout)
        ))
        .await
        .context("setting up the restore's session")
}

/// A fresh mark for the scripts' output lines.
pub fn new_mark() -> String {
    format!("tb-{}", super::psql::random_key(12))
}

/// A restore (`commits`) or verify of the fetched `dump` through psql and the installation of
/// `tools`, logged in as the loader (`scope`: what the dump may name, aimed at the staging
/// schema); the tool's own session is `session`. psql connects on its own, so the loader's login
/// window is sealed once it (and the `others` connections already open) are connected.
#[allow(clippy::too_many_arguments)]
pub async fn through_psql_as_loader(
    loading: &mut crate::restore::loader::LoaderSession,
    others: usize,
    tools: &crate::pg::tools::PgDump,
    session: &DbTarget,
    scope: super::guard::Scope,
    dump: &std::path::Path,
    source: &super::Source,
    plan: &super::Plan,
    commits: bool,
    watch: &Watch,
    progress: &crate::progress::Shown,
) -> Result<Ran> {
    let job = PsqlJob {
        psql: tools.sibling("psql"),
        pg_restore: tools.sibling("pg_restore"),
        restrict: crate::pg::tools::knows_restrict(&tools.version),
        target: loading.target()?.clone(),
        application_name: application_name(&plan.mark),
        dump: dump.to_path_buf(),
        source: source.clone(),
        plan: plan.clone(),
        scope,
        progress: progress.clone(),
        defer_post_data: commits,
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let ran = execute(job, session, commits, watch).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        ran
    };
    let (ran, sealed) = tokio::join!(load, loading.seal_once_connected(others as i64 + 1, &done));
    sealed?;
    ran
}
