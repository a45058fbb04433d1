//! The Supabase client against a stub that answers as the real server does (issue #13, item 4):
//! key segments percent-encoded, names the server cannot store refused up front, no redirects,
//! no Location on another origin, https unless loopback, 503-in-a-400 retried, "already exists"
//! told from an offset conflict, one request per existence check, listing from the tenant's own
//! folder, deletes in batches, abandoned resumable uploads cancelled.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::storage_truth::{grow_mindcare, Backend, Kind};
use crate::support::supabase_stub::{BucketSettings, Fault};
use crate::support::*;

/// Requests the stub saw: (method, path).
fn log(b: &Backend) -> Vec<(String, String)> {
    b.stub()
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect()
}

fn clear_log(b: &Backend) {
    b.stub().state.lock().unwrap().log.clear();
}

/// A server that records every request it gets and answers each with `answer`.
struct Sink {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    fn start(answer: impl Fn() -> String + Send + 'static) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut req = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    req.push_str(&line);
                }
                s.lock().unwrap().push(req);
                let mut out = stream;
                let _ = out.write_all(answer().as_bytes());
            }
        });
        Sink { url, seen }
    }
}

fn not_found() -> String {
    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
}

#[test]
fn storage_supabase_keys_are_percent_encoded_segment_by_segment() {
    let db = TestDb::new();
    let mut b = Backend::new(Kind::Supabase);
    // Characters the server stores, several of which mean something in a URL.
    b.prefix = "exports 2026/a+b&c=d;e,f:g@h$i'(j)*!?k".into();
    let key = b.backup(&db, "mindcare", &[]);
    let full = format!("{}/{key}", b.prefix);
    let stored = b.stub().keys();
    assert!(stored.contains(&full), "stored under its own name: {stored:?}");
    assert!(stored.contains(&format!("{full}.manifest.json")), "{stored:?}");
    assert_eq!(stored.len(), 2, "no strays: {stored:?}");
    let out = b.run_ok(&db, &["list", "--check", "--tenant", "mindcare"]);
    assert!(text(&out.stdout).contains("yes"), "{}", text(&out.stdout));
    b.run_ok(&db, &["verify", "--tenant", "mindcare"]);
    let out = b.run_ok(&db, &["cleanup", "--orphans", "--tenant", "mindcare"]);
    assert!(!text(&out.stdout).contains("without"), "{}", text(&out.stdout));
    db.sql("UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '9 days'");
    b.run_ok(
        &db,
        &[
            "cleanup",
            "--days",
            "1",
            "--keep-last",
            "0",
            "--include-manual",
            "--tenant",
            "mindcare",
        ],
    );
    assert!(b.stub().keys().is_empty(), "{:?}", b.stub().keys());
}

