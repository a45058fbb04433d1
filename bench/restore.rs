//! `cargo bench --bench restore`: restoring one tenant schema (default ~1 GB, BENCH_SIZE_MB) every
//! way side by side, in one interleaved run (BENCH_ROUNDS rounds, default 5, medians):
//!   psql -1 -f dump.sql          into a fresh database (the plain dump),
//!   pg_restore -j 2              into a fresh database (a directory dump of the same schema),
//!   tenant-backup restore        of the sql backup (zstd, local directory), --drop-previous,
//!   the same, encrypted          (age, signed),
//!   tenant-backup restore        of the json backup, --drop-previous,
//!   the same, --jobs 1           (the rows loaded and the keys built on one connection),
//! each while an "application" works on the live tenant on a connection of its own: one small
//! SELECT and one small INSERT every 50 ms. For each: the wall time against psql's, the
//! application's longest stall (the slowest SELECT + INSERT pair), the time it was blocked (what
//! each pair took beyond the 50 ms tick, summed), how many of its statements failed, and peak RSS:
//! the restoring process's own (sampled) and the largest of it and the children it waited for
//! (wait4's ru_maxrss: psql under the tool, pg_restore's workers; a maximum, not a sum), and the
//! client side's CPU time (the process and the children it waited for; the server's is not
//! counted). For the two restores into a fresh database the application's figures are the
//! baseline: what this machine's load alone does to it.
//!
//! Knobs: BENCH_CASES=json,sql runs only the cases whose name holds one of these (psql's, the
//! baseline, always runs); BENCH_JOBS=N gives the restores `--jobs N`; BENCH_PG_LOG=DIR logs every
//! statement the server runs, with its duration, into DIR (writable by the server's user): where a
//! restore's time goes.
//!
//! A case is one entry of `cases`: a name, the command, and what to do before and after it
//! (untimed), so a restore with other options is one more entry.
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::*;

/// The application's tick.
const TICK: Duration = Duration::from_millis(50);

struct Case<'a> {
    name: &'static str,
    /// Untimed, before the run (e.g. the fresh database).
    before: Box<dyn Fn(usize) + 'a>,
    command: Box<dyn Fn(usize) -> Command + 'a>,
    /// Untimed, after the run (e.g. dropping what it made).
    after: Box<dyn Fn(usize) + 'a>,
}

