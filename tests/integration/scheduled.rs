//! `run-scheduled`, `schedule` and `status` on the fixture, with schedules set relative to now.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// bienestar daily and due, mindcare disabled, clinica_demo scheduled a minute ago.
fn set_schedules(db: &TestDb) {
    db.sql(
        "UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = now() - interval '2 days', next_scheduled_backup = NULL WHERE schema_name = 'bienestar'; \
         UPDATE public.tenants_clinic SET backup_schedule = 'disabled', last_backup_at = NULL WHERE schema_name = 'mindcare'; \
         UPDATE public.tenants_clinic SET backup_schedule = 'scheduled', last_backup_at = NULL, next_scheduled_backup = now() - interval '1 minute' WHERE schema_name = 'clinica_demo'",
    );
}

fn automatic_rows(db: &TestDb, schema: &str) -> i64 {
    db.sql(&format!("SELECT count(*) FROM {}.backups_backuprecord WHERE backup_type = 'automatic' AND created_at > now() - interval '1 hour'", quote(schema)))
        .parse()
        .unwrap()
}

#[test]
fn a_tick_backs_up_exactly_the_due_tenants_and_a_second_tick_nothing() {
    let db = TestDb::new();
    set_schedules(&db);
    let out = db.cmd().args(["run-scheduled", "--json"]).output().unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["due"].as_u64(), v["backed_up"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{v}"
    );
    assert_eq!(automatic_rows(&db, "bienestar"), 1);
    assert_eq!(automatic_rows(&db, "clinica_demo"), 1);
    assert_eq!(automatic_rows(&db, "mindcare"), 0);
    assert!(
        db.objects().iter().all(|k| k.contains("/auto-sql-")),
        "{:?}",
        db.objects()
    );
    assert_eq!(
        db.sql("SELECT schema_name, backup_schedule, next_scheduled_backup IS NULL, last_backup_at > now() - interval '5 minutes' FROM public.tenants_clinic WHERE schema_name <> 'public' ORDER BY 1"),
        "bienestar|daily|t|t\nclinica_demo|disabled|t|t\nmindcare|disabled|t|"
    );
    let rows = db.sql("SELECT created_by_id IS NULL, file_path LIKE 'bienestar/auto-sql-bienestar-%' FROM bienestar.backups_backuprecord WHERE backup_type = 'automatic' AND created_at > now() - interval '1 hour'");
    assert_eq!(rows, "t|t");

    let out = db.cmd().args(["run-scheduled"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("0 due, 0 backed up, 0 failed, 0 skipped"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(db.objects().len(), 4);
}

#[test]
fn eight_simultaneous_ticks_back_up_each_due_tenant_exactly_once() {
    let db = TestDb::new();
    set_schedules(&db);
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL WHERE schema_name = 'mindcare'");
    let children: Vec<_> = (0..8)
        .map(|_| {
            crate::support::tool()
                .args(["run-scheduled", "--json", "--concurrency", "3"])
                .env("DATABASE_URL", db.url())
                .env("BACKUP_STORAGE", db.storage())
                .current_dir(db.dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut backed_up = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        backed_up += v["backed_up"].as_u64().unwrap();
    }
    assert_eq!(backed_up, 3, "each due tenant once across all workers");
    for t in ["bienestar", "clinica_demo", "mindcare"] {
        assert_eq!(automatic_rows(&db, t), 1, "{t}");
        assert_eq!(
            db.objects().iter().filter(|k| k.starts_with(&format!("{t}/"))).count(),
            2,
            "{t}: {:?}",
            db.objects()
        );
    }
}

#[test]
fn a_failing_tenant_is_reported_stays_due_and_the_others_succeed() {
    let db = TestDb::new();
    set_schedules(&db);
    // mindcare is due, but its schema has gone: pg_dump fails for it alone.
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = now() - interval '3 days' WHERE schema_name = 'mindcare'; ALTER SCHEMA mindcare RENAME TO mindcare_gone");
    let out = db.cmd().args(["run-scheduled", "--concurrency", "1"]).output().unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("mindcare: FAILED") && stdout.contains("3 due, 2 backed up, 1 failed, 0 skipped"),
        "{stdout}"
    );
    assert_eq!(automatic_rows(&db, "bienestar"), 1);
    assert_eq!(automatic_rows(&db, "clinica_demo"), 1);
    assert_eq!(
        db.sql("SELECT last_backup_at < now() - interval '2 days' FROM public.tenants_clinic WHERE schema_name = 'mindcare'"),
        "t",
        "still due"
    );
    let out = db.cmd().args(["run-scheduled", "--dry-run"]).output().unwrap();
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("mindcare") && l.contains("due")),
        "{}",
        text(&out.stdout)
    );
}

/// Holds a tenant's advisory lock from another session until dropped.
struct HeldLock {
    child: std::process::Child,
    db: String,
    objid: u32,
}

impl HeldLock {
    fn take(db: &TestDb, schema: &str) -> HeldLock {
        HeldLock::take_as(db, schema, "psql")
    }

    /// Held by a session named `application_name`.
    fn take_as(db: &TestDb, schema: &str, application_name: &str) -> HeldLock {
        let key = tenant_backup::pg::lock::lock_key(schema);
        let mut child = cluster()
            .psql_command(&db.name)
            .env("PGAPPNAME", application_name)
            .args([
                "-c",
                &format!("SELECT pg_advisory_lock({key})"),
                "-c",
                "SELECT pg_sleep(30)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the lock shows up.
        for _ in 0..100 {
            if db.sql(&format!(
                "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND locktype = 'advisory' AND granted AND objid = {}",
                key as u64 as u32
            )) == "1"
            {
                return HeldLock {
                    child,
                    db: db.name.clone(),
                    objid: key as u64 as u32,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the lock was never taken");
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // The server notices a vanished client only when pg_sleep ends, so end its session directly.
        let _ = cluster().sql(
            &self.db,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND locktype = 'advisory' AND objid = {}",
                self.objid
            ),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..100 {
            let held = cluster().sql(
                &self.db,
                &format!(
                    "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND locktype = 'advisory' AND objid = {}",
                    self.objid
                ),
            );
            if held.ok().as_deref() == Some("0") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn locked_tenants_are_skipped_by_ticks_and_waited_for_by_manual_backups() {
    let db = TestDb::new();
    set_schedules(&db);
    let held = HeldLock::take(&db, "bienestar");
    let out = db.cmd().args(["run-scheduled"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("bienestar: skipped, another worker holds its lock")
            && stdout.contains("2 due, 1 backed up, 0 failed, 1 skipped"),
        "{stdout}"
    );
    assert_eq!(automatic_rows(&db, "bienestar"), 0);

    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--lock-timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tenant bienestar is busy") && stderr.contains("psql"),
        "names the holder: {stderr}"
    );
    drop(held);
    let out = db.cmd().args(["run-scheduled"]).output().unwrap();
    assert!(
        text(&out.stdout).contains("1 due, 1 backed up"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_busy_tenant_names_the_holder_in_its_own_database_never_one_in_another() {
    // Advisory locks belong to a database: the same tenant name in other databases of the cluster
    // (staging, another deployment) is locked there, and those sessions are none of this one's business.
    let others: Vec<TestDb> = (0..3).map(|_| TestDb::new()).collect();
    let _held_elsewhere: Vec<HeldLock> = others
        .iter()
        .map(|o| HeldLock::take_as(o, "bienestar", "holder-in-another-database"))
        .collect();
    let db = TestDb::new();
    let _held = HeldLock::take(&db, "bienestar");
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--lock-timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tenant bienestar is busy") && stderr.contains("psql") && !stderr.contains("another-database"),
        "names this database's holder only: {stderr}"
    );
}

#[test]
fn schedule_sets_rows_and_rejects_bad_input() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .args(["schedule", "--tenant", "mindcare", "at", "2099-01-01T03:00:00+01:00"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        db.sql(
            "SELECT backup_schedule, next_scheduled_backup FROM public.tenants_clinic WHERE schema_name = 'mindcare'"
        ),
        "scheduled|2099-01-01 02:00:00+00"
    );
    let out = db
        .cmd()
        .args(["schedule", "--tenant", "mindcare", "daily"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let before = db.sql("SELECT * FROM public.tenants_clinic ORDER BY id");
    for args in [
        vec!["schedule", "--tenant", "mindcare", "hourly"],
        vec!["schedule", "--tenant", "mindcare", "at", "2001-01-01T00:00:00Z"],
        vec!["schedule", "--tenant", "mindcare", "at", "tomorrow"],
        vec!["schedule", "--tenant", "mindcare", "at"],
        vec!["schedule", "--tenant", "nope", "daily"],
        vec!["schedule", "--tenant", "public", "daily"],
        vec!["run-scheduled", "--daily-at", "3am"],
        vec!["run-scheduled", "--daily-at", "03:00", "--timezone", "Mars/Olympus"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(
        db.sql("SELECT * FROM public.tenants_clinic ORDER BY id"),
        before,
        "nothing changed"
    );
}

#[test]
fn status_flags_overdue_tenants_with_exit_code_1() {
    let db = TestDb::new();
    db.sql(
        "UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = now() - interval '2 hours' WHERE schema_name = 'bienestar'; \
         UPDATE public.tenants_clinic SET backup_schedule = 'disabled' WHERE schema_name IN ('mindcare', 'clinica_demo')",
    );
    let out = db.cmd().args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["tenant"], "bienestar");
    assert_eq!(v[0]["overdue"], false);
    assert!(v[0]["next_due"].is_string());

    db.sql(
        "UPDATE public.tenants_clinic SET last_backup_at = now() - interval '27 hours' WHERE schema_name = 'bienestar'",
    );
    let out = db.cmd().args(["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("bienestar") && l.contains("OVERDUE")),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn status_shows_times_in_the_given_timezone() {
    let db = TestDb::new();
    db.sql(
        "UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = '2026-07-01 10:00:00+00' WHERE schema_name = 'bienestar'",
    );
    let out = db
        .cmd()
        .args(["status", "--timezone", "Europe/Madrid"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("bienestar") && l.contains("2026-07-01 12:00 CEST")),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let bad = db
        .cmd()
        .args(["status", "--timezone", "Mars/Olympus"])
        .output()
        .unwrap();
    assert_fails(&bad, 2, "is not a time zone");
}