#[test]
fn storage_supabase_refuses_names_the_server_cannot_store_before_any_request() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    for url in [
        "supabase://backups/%2e%2e/%2e%2e/other",
        "supabase://backups/a#b",
        "supabase://backups/100%",
        "supabase://backups/clínica",
        "supabase://backups/a\tb",
        "supabase://backups/a/../b",
        "supabase://backups/a//b",
        "supabase://buck%et",
    ] {
        let out = b
            .cmd(&db)
            .env("BACKUP_STORAGE", url)
            .args(["backup", "--tenant", "mindcare"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("cannot"), "{url:?}: {}", text(&out.stderr));
    }
    assert!(log(&b).is_empty(), "nothing was sent: {:?}", log(&b));
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn storage_supabase_redirects_are_never_followed() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    let elsewhere = Sink::start(not_found);
    let to = elsewhere.url.clone();
    let redirector = Sink::start(move || {
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}/storage/v1/object/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    });
    let out = b
        .cmd(&db)
        .env("SUPABASE_URL", &redirector.url)
        .env("BACKUP_STORAGE_RETRIES", "0")
        .args(["backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "redirect");
    assert!(!redirector.seen.lock().unwrap().is_empty());
    assert!(
        elsewhere.seen.lock().unwrap().is_empty(),
        "the key went to another host: {:?}",
        elsewhere.seen.lock().unwrap()
    );
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn storage_supabase_requires_https_except_on_loopback() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    for url in ["http://example.com", "http://10.0.0.7:8000", "ftp://example.com"] {
        let out = b
            .cmd(&db)
            .env("SUPABASE_URL", url)
            .args(["backup", "--tenant", "mindcare"])
            .output()
            .unwrap();
        assert_fails(&out, 2, "https");
    }
    let port = b.stub().url.rsplit(':').next().unwrap().to_string();
    let out = b
        .cmd(&db)
        .env("SUPABASE_URL", format!("http://localhost:{port}"))
        .args(["backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loopback over http is fine: {}",
        text(&out.stderr)
    );
}

#[test]
fn storage_supabase_resumable_location_on_another_origin_is_refused() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    let elsewhere = Sink::start(not_found);
    b.stub().state.lock().unwrap().tus_location_origin = Some(elsewhere.url.clone());
    grow_mindcare(&db, 8);
    let out = b.run(&db, &["backup", "--tenant", "mindcare", "--compress", "none"]);
    assert_fails(&out, 1, "another origin");
    assert!(elsewhere.seen.lock().unwrap().is_empty(), "nothing was sent there");
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn storage_supabase_503_inside_an_http_400_is_retried() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    b.stub().inject(
        Some("POST"),
        "/object/backups/mindcare/",
        Fault::DatabaseReadOnly,
        Some(2),
    );
    b.stub()
        .inject(Some("GET"), "/object/info/", Fault::LockTimeout, Some(1));
    let out = b
        .cmd(&db)
        .env("BACKUP_STORAGE_RETRIES", "3")
        .args(["backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("503"),
        "the retries are logged: {}",
        text(&out.stderr)
    );
    assert_eq!(db.record_count("mindcare"), 1);
}

#[test]
fn storage_supabase_already_exists_during_a_resumable_upload_is_not_an_offset_conflict() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // Someone else stores the name while our upload runs: the server says so on the PATCH.
    b.stub()
        .inject(Some("PATCH"), "/upload/resumable/", Fault::KeyAlreadyExists, Some(1));
    grow_mindcare(&db, 8);
    let started = std::time::Instant::now();
    let key = b.backup(&db, "mindcare", &["--compress", "none"]);
    assert!(key.ends_with("-2.sql"), "the next free name is used: {key}");
    let requests = log(&b);
    assert!(
        !requests.iter().any(|(m, _)| m == "HEAD"),
        "no offset query for a name that is taken: {requests:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "no conflict retries"
    );
    assert!(
        b.stub()
            .state
            .lock()
            .unwrap()
            .uploads
            .values()
            .all(|u| Some(u.data.len() as u64) == u.length),
        "the abandoned upload was cancelled"
    );
}

#[test]
fn storage_supabase_abandoned_resumable_uploads_are_cancelled() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    b.stub()
        .inject(Some("PATCH"), "/upload/resumable/", Fault::InternalError, None);
    grow_mindcare(&db, 8);
    let out = b
        .cmd(&db)
        .env("BACKUP_STORAGE_RETRIES", "1")
        .args(["backup", "--tenant", "mindcare", "--compress", "none"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        log(&b)
            .iter()
            .any(|(m, p)| m == "DELETE" && p.contains("/upload/resumable/")),
        "{:?}",
        log(&b)
    );
    assert!(
        b.stub().state.lock().unwrap().uploads.is_empty(),
        "no upload left behind"
    );
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn storage_supabase_checks_a_tenants_rows_with_one_listing_of_its_own_folder() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    for t in ["mindcare", "mindcare", "mindcare", "bienestar", "clinica_demo"] {
        b.backup(&db, t, &[]);
    }
    clear_log(&b);
    let out = b.run_ok(&db, &["--json", "list", "--check", "--tenant", "mindcare"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<_> = v[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["in_bucket"].clone())
        .collect();
    assert_eq!(found, vec![serde_json::json!("yes"); 3], "{}", text(&out.stdout));
    let requests = log(&b);
    assert!(
        !requests.iter().any(|(_, p)| p.contains("/object/info/")),
        "no request per row: {requests:?}"
    );
    let lists: Vec<_> = requests.iter().filter(|(_, p)| p.contains("/object/list")).collect();
    assert_eq!(lists.len(), 1, "one listing of mindcare's folder: {requests:?}");

    clear_log(&b);
    b.run_ok(&db, &["cleanup", "--orphans", "--tenant", "mindcare"]);
    let lists: Vec<_> = log(&b)
        .into_iter()
        .filter(|(_, p)| p.contains("/object/list"))
        .collect();
    assert_eq!(lists.len(), 1, "one page from mindcare's own folder: {lists:?}");
}

#[test]
fn storage_supabase_deletes_in_batches() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    for _ in 0..4 {
        b.backup(&db, "mindcare", &["--type", "automatic"]);
    }
    db.sql("UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '40 days'");
    clear_log(&b);
    let out = b.run_ok(
        &db,
        &["cleanup", "--days", "30", "--keep-last", "0", "--tenant", "mindcare"],
    );
    assert!(text(&out.stdout).contains("deleted 4 backups"), "{}", text(&out.stdout));
    let deletes = log(&b).into_iter().filter(|(m, _)| m == "DELETE").count();
    assert!(deletes <= 2, "objects in one call, manifests in another: {deletes}");
    assert!(b.stub().keys().is_empty());
}

#[test]
fn storage_supabase_cleanup_refuses_a_key_that_is_not_service_role() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    b.backup(&db, "mindcare", &["--type", "automatic"]);
    b.backup(&db, "mindcare", &["--type", "automatic"]);
    db.sql("UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '40 days'");
    let anon = b.stub().anon_key.clone();
    clear_log(&b);
    let out = b
        .cmd(&db)
        .env("SUPABASE_KEY", &anon)
        .args(["cleanup", "--days", "1", "--keep-last", "0"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "service_role");
    assert!(!text(&out.stderr).contains(&anon));
    assert!(!log(&b).iter().any(|(m, _)| m == "DELETE"));
    assert_eq!(db.record_count("mindcare"), 2);
}

/// Uploads the stub still holds that never became an object.
fn open_uploads(b: &Backend) -> usize {
    b.stub()
        .state
        .lock()
        .unwrap()
        .uploads
        .values()
        .filter(|u| u.length != Some(u.data.len() as u64))
        .count()
}

#[test]
fn storage_supabase_a_name_taken_mid_upload_leaves_no_upload_behind() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // Another writer stores the name while our resumable upload runs: the PATCH is answered 409,
    // and so is a cancel that does not say `x-upsert: true` (the server checks the name again).
    b.stub()
        .inject(Some("PATCH"), "/upload/resumable/", Fault::TakeName, Some(1));
    grow_mindcare(&db, 8);
    let key = b.backup(&db, "mindcare", &["--compress", "none"]);
    assert!(key.ends_with("-2.sql"), "the next free name is used: {key}");
    let theirs = key.replace("-2.sql", ".sql");
    assert_eq!(
        b.stub().state.lock().unwrap().objects.get(&theirs).map(Vec::as_slice),
        Some(&b"theirs"[..]),
        "the other writer's object is left alone"
    );
    assert_eq!(open_uploads(&b), 0, "our abandoned upload was cancelled: {:?}", log(&b));
}

#[test]
fn storage_supabase_an_upload_abandoned_while_the_server_is_down_is_still_cancelled() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // The server goes away mid-upload (every chunk's connection dropped) and is still away for
    // the first cancel; nothing on the server ever expires the upload, so the cancel is retried.
    b.stub()
        .inject(Some("PATCH"), "/upload/resumable/", Fault::Disconnect, None);
    b.stub()
        .inject(Some("DELETE"), "/upload/resumable/", Fault::Disconnect, Some(2));
    grow_mindcare(&db, 8);
    let out = b
        .cmd(&db)
        .env("BACKUP_STORAGE_RETRIES", "2")
        .args(["backup", "--tenant", "mindcare", "--compress", "none"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(open_uploads(&b), 0, "{}\n{:?}", text(&out.stderr), log(&b));
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn storage_supabase_cleanup_orphans_fix_deletes_objects_in_one_call() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    b.backup(&db, "mindcare", &[]);
    {
        let mut st = b.stub().state.lock().unwrap();
        for day in 1..=6 {
            st.objects.insert(
                format!("mindcare/auto-sql-mindcare-2026-01-0{day}-000000.sql.zst"),
                b"orphan".to_vec(),
            );
        }
    }
    clear_log(&b);
    let out = b.run_ok(
        &db,
        &[
            "cleanup",
            "--orphans",
            "--fix",
            "--grace-hours",
            "0",
            "--include-manual",
            "--tenant",
            "mindcare",
        ],
    );
    let deletes: Vec<_> = log(&b).into_iter().filter(|(m, _)| m == "DELETE").collect();
    assert_eq!(
        deletes.len(),
        1,
        "one bulk delete for six orphans: {deletes:?}\n{}",
        text(&out.stdout)
    );
    assert_eq!(
        b.stub().keys().len(),
        2,
        "the backup and its manifest stay: {:?}",
        b.stub().keys()
    );
}

/// A server that accepts every connection and reads nothing, answers nothing (a hung server or a
/// black-holing proxy); the connections stay open.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

#[test]
fn storage_supabase_a_server_that_never_answers_is_given_up_on_after_the_idle_timeout() {
    let db = TestDb::new();
    let started = std::time::Instant::now();
    let out = db
        .cmd()
        .env("SUPABASE_URL", silent_server())
        .env("SUPABASE_KEY", "sb_secret_test")
        .env("BACKUP_STORAGE", "supabase://backups")
        .env("BACKUP_STORAGE_RETRIES", "2")
        .env("BACKUP_STORAGE_IDLE_TIMEOUT", "1")
        .args(["--no-progress", "backup", "--tenant", "mindcare"])
        .timeout(std::time::Duration::from_secs(90))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    // Found by the probe before any dump: storage that does not answer is the operator's to fix
    // (docs/exit-codes.md).
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{err}");
    let retries: Vec<&str> = err.lines().filter(|l| l.contains("retrying in")).collect();
    assert!(retries.len() >= 2, "every retry is logged: {err}");
    for line in &retries {
        assert!(
            line.contains(
                "the server sent nothing for 1s (the idle timeout, --storage-idle-timeout / BACKUP_STORAGE_IDLE_TIMEOUT); retrying in"
            ),
            "{line}"
        );
    }
    assert!(
        err.contains("did not answer (the server sent nothing for 1s (the idle timeout, --storage-idle-timeout / BACKUP_STORAGE_IDLE_TIMEOUT), 3 attempts): the server accepted the request and went quiet"),
        "the error says what happened: {err}"
    );
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn storage_supabase_an_upload_whose_answer_was_lost_is_recognised_when_retried() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // The server stores the object, and its answer never comes: the client gives the request up
    // after the idle timeout and sends it again, which meets "already exists" for its own object.
    b.stub().state.lock().unwrap().faults.lose_answers = Some(("POST".into(), "/object/backups/mindcare/".into(), 1));
    let out = b
        .cmd(&db)
        .env("BACKUP_STORAGE_IDLE_TIMEOUT", "1")
        .args(["--json", "--no-progress", "backup", "--tenant", "mindcare"])
        .timeout(std::time::Duration::from_secs(90))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v[0]["backup"]["key"].as_str().unwrap().to_string();
    assert!(
        !key.contains("-2."),
        "not stored a second time under another name: {key}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("retrying in")).count(),
        1,
        "one retry, logged once: {err}"
    );
    let keys = b.stub().keys();
    assert_eq!(keys.len(), 2, "the backup and its manifest, no orphan copy: {keys:?}");
    assert!(keys.contains(&key), "{keys:?}");
    assert_eq!(db.record_count("mindcare"), 1);
    b.run_ok(&db, &["verify", "--tenant", "mindcare"]);
}

#[test]
fn storage_supabase_rows_under_another_prefix_after_a_prefix_change_are_neither_missing_nor_deleted() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // Two backups at the bucket's root; the second one's object is then really lost.
    let kept = b.backup(&db, "mindcare", &[]);
    let lost = b.backup(&db, "mindcare", &[]);
    b.stub().state.lock().unwrap().objects.remove(&lost);
    // The operator moves the storage to a prefix of the same bucket.
    let moved = |args: &[&str]| {
        b.cmd(&db)
            .env("BACKUP_STORAGE", "supabase://backups/new-prefix")
            .args(args)
            .output()
            .unwrap()
    };
    let out = moved(&["--no-progress", "list", "--check", "--tenant", "mindcare"]);
    let listing = text(&out.stdout);
    let line = |key: &str| {
        listing
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line(&kept).ends_with("in another prefix: the bucket's root"),
        "{listing}\n{}",
        text(&out.stderr)
    );
    assert!(line(&lost).ends_with("MISSING"), "{listing}");
    let out = moved(&["--json", "list", "--check", "--tenant", "mindcare"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = v[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file_path"] == kept.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["in_bucket"], "elsewhere");
    assert_eq!(row["prefix"], "");

    let out = moved(&[
        "--no-progress",
        "cleanup",
        "--orphans",
        "--fix",
        "--grace-hours",
        "0",
        "--include-manual",
        "--tenant",
        "mindcare",
    ]);
    let report = text(&out.stdout);
    assert!(
        report.contains("row in another prefix")
            && report
                .contains("its object is at the bucket's root in the same bucket, not under this storage's prefix"),
        "{report}\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        db.record_count("mindcare"),
        1,
        "only the really missing row went: {report}"
    );
    assert!(b.stub().keys().contains(&kept), "{:?}", b.stub().keys());

    // Retention keeps it too: deleting the row would leave its object behind for good.
    db.sql("UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '40 days'");
    let out = moved(&[
        "--no-progress",
        "cleanup",
        "--days",
        "30",
        "--keep-last",
        "0",
        "--include-manual",
        "--tenant",
        "mindcare",
    ]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    assert!(
        report.contains("deleted 0 backups (0.00 B), kept 1, 0 failed"),
        "{report}"
    );
    assert!(
        report.contains("its object is at the bucket's root in the same bucket"),
        "{report}"
    );
    assert_eq!(db.record_count("mindcare"), 1, "{report}");
    assert!(b.stub().keys().contains(&kept), "{:?}", b.stub().keys());
}

#[test]
fn storage_supabase_cleanup_orphans_fix_removes_missing_rows_without_a_request_per_row() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    b.backup(&db, "mindcare", &[]);
    // Six rows whose objects are gone; their manifests are still there.
    for day in 1..=6 {
        let key = format!("mindcare/backup-sql-mindcare-2026-01-0{day}-000000.sql.zst");
        record_row(&db, &key, "now()");
        b.stub()
            .state
            .lock()
            .unwrap()
            .objects
            .insert(format!("{key}.manifest.json"), b"{}".to_vec());
    }
    clear_log(&b);
    let out = b.run_ok(
        &db,
        &[
            "cleanup",
            "--orphans",
            "--fix",
            "--grace-hours",
            "0",
            "--tenant",
            "mindcare",
        ],
    );
    assert!(
        text(&out.stdout).contains("deleted 6 orphans of 6 found (0 objects and 6 rows), 0 failed"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(db.record_count("mindcare"), 1);
    let requests = log(&b);
    let per_row: Vec<_> = requests
        .iter()
        .filter(|(m, p)| p.contains("/object/info/") || m == "HEAD" || m == "DELETE")
        .collect();
    assert_eq!(
        per_row.len(),
        1,
        "one bulk delete of the six manifests, no check or delete per row: {requests:?}"
    );
    assert_eq!(b.stub().keys().len(), 2, "{:?}", b.stub().keys());
}

#[test]
fn storage_supabase_expiring_rows_whose_objects_are_gone_checks_them_with_one_listing() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    b.backup(&db, "mindcare", &[]);
    // Four expired rows whose objects are already gone (the newest one is kept: --keep-last 1).
    for day in 1..=4 {
        let key = format!("mindcare/backup-sql-mindcare-2025-01-0{day}-000000.sql.zst");
        record_row(&db, &key, "now() - interval '400 days'");
    }
    clear_log(&b);
    let out = b.run_ok(&db, &["cleanup", "--days", "30", "--tenant", "mindcare"]);
    assert!(
        text(&out.stdout).contains("deleted 3 backups (0.00 B), kept 2, 0 failed"),
        "{}",
        text(&out.stdout)
    );
    let requests = log(&b);
    assert!(
        !requests.iter().any(|(_, p)| p.contains("/object/info/")),
        "no info request per missing object: {requests:?}"
    );
    assert_eq!(db.record_count("mindcare"), 2);
}

/// A history row of mindcare's (automatic, 100 bytes) for `key`, created at `created` (SQL).
fn record_row(db: &TestDb, key: &str, created: &str) {
    db.sql(&format!(
        "INSERT INTO mindcare.backups_backuprecord (file_name, file_path, file_size, backup_type, created_at) \
         VALUES ('{name}', '{key}', 100, 'automatic', {created})",
        name = key.trim_start_matches("mindcare/")
    ));
}

// ---------------------------------------------------------------------------------------------
// A bucket's own limits (#24 item 6): the messages name the limit that refused the backup and the
// type to allow, read from the bucket itself; nothing is left behind and no row is written.

/// What the error line of `stderr` says (after the time and level), with the object's key (which
/// holds the time) replaced by `KEY`.
fn refusal(stderr: &str, tenant: &str) -> String {
    let line = stderr
        .lines()
        .find_map(|l| l.split_once(" ERROR ").map(|(_, said)| said))
        .unwrap_or_else(|| panic!("no error in:\n{stderr}"));
    let start = line
        .find(&format!("{tenant}/"))
        .unwrap_or_else(|| panic!("no key in {line:?}"));
    let end = start + line[start..].find([' ', ':']).unwrap();
    let key = &line[start..end];
    let key = key.strip_suffix("'s").unwrap_or(key);
    line.replace(key, "KEY")
}

/// A backup of mindcare that the bucket refuses: its stderr, after checking that it failed with
/// exit 1 and left no object, no unfinished upload and no row.
fn refused_backup(db: &TestDb, b: &Backend, extra: &[&str]) -> String {
    let out = b.run(
        db,
        &[&["backup", "--tenant", "mindcare", "--no-progress"], extra].concat(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(b.stub().keys().is_empty(), "{:?}\n{stderr}", b.stub().keys());
    assert_eq!(open_uploads(b), 0, "{stderr}");
    assert_eq!(db.record_count("mindcare"), 0);
    stderr
}

fn limit(b: &Backend, bytes: Option<u64>, types: Option<&[&str]>) {
    b.stub().set_bucket(
        "backups",
        BucketSettings {
            file_size_limit: bytes,
            allowed_mime_types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
        },
    );
}

#[test]
fn storage_supabase_a_buckets_size_limit_is_named_on_a_standard_upload() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    limit(&b, Some(1000), None);
    let stderr = refused_backup(&db, &b, &["--compress", "none"]);
    assert_eq!(
        refusal(&stderr, "mindcare"),
        "backing up tenant mindcare: storing KEY in supabase://backups/: Supabase refused KEY as too large (Payload too large The object exceeded the maximum allowed size): bucket \"backups\" takes objects up to 1000 bytes, its own file size limit; raise it (Dashboard → Storage → the bucket → Edit bucket) or use --max-size to refuse such backups before they are dumped",
        "{stderr}"
    );
}

#[test]
fn storage_supabase_a_buckets_size_limit_is_named_on_a_resumable_upload() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // The upload goes past the bucket's 7 MB (the second 6 MiB chunk of a deferred length).
    limit(&b, Some(7_000_000), None);
    grow_mindcare(&db, 8);
    let stderr = refused_backup(&db, &b, &["--compress", "none"]);
    // The server says "Maximum size exceeded" instead when the dump was whole before the upload
    // began (its length declared up front): the rest is the tool's own.
    assert_eq!(
        refusal(&stderr, "mindcare").replace("(Maximum size exceeded)", "(upload's size exceeded)"),
        "backing up tenant mindcare: storing KEY in supabase://backups/: Supabase refused KEY as too large (upload's size exceeded): bucket \"backups\" takes objects up to 7000000 bytes (6.68 MB), its own file size limit; raise it (Dashboard → Storage → the bucket → Edit bucket) or use --max-size to refuse such backups before they are dumped",
        "{stderr}"
    );
}

#[test]
fn storage_supabase_the_projects_size_limit_is_named_when_the_bucket_has_none_or_a_higher_one() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // No limit of the bucket's own: the project's (here 1000 bytes for standard uploads).
    b.stub().state.lock().unwrap().upload_limit = 1000;
    let stderr = refused_backup(&db, &b, &["--compress", "none"]);
    assert_eq!(
        refusal(&stderr, "mindcare"),
        "backing up tenant mindcare: storing KEY in supabase://backups/: Supabase refused KEY as too large (Payload too large The object exceeded the maximum allowed size): bucket \"backups\" has no file size limit of its own, so the project's upload size limit applies; raise it (Dashboard → Storage → Settings; 50 MB on the free plan) or use --max-size to refuse such backups before they are dumped",
        "{stderr}"
    );
    // The bucket's own limit is higher than what was refused: the project's is the lower one.
    limit(&b, Some(2_000_000), None);
    let stderr = refused_backup(&db, &b, &["--compress", "none"]);
    let line = refusal(&stderr, "mindcare");
    let size = line
        .split("refused at ")
        .nth(1)
        .and_then(|r| r.split(" bytes").next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    assert!(size.parse::<u64>().is_ok_and(|s| s > 1000), "{line}");
    assert_eq!(
        line,
        format!("backing up tenant mindcare: storing KEY in supabase://backups/: Supabase refused KEY as too large (Payload too large The object exceeded the maximum allowed size): it was refused at {size} bytes, within bucket \"backups\"'s own file size limit of 2000000 bytes (1.91 MB), so the project's upload size limit is the lower one; raise it (Dashboard → Storage → Settings; 50 MB on the free plan) or use --max-size to refuse such backups before they are dumped"),
        "{stderr}"
    );
}

#[test]
fn storage_supabase_a_refused_type_is_named_with_what_the_bucket_allows() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    limit(&b, None, Some(&["application/json", "image/*"]));
    // A plain dump goes as application/sql, here in one standard upload.
    let stderr = refused_backup(&db, &b, &["--compress", "none"]);
    assert_eq!(
        refusal(&stderr, "mindcare"),
        "backing up tenant mindcare: storing KEY in supabase://backups/: bucket \"backups\" does not accept KEY's type application/sql (invalid_mime_type mime type application/sql is not supported): it allows only application/json, image/*; add application/sql to the bucket's allowed MIME types (Dashboard → Storage → the bucket → Edit bucket), or clear that restriction",
        "{stderr}"
    );
    // Larger, in a resumable upload (the type in its metadata, refused as plain text).
    grow_mindcare(&db, 8);
    let stderr = refused_backup(&db, &b, &["--compress", "none"]);
    assert_eq!(
        refusal(&stderr, "mindcare"),
        "backing up tenant mindcare: storing KEY in supabase://backups/: bucket \"backups\" does not accept KEY's type application/sql (mime type application/sql is not supported): it allows only application/json, image/*; add application/sql to the bucket's allowed MIME types (Dashboard → Storage → the bucket → Edit bucket), or clear that restriction",
        "{stderr}"
    );
}

#[test]
fn storage_supabase_a_manifest_the_bucket_refuses_takes_its_backup_away_and_names_the_type() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    // The dump (zstd: application/octet-stream) is taken, its manifest (application/json) is not.
    limit(&b, None, Some(&["application/octet-stream"]));
    let stderr = refused_backup(&db, &b, &[]);
    assert_eq!(
        refusal(&stderr, "mindcare"),
        "backing up tenant mindcare: storing the manifest KEY: bucket \"backups\" does not accept KEY's type application/json (invalid_mime_type mime type application/json is not supported): it allows only application/octet-stream; add application/json to the bucket's allowed MIME types (Dashboard → Storage → the bucket → Edit bucket), or clear that restriction",
        "{stderr}"
    );
}