/// What the application saw during one run.
#[derive(Clone, Copy, Default)]
struct AppSeen {
    pairs: u32,
    longest: Duration,
    blocked: Duration,
    errors: u32,
}

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 1024);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let cluster = match std::env::var("BENCH_PG_LOG") {
        // Profiling: every statement the server runs, with its duration, logged into that
        // directory (which the server's user must be able to write).
        Ok(dir) if !dir.is_empty() => {
            let cluster = devcluster::DevCluster::start_with(&[
                ("logging_collector", "on"),
                ("log_directory", &dir),
                ("log_min_duration_statement", "0"),
                ("log_line_prefix", "%m [%p] %a: "),
            ])
            .unwrap_or_else(|e| die(&e.to_string()));
            cluster
                .create_database("bench", None)
                .unwrap_or_else(|e| die(&e.to_string()));
            cluster.sql("bench", SETUP).unwrap_or_else(|e| die(&e.to_string()));
            cluster
        }
        _ => bench_cluster(),
    };
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    grow_to(&sql, size_mb);
    sql("VACUUM ANALYZE");
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let url = cluster.url("bench");
    let store = work.path().join("store");
    // The tool never creates its storage directory.
    std::fs::create_dir_all(&store).unwrap();
    let keys = keys_init(bin);
    let tool = |args: &[&str], encrypted: bool| {
        let mut c = Command::new(bin);
        c.args(args)
            .args(["--no-progress", "-q"])
            .env("DATABASE_URL", &url)
            .env("BACKUP_STORAGE", &store)
            .env("PG_DUMP", cluster.bin("pg_dump"))
            .stdout(Stdio::null());
        if encrypted {
            c.env("BACKUP_AGE_RECIPIENT", &keys.recipient)
                .env("BACKUP_AGE_IDENTITY", &keys.identity)
                .env("BACKUP_SIGNING_KEY", &keys.signing);
        }
        c
    };
    let libpq = |c: &mut Command, db: &str| {
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", cluster.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", &cluster.password)
            .env("PGDATABASE", db);
    };
    let newest = || sql("SELECT max(id) FROM bench.backups_backuprecord");
    measure(tool(&["backup", "--tenant", SCHEMA], false), "backup");
    let sql_id = newest();
    measure(tool(&["backup", "--tenant", SCHEMA], true), "encrypted backup");
    let age_id = newest();
    measure(
        tool(&["backup", "--tenant", SCHEMA, "--format", "json"], false),
        "json backup",
    );
    let json_id = newest();
    let dump = work.path().join("dump.sql");
    let dir = work.path().join("dump.dir");
    for (format, out) in [("p", &dump), ("d", &dir)] {
        let mut c = Command::new(cluster.bin("pg_dump"));
        c.args(["-n", SCHEMA, "--no-owner", "--no-privileges", "-F", format, "-f"])
            .arg(out);
        libpq(&mut c, "bench");
        if !c.status().is_ok_and(|s| s.success()) {
            die("pg_dump failed");
        }
    }
    let dump_mb = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    let dir_mb = dir_size(&dir) as f64 / 1048576.0;

    let fresh = |kind: &str, round: usize| format!("{kind}_{round}");
    let create = |db: String| {
        cluster
            .create_database(&db, None)
            .unwrap_or_else(|e| die(&e.to_string()))
    };
    let drop_db = |db: String| {
        let _ = cluster.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    };
    // A restore keeps the previous schema when the application wrote to it meanwhile, even with
    // --drop-previous (and says so): dropped here, so the rounds do not pile them up.
    let drop_kept = || {
        let kept = sql(&format!(
            "SELECT string_agg(quote_ident(nspname), ', ') FROM pg_namespace WHERE nspname LIKE '{SCHEMA}\\_\\_%'"
        ));
        if !kept.is_empty() {
            sql(&format!("DROP SCHEMA {kept} CASCADE"));
        }
    };
    // The tenant has a key once the encrypted backup is taken: its unencrypted backups are then
    // read only when asked in so many words.
    // BENCH_JOBS: the restores' --jobs (the tool's default otherwise).
    let jobs = std::env::var("BENCH_JOBS").ok().filter(|j| !j.is_empty());
    let restore_with = |id: &str, encrypted: bool, jobs: Option<&str>| {
        let plain: &[&str] = if encrypted { &[] } else { &["--allow-unencrypted"] };
        let jobs: &[&str] = match &jobs {
            Some(j) => &["--jobs", j],
            None => &[],
        };
        tool(
            &[
                &["restore", "--tenant", SCHEMA, "--yes", "--drop-previous", "--id", id],
                plain,
                jobs,
            ]
            .concat(),
            encrypted,
        )
    };
    let restore = |id: &str, encrypted: bool| restore_with(id, encrypted, jobs.as_deref());
    let mut cases: Vec<Case> = vec![
        Case {
            name: "psql -1 -f dump.sql (fresh database)",
            before: Box::new(|r| create(fresh("plain", r))),
            command: Box::new(|r| {
                let mut c = cluster.psql_command(&fresh("plain", r));
                c.args(["-1", "-f"]).arg(&dump).stdout(Stdio::null());
                c
            }),
            after: Box::new(|r| drop_db(fresh("plain", r))),
        },
        Case {
            name: "pg_restore -j 2 (directory, fresh database)",
            before: Box::new(|r| create(fresh("dir", r))),
            command: Box::new(|r| {
                let mut c = Command::new(cluster.bin("pg_restore"));
                c.args(["-j", "2", "--no-owner", "--no-privileges", "-d", &fresh("dir", r)])
                    .arg(&dir)
                    .stdout(Stdio::null());
                libpq(&mut c, &fresh("dir", r));
                c
            }),
            after: Box::new(|r| drop_db(fresh("dir", r))),
        },
        Case {
            name: "tenant-backup restore (sql)",
            before: Box::new(|_| {}),
            command: Box::new(|_| restore(&sql_id, false)),
            after: Box::new(|_| drop_kept()),
        },
        Case {
            name: "tenant-backup restore (sql, age, signed)",
            before: Box::new(|_| {}),
            command: Box::new(|_| restore(&age_id, true)),
            after: Box::new(|_| drop_kept()),
        },
        Case {
            name: "tenant-backup restore (json)",
            before: Box::new(|_| {}),
            command: Box::new(|_| restore(&json_id, false)),
            after: Box::new(|_| drop_kept()),
        },
        Case {
            // What the parallel load buys: the rows on one connection (and the keys built on one).
            name: "tenant-backup restore (json, --jobs 1)",
            before: Box::new(|_| {}),
            command: Box::new(|_| restore_with(&json_id, false, Some("1"))),
            after: Box::new(|_| drop_kept()),
        },
    ];

    // BENCH_CASES=json,sql: only the cases whose name holds one of these (psql's, the baseline,
    // always runs).
    if let Ok(only) = std::env::var("BENCH_CASES") {
        let only: Vec<&str> = only.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let mut first = true;
        cases.retain(|c| std::mem::take(&mut first) || only.iter().any(|o| c.name.contains(o)));
    }
    let mut runs: Vec<Vec<(Run, AppSeen)>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (case, runs) in cases.iter().zip(&mut runs) {
            (case.before)(round);
            let app = App::start(&url);
            let run = measure((case.command)(round), case.name);
            let seen = app.stop();
            (case.after)(round);
            runs.push((run, seen));
        }
    }

    println!(
        "restore bench: schema {SCHEMA} ({dump_mb:.0} MB plain dump, {dir_mb:.0} MB directory dump), PostgreSQL {}, {} cores, median of {rounds}",
        sql("SHOW server_version"),
        num_cpus()
    );
    println!(
        "the application: one SELECT and one INSERT on {SCHEMA} every {} ms on its own connection; stall = its slowest pair, blocked = the time its pairs took beyond the tick, summed",
        TICK.as_millis()
    );
    println!(
        "{:<44} {:>8} {:>6} {:>8} {:>9} {:>9} {:>7} {:>10} {:>11}",
        "restore", "wall", "ratio", "CPU", "stall", "blocked", "errors", "RSS (own)", "RSS (tree)"
    );
    let base = median(runs[0].iter().map(|(r, _)| r.wall).collect()).as_secs_f64();
    for (case, runs) in cases.iter().zip(&runs) {
        let wall = median(runs.iter().map(|(r, _)| r.wall).collect()).as_secs_f64();
        // The client side's CPU (the process and the children it waited for), not the server's.
        let cpu = median(runs.iter().map(|(r, _)| r.cpu).collect()).as_secs_f64();
        let stall = median(runs.iter().map(|(_, a)| a.longest).collect());
        let blocked = median(runs.iter().map(|(_, a)| a.blocked).collect());
        let mut errors: Vec<u32> = runs.iter().map(|(_, a)| a.errors).collect();
        errors.sort();
        // Peak RSS: the highest of the rounds.
        let own = runs.iter().map(|(r, _)| r.own_rss_kb).max().unwrap_or(0);
        let tree = runs.iter().map(|(r, _)| r.tree_rss_kb).max().unwrap_or(0);
        println!(
            "{:<44} {:>7.2}s {:>5.2}x {:>7.2}s {:>8.3}s {:>8.3}s {:>7} {:>7.1} MB {:>8.1} MB",
            case.name,
            wall,
            wall / base,
            cpu,
            stall.as_secs_f64(),
            blocked.as_secs_f64(),
            errors[errors.len() / 2],
            own as f64 / 1024.0,
            tree as f64 / 1024.0,
        );
    }
    let pairs: Vec<u32> = runs.iter().flatten().map(|(_, a)| a.pairs).collect();
    println!(
        "(the application made {} to {} pairs a run)",
        pairs.iter().min().unwrap_or(&0),
        pairs.iter().max().unwrap_or(&0)
    );
    drop(cases);
    cluster.stop();
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The application: a thread with its own connection to the tenant's database, one SELECT and one
/// INSERT every [`TICK`] until stopped. A statement that fails (the schema is being swapped) is
/// counted and the loop goes on, reconnecting if the connection went.
struct App {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<AppSeen>,
}

