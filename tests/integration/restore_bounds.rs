//! A restore never holds the application up for longer than `--lock-timeout` (issue #12, item 2),
//! whatever the dump says (`SET lock_timeout = 0`), and a killed tool leaves no psql behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// Reads `table` of `db` every 100 ms on fresh connections, recording the slowest read, until dropped.
struct Reader {
    stop: Arc<AtomicBool>,
    slowest: Arc<Mutex<Duration>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(db: &TestDb, table: &str) -> Reader {
        let (stop, slowest) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Duration::ZERO)));
        let (name, sql) = (
            db.name.clone(),
            format!("SET statement_timeout = '40s'; SELECT count(*) FROM {table}"),
        );
        let (s, w) = (stop.clone(), slowest.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                cluster().sql(&name, &sql).unwrap();
                let took = t.elapsed();
                let mut w = w.lock().unwrap();
                *w = (*w).max(took);
                drop(w);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Reader {
            stop,
            slowest,
            thread: Some(thread),
        }
    }

    fn slowest(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        let d = *self.slowest.lock().unwrap();
        d
    }
}

#[test]
fn restore_lock_timeout_bounds_the_whole_restore_and_names_the_blocker() {
    for drop_previous in [true, false] {
        let db = TestDb::new();
        let b = db.backup(&["--tenant", "bienestar"]);
        let id = b["id"].to_string();
        let live = db.fingerprint("bienestar");
        let all = db.schemas();
        // An application request idle in its transaction: a read of patients (which only a
        // DROP conflicts with), or a migration holding the history table.
        let app = if drop_previous {
            AppSession::start(
                &db,
                "clinic-app",
                "BEGIN; SELECT count(*) FROM bienestar.appointments_patient; SELECT pg_sleep(25)",
            )
        } else {
            AppSession::start(
                &db,
                "clinic-app",
                "BEGIN; LOCK TABLE bienestar.backups_backuprecord IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(25)",
            )
        };
        // Every other request of the clinic keeps reading meanwhile.
        // (Readers of the table a DROP waits for queue up behind it.)
        let table = if drop_previous {
            "appointments_patient"
        } else {
            "appointments_appointment"
        };
        let reader = Reader::start(&db, &format!("bienestar.{table}"));
        let mut args = vec![
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &id,
            "--yes",
            "--lock-timeout",
            "2",
        ];
        if drop_previous {
            args.push("--drop-previous");
        }
        let started = Instant::now();
        let out = db.cmd().args(&args).output().unwrap();
        let took = started.elapsed();
        let slowest = reader.slowest();
        let what = format!("drop_previous={drop_previous}");
        let stderr = text(&out.stderr);
        assert!(took < Duration::from_secs(12), "{what}: the restore took {took:?}");
        assert!(
            slowest < Duration::from_secs(3),
            "{what}: an application read waited {slowest:?} (lock timeout 2 s)"
        );
        if drop_previous {
            // The DROP comes after the COMMIT (issue #28): the restore is done, and the previous
            // schema, which a reader still holds, is kept rather than waited for past the timeout.
            assert!(out.status.success(), "{what}: {stderr}");
            assert!(
                stderr.contains("KEPT") && stderr.contains("lock timeout"),
                "{what}: {stderr}"
            );
            drop(app);
            assert_eq!(
                db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bienestar__pre_restore_%'"),
                "1",
                "{what}"
            );
            continue;
        }
        assert_fails(&out, 1, "clinic-app");
        assert!(stderr.contains(&app.pid()), "{what}: names the blocking pid:\n{stderr}");
        drop(app);
        assert_eq!(db.fingerprint("bienestar"), live, "{what}");
        assert_eq!(db.schemas(), all, "{what}");
    }
}

#[test]
fn restore_killed_leaves_no_psql_holding_the_transaction() {
    let db = TestDb::new();
    db.backup(&["--tenant", "bienestar"]);
    let live = db.fingerprint("bienestar");
    // Two places to be killed while waiting for a lock: in the tool's own reads (a migration
    // holds the history table), and after the COMMIT, where --drop-previous waits for a reader of
    // the previous schema (the restore stands, the previous schema stays).
    for (sql, drop_previous) in [
        (
            "BEGIN; LOCK TABLE bienestar.backups_backuprecord IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
            false,
        ),
        (
            "BEGIN; SELECT count(*) FROM bienestar.appointments_patient; SELECT pg_sleep(60)",
            true,
        ),
    ] {
        killed_while_waiting(&db, sql, drop_previous);
    }
    assert_eq!(db.fingerprint("bienestar"), live);
}

fn killed_while_waiting(db: &TestDb, sql: &str, drop_previous: bool) {
    let app = AppSession::start(db, "clinic-app", sql);
    let mut args = vec![
        "restore",
        "--tenant",
        "bienestar",
        "--latest",
        "--yes",
        "--lock-timeout",
        "50",
    ];
    if drop_previous {
        args.push("--drop-previous");
    }
    let mut tool = db.spawn(&args);
    db.until_the_tool_waits_for_a_lock();
    tool.kill().unwrap();
    tool.wait().unwrap();
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tenant-backup%'";
    let deadline = Instant::now() + Duration::from_secs(5);
    while db.sql(sessions) != "0" {
        assert!(
            Instant::now() < deadline,
            "a session of the killed tool is still there: {}",
            db.sql("SELECT string_agg(pid || ' ' || application_name || ' ' || state, '; ') FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tenant-backup%'")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(app);
}
