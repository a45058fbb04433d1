//! SIGTERM, SIGINT and SIGHUP while work is in flight: the children stop, the transaction rolls
//! back, no spool, temp or `.partial` file stays, no session of the tool stays, the exit code is
//! 128 + the signal, one line says what was left unchanged, and the next run works.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::http_recorder::HttpRecorder;
use crate::support::supabase_stub::{Faults, SupabaseStub};
use crate::support::*;

const SIGNALS: [(i32, &str); 3] = [
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGHUP, "SIGHUP"),
];

/// The binary, started in the background with a private `$TMPDIR`.
fn spawn(db: &TestDb, tmp: &Path, args: &[&str]) -> Child {
    spawn_with(db, tmp, &[], args)
}

fn spawn_with(db: &TestDb, tmp: &Path, env: &[(&str, String)], args: &[&str]) -> Child {
    crate::support::tool()
        .env("HOME", db.dir.path())
        .env("TMPDIR", tmp)
        .env("DATABASE_URL", db.url())
        .env("BACKUP_STORAGE", db.storage())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(db.dir.path())
        .args(["--no-progress"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the process to end (killing it after `timeout`, which fails the test).
fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running {timeout:?} after the signal:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The backup's spool is being written: for a local directory, a hidden `.partial` file in the
/// tenant's own folder (it becomes the object in place), with nothing in `$TMPDIR`.
fn spooling(db: &TestDb, tmp: &Path) -> bool {
    let spool = db
        .all_files()
        .iter()
        .any(|f| f.contains("/.") && f.ends_with(".partial"));
    spool && files(tmp).is_empty()
}

fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// This database's sessions of the tool (its own connections, and psql and pg_dump it started).
fn tool_sessions(db: &TestDb) -> i64 {
    db.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tenant-backup%'")
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // Reaped or not, a process that has exited no longer counts: look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// The exit code, the one line about what was left, nothing in `$TMPDIR`, no hidden file in the
/// bucket, and no session of the tool.
fn assert_stopped_cleanly(db: &TestDb, tmp: &Path, out: &Output, signal: (i32, &str), objects_before: &[String]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + signal.0), "{}: {stderr}", signal.1);
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with(&format!("stopped by {}: ", signal.1)), "{stderr}");
    assert_eq!(stderr.matches("stopped by").count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_no_secret(out);
    assert_eq!(files(tmp), Vec::<String>::new(), "left in $TMPDIR");
    assert_eq!(db.objects(), objects_before, "objects in the bucket");
    let hidden: Vec<String> = db.all_files().into_iter().filter(|f| f.contains("/.")).collect();
    assert!(hidden.is_empty(), "temporary files left in the bucket: {hidden:?}");
    // The server notices a closed connection at once; give it a moment all the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tool_sessions(db) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        db.sql("SELECT coalesce(string_agg(state || ' ' || coalesce(wait_event, '') || ': ' || query, E'\\n'), '') FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tenant-backup%'"),
        "",
        "sessions left after {}",
        signal.1
    );
}

/// A psql session of the test's own that holds a lock until dropped.
struct Holder(Child);

impl Holder {
    fn new(db: &TestDb, sql: &str) -> Holder {
        let mut child = cluster()
            .psql_command(&db.name)
            .args(["-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; {sql}; SELECT 'held';").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

#[test]
fn backup_stopped_by_a_signal_stops_pg_dump_and_leaves_nothing() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    let before = db.record_count("bienestar");
    let pid_file = db.dir.path().join("dump.pid");
    // The start of a dump, then it hangs: the spool file is open, pg_dump running.
    let fake = fake_pg_dump(
        db.dir.path(),
        &format!(
            "echo $$ > '{}'; echo 'SET statement_timeout = 0;'; sleep 60",
            pid_file.display()
        ),
    );
    for signal in SIGNALS {
        let _ = std::fs::remove_file(&pid_file);
        let child = spawn(
            &db,
            tmp.path(),
            &["--pg-dump", fake.to_str().unwrap(), "backup", "--tenant", "bienestar"],
        );
        wait_until("the spool file", Duration::from_secs(20), || {
            pid_file.exists() && spooling(&db, tmp.path())
        });
        let dump_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        unsafe { libc::kill(child.id() as i32, signal.0) };
        let out = finish(child, Duration::from_secs(15));
        assert_stopped_cleanly(&db, tmp.path(), &out, signal, &[]);
        assert!(
            !alive(dump_pid),
            "pg_dump (pid {dump_pid}) still runs after {}",
            signal.1
        );
        assert_eq!(db.record_count("bienestar"), before, "a row was recorded");
    }
    db.backup(&["--tenant", "bienestar"]);
    assert_eq!(db.record_count("bienestar"), before + 1);
}

#[test]
fn a_second_signal_exits_at_once() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = db.dir.path().join("dump.pid");
    // A pg_dump that ignores the polite signals: the first stop waits for it a while.
    let fake = fake_pg_dump(
        db.dir.path(),
        &format!(
            "trap '' INT TERM HUP; echo $$ > '{}'; echo 'SET statement_timeout = 0;'; sleep 60",
            pid_file.display()
        ),
    );
    let child = spawn(
        &db,
        tmp.path(),
        &["--pg-dump", fake.to_str().unwrap(), "backup", "--tenant", "bienestar"],
    );
    wait_until("pg_dump", Duration::from_secs(20), || {
        pid_file.exists() && spooling(&db, tmp.path())
    });
    let dump_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = finish(child, Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(second.elapsed() < Duration::from_secs(1), "took {:?}", second.elapsed());
    // Even then no child outlives it.
    wait_until("pg_dump to die with it", Duration::from_secs(5), || !alive(dump_pid));
}

#[test]
fn run_scheduled_stopped_by_a_signal_leaves_the_tenant_due() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    db.sql(
        "UPDATE public.tenants_clinic SET backup_schedule = 'disabled'; \
         UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = now() - interval '2 days' WHERE schema_name = 'bienestar'",
    );
    let state =
        || db.sql("SELECT backup_schedule, last_backup_at FROM public.tenants_clinic WHERE schema_name = 'bienestar'");
    let (tenant_before, records_before) = (state(), db.record_count("bienestar"));
    for signal in SIGNALS {
        // The json dumper's COPY waits for the application's lock: the dump is in flight.
        let holder = Holder::new(
            &db,
            "LOCK TABLE bienestar.appointments_patient IN ACCESS EXCLUSIVE MODE",
        );
        let child = spawn(&db, tmp.path(), &["run-scheduled", "--format", "json"]);
        wait_until("the dump to wait for the lock", Duration::from_secs(20), || {
            db.tool_waits_for_a_lock()
        });
        assert!(spooling(&db, tmp.path()), "{:?}", db.all_files());
        unsafe { libc::kill(child.id() as i32, signal.0) };
        let out = finish(child, Duration::from_secs(15));
        assert_stopped_cleanly(&db, tmp.path(), &out, signal, &[]);
        drop(holder);
        assert_eq!(
            (state(), db.record_count("bienestar")),
            (tenant_before.clone(), records_before)
        );
    }
    let out = db.cmd().args(["run-scheduled", "--format", "json"]).output().unwrap();
    assert!(
        text(&out.stdout).contains("1 due, 1 backed up, 0 failed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(db.record_count("bienestar"), records_before + 1);
}

#[test]
fn restore_stopped_by_a_signal_rolls_back_and_leaves_the_tenant_unchanged() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    db.backup(&["--tenant", "bienestar"]);
    db.sql("UPDATE bienestar.appointments_patient SET first_name = 'after the backup' WHERE id < 10");
    let objects = db.objects();
    let tenant = db.fingerprint("bienestar");
    let schemas =
        || db.sql("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'bienestar%'");
    let schemas_before = schemas();
    for signal in SIGNALS {
        // psql's first statement (renaming the schema aside) waits for the application's lock.
        let holder = Holder::new(&db, "GRANT USAGE ON SCHEMA bienestar TO PUBLIC");
        let child = spawn(
            &db,
            tmp.path(),
            &[
                "restore",
                "--tenant",
                "bienestar",
                "--latest",
                "--yes",
                "--lock-timeout",
                "120",
            ],
        );
        wait_until("psql to wait for the lock", Duration::from_secs(20), || {
            db.tool_waits_for_a_lock()
        });
        unsafe { libc::kill(child.id() as i32, signal.0) };
        let out = finish(child, Duration::from_secs(15));
        assert_stopped_cleanly(&db, tmp.path(), &out, signal, &objects);
        assert!(
            text(&out.stderr).contains("bienestar is unchanged"),
            "{}",
            text(&out.stderr)
        );
        drop(holder);
        assert_eq!(schemas(), schemas_before);
        assert_eq!(db.fingerprint("bienestar"), tenant);
    }
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--latest", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        db.sql("SELECT count(*) FROM bienestar.appointments_patient WHERE first_name = 'after the backup'"),
        "0"
    );
}

#[test]
fn verify_stopped_by_a_signal_cancels_its_query_and_leaves_nothing() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    // A json backup: verify loads it through the driver, not psql.
    db.backup(&["--tenant", "bienestar", "--format", "json"]);
    let objects = db.objects();
    let tenant = db.fingerprint("bienestar");
    for signal in SIGNALS {
        // A verify never touches the live schema (it loads into a staging schema of its own):
        // what it waits for is the tenant's lock, which a backup holds.
        let holder = Holder::new(
            &db,
            &format!(
                "DO $$ BEGIN PERFORM pg_advisory_xact_lock({}); END $$",
                tenant_backup::pg::lock::lock_key("bienestar")
            ),
        );
        let child = spawn(
            &db,
            tmp.path(),
            &["verify", "--tenant", "bienestar", "--lock-timeout", "120"],
        );
        wait_until("verify to wait for the tenant's lock", Duration::from_secs(20), || {
            db.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tenant-backup restore%'") != "0"
        });
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, signal.0) };
        let out = finish(child, Duration::from_secs(15));
        assert_stopped_cleanly(&db, tmp.path(), &out, signal, &objects);
        drop(holder);
        assert_eq!(db.fingerprint("bienestar"), tenant);
        assert_eq!(
            db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%\\_\\_restore\\_%'"),
            "0",
            "no staging schema is left"
        );
    }
    let out = db.cmd().args(["verify", "--tenant", "bienestar"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn download_stopped_by_a_signal_leaves_no_file() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.service.role", "backups", 50 * 1000 * 1000);
    let env = [
        ("BACKUP_STORAGE", "supabase://backups".to_string()),
        ("SUPABASE_URL", stub.url.clone()),
        ("SUPABASE_KEY", stub.key.clone()),
    ];
    let out = db
        .cmd()
        .envs(env.clone())
        .args(["--json", "backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keys = stub.keys();
    let target: PathBuf = db.dir.path().join("out.sql.zst");
    for signal in SIGNALS {
        // Half of the object arrives, then the storage stalls.
        stub.state.lock().unwrap().faults.stall = Some(("GET".into(), ".sql.zst".into()));
        let child = spawn_with(
            &db,
            tmp.path(),
            &env,
            &[
                "download",
                "--tenant",
                "bienestar",
                "--latest",
                "-o",
                target.to_str().unwrap(),
            ],
        );
        wait_until("the download to be under way", Duration::from_secs(20), || {
            std::fs::read_dir(tmp.path())
                .unwrap()
                .any(|e| e.unwrap().metadata().map(|m| m.len() > 0).unwrap_or(false))
        });
        unsafe { libc::kill(child.id() as i32, signal.0) };
        let out = finish(child, Duration::from_secs(15));
        stub.state.lock().unwrap().faults.stall = None;
        assert_stopped_cleanly(&db, tmp.path(), &out, signal, &[]);
        assert_eq!(stub.keys(), keys);
        assert!(
            !files(db.dir.path()).iter().any(|f| f.contains("out.sql")),
            "{:?}",
            files(db.dir.path())
        );
    }
    let out = db
        .cmd()
        .envs(env)
        .args([
            "download",
            "--tenant",
            "bienestar",
            "--latest",
            "-o",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(target.is_file());
}

/// A backup of a tenant large enough for a resumable (TUS) upload to a Supabase stub with `fault`
/// set, started and seen to have begun its upload: the database, the run's directory, the stub,
/// the running backup and the tenant's history rows before it.
fn resumable_backup_started(fault: impl FnOnce(&mut Faults)) -> (TestDb, tempfile::TempDir, SupabaseStub, Child, i64) {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    db.sql(
        "CREATE TABLE mindcare.bulk (id int PRIMARY KEY, body text); \
         INSERT INTO mindcare.bulk SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 100000) g",
    );
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.service.role", "backups", 50 * 1000 * 1000);
    fault(&mut stub.state.lock().unwrap().faults);
    let env = [
        ("BACKUP_STORAGE", "supabase://backups".to_string()),
        ("SUPABASE_URL", stub.url.clone()),
        ("SUPABASE_KEY", stub.key.clone()),
    ];
    let before = db.record_count("mindcare");
    let child = spawn_with(
        &db,
        tmp.path(),
        &env,
        &["backup", "--tenant", "mindcare", "--compress", "none"],
    );
    wait_until("the resumable upload", Duration::from_secs(30), || {
        !stub.state.lock().unwrap().uploads.is_empty()
    });
    (db, tmp, stub, child, before)
}

#[test]
fn a_stopped_resumable_upload_is_terminated() {
    // Above 6 MB the upload is resumable (TUS); its first chunk hangs.
    let (db, tmp, stub, child, before) = resumable_backup_started(|f| f.stall = Some(("PATCH".into(), String::new())));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = finish(child, Duration::from_secs(15));
    stub.state.lock().unwrap().faults.stall = None;
    assert_stopped_cleanly(&db, tmp.path(), &out, SIGNALS[0], &[]);
    let st = stub.state.lock().unwrap();
    assert!(st.uploads.is_empty(), "the upload was left with the server");
    assert!(st.objects.is_empty(), "{:?}", st.objects.keys().collect::<Vec<_>>());
    drop(st);
    assert_eq!(db.record_count("mindcare"), before);
}

#[test]
fn a_stop_while_a_resumable_upload_is_being_created_still_cancels_it() {
    // The server has made the upload but its answer has not arrived when the stop comes: the stop
    // waits for that answer, so the upload is known and cancelled, not left with the server.
    let (db, tmp, stub, child, before) =
        resumable_backup_started(|f| f.stall_answer = Some(("POST".into(), "upload/resumable".into())));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    stub.state.lock().unwrap().faults.stall_answer = None;
    let out = finish(child, Duration::from_secs(15));
    assert_stopped_cleanly(&db, tmp.path(), &out, SIGNALS[0], &[]);
    let st = stub.state.lock().unwrap();
    assert!(st.uploads.is_empty(), "the upload was left with the server");
    assert!(st.objects.is_empty(), "{:?}", st.objects.keys().collect::<Vec<_>>());
    drop(st);
    assert_eq!(db.record_count("mindcare"), before);
}

#[test]
fn a_stopped_run_still_pings_fail_and_notifies() {
    let db = TestDb::new();
    let tmp = tempfile::tempdir().unwrap();
    let (hc, notify) = (HttpRecorder::start(), HttpRecorder::start());
    let fake = fake_pg_dump(db.dir.path(), "echo 'SET statement_timeout = 0;'; sleep 60");
    let env = [
        ("BACKUP_PING_URL", format!("{}/p", hc.url)),
        ("BACKUP_NOTIFY_URL", format!("{}/hook", notify.url)),
    ];
    let child = spawn_with(
        &db,
        tmp.path(),
        &env,
        &["--pg-dump", fake.to_str().unwrap(), "backup", "--tenant", "bienestar"],
    );
    wait_until("the spool file", Duration::from_secs(20), || spooling(&db, tmp.path()));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = finish(child, Duration::from_secs(15));
    assert_stopped_cleanly(&db, tmp.path(), &out, SIGNALS[0], &[]);
    let pings = hc.requests();
    assert_eq!(
        pings.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/p/start", "/p/fail"]
    );
    assert!(pings[1].body.contains("stopped by SIGTERM"), "{}", pings[1].body);
    let sent = notify.requests();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].body.contains("stopped by SIGTERM"), "{}", sent[0].body);
}