impl App {
    fn start(url: &str) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, url) = (stop.clone(), url.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(app_loop(&url, &flag, ready_tx))
        });
        // The first pair is done before the restore starts: the connection is not part of it.
        let _ = ready_rx.recv_timeout(Duration::from_secs(30));
        App { stop, thread }
    }

    fn stop(self) -> AppSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

async fn app_loop(url: &str, stop: &AtomicBool, ready: std::sync::mpsc::Sender<()>) -> AppSeen {
    let mut seen = AppSeen::default();
    let mut client = connect(url).await;
    let mut n: i64 = 0;
    let mut ready = Some(ready);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next.into()).await;
        let Some(c) = client.as_ref().filter(|c| !c.is_closed()) else {
            client = connect(url).await;
            seen.errors += 1;
            next = Instant::now() + TICK;
            continue;
        };
        n += 1;
        let started = Instant::now();
        let select = c
            .query_opt(
                "SELECT id, email FROM bench.appointments_patient WHERE id = $1",
                &[&(n % 20_000 + 1)],
            )
            .await;
        let insert = c
            .execute(
                "INSERT INTO bench.users_user (email) VALUES ($1)",
                &[&format!("app{n}@clinic.example")],
            )
            .await;
        let took = started.elapsed();
        seen.errors += u32::from(select.is_err()) + u32::from(insert.is_err());
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
            // The warm-up pair is not counted.
            next = Instant::now() + TICK;
            continue;
        }
        seen.pairs += 1;
        seen.longest = seen.longest.max(took);
        seen.blocked += took.saturating_sub(TICK);
        next = (started + TICK).max(Instant::now());
    }
    seen
}
