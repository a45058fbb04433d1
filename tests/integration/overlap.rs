//! The store step follows the dump (issue #17): a local directory gets the spool itself (written
//! in place, linked, never copied); S3 parts and Supabase resumable chunks go out while the dump
//! still runs, and the object appears only once the dump is known whole; a failed or stopped dump
//! leaves no object and no unfinished upload; an upload that broke while dumping is retried from
//! the spool. The dumps here are fake pg_dumps that wait at a gate the test opens, so "while the
//! dump still runs" is a fact, not a timing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::storage_truth::{enc, moto_port, raw_http, s3_keys, s3_uploads, xml_values, Backend, Kind};
use crate::support::supabase_stub::Fault;
use crate::support::*;

/// A pg_dump that writes `mb` MB of comment lines (random, so nothing compresses them), then
/// waits (up to a minute) for `gate` to exist, then ends like a complete plain dump, or fails with
/// `fail` set.
fn gated_pg_dump(dir: &Path, mb: usize, gate: &Path, fail: bool) -> PathBuf {
    let end = if fail {
        "echo 'pg_dump: error: connection lost' >&2; exit 1"
    } else {
        "echo '-- PostgreSQL database dump complete'"
    };
    fake_pg_dump(
        dir,
        &format!(
            "echo 'SET statement_timeout = 0;'\n\
             head -c {} /dev/urandom | base64 -w 76 | sed 's/^/-- /'\n\
             i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             {end}",
            mb * 1_000_000 * 3 / 4,
            gate.display()
        ),
    )
}

/// The binary in the background, pointed at `b`, with a private `$TMPDIR`.
fn spawn(db: &TestDb, b: &Backend, tmp: &Path, fake: &Path) -> Child {
    let mut c = crate::support::tool();
    c.env("HOME", db.dir.path())
        .env("TMPDIR", tmp)
        .env("DATABASE_URL", db.url());
    match b.kind {
        Kind::Local => {
            c.env("BACKUP_STORAGE", db.storage());
        }
        Kind::S3 => {
            c.env("BACKUP_STORAGE", format!("s3://{S3_BUCKET}/{}", b.prefix))
                .env("AWS_ENDPOINT_URL", &moto().url)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing-secret")
                .env("AWS_REGION", "us-east-1");
        }
        Kind::Supabase => {
            let stub = b.stub();
            c.env("SUPABASE_URL", &stub.url)
                .env("SUPABASE_KEY", &stub.key)
                .env("BACKUP_STORAGE_RETRIES", "2")
                .env("BACKUP_STORAGE", format!("supabase://{}", stub.bucket));
        }
    }
    c.current_dir(db.dir.path())
        .args(["--no-progress", "--json", "--pg-dump", fake.to_str().unwrap()])
        .args(["backup", "--tenant", "bienestar", "--compress", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Waits for `done`; false after `timeout`.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn open(gate: &Path) {
    std::fs::write(gate, b"").unwrap();
}

fn finish(child: Child) -> Output {
    let out = child.wait_with_output().unwrap();
    assert_no_secret(&out);
    out
}

fn stored(out: &Output) -> (String, u64) {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &v[0]["backup"];
    (b["key"].as_str().unwrap().to_string(), b["size"].as_u64().unwrap())
}

/// Parts uploaded so far to the one unfinished multipart upload under `prefix`.
fn s3_parts_so_far(prefix: &str) -> usize {
    let uploads = s3_uploads(prefix);
    let Some((key, id)) = uploads.first() else { return 0 };
    let (status, body) = raw_http(
        moto_port(),
        "GET",
        &format!("/{S3_BUCKET}/{}?uploadId={id}", enc(key)),
        b"",
    );
    if status != 200 {
        return 0;
    }
    xml_values(&body, "PartNumber").len()
}

#[test]
fn a_local_backup_is_its_spool_linked_into_place_never_copied() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Local);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    let fake = gated_pg_dump(db.dir.path(), 2, &gate, false);
    let child = spawn(&db, &b, tmp.path(), &fake);
    let folder = db.storage().join("bienestar");
    let spool = || -> Option<PathBuf> {
        std::fs::read_dir(&folder)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(".partial"))
    };
    let seen = wait_for(Duration::from_secs(30), || spool().is_some());
    let spool_inode = spool().map(|p| std::fs::metadata(p).unwrap().ino());
    let tmp_while_dumping = std::fs::read_dir(tmp.path()).unwrap().count();
    open(&gate);
    let out = finish(child);
    assert!(seen, "the spool is written in the tenant's storage folder");
    assert_eq!(tmp_while_dumping, 0, "nothing is spooled in $TMPDIR");
    let (key, size) = stored(&out);
    let object = std::fs::metadata(db.storage().join(&key)).unwrap();
    assert_eq!(
        Some(object.ino()),
        spool_inode,
        "the object is the spool's own inode: no copy"
    );
    assert_eq!(object.len(), size);
    assert_eq!(object.nlink(), 1, "the spool's temporary name is gone");
    assert!(db.all_files().iter().all(|f| !f.contains("/.")), "{:?}", db.all_files());
    assert!(db.record_count("bienestar") > 0);
}

#[test]
fn s3_parts_are_uploaded_while_the_dump_runs_and_the_object_appears_at_its_end() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    // ~28 MB of text: three whole 8 MiB parts before the gate.
    let fake = gated_pg_dump(db.dir.path(), 28, &gate, false);
    let before = db.record_count("bienestar");
    let child = spawn(&db, &b, tmp.path(), &fake);
    let prefix = format!("{}/", b.prefix);
    let overlapped = wait_for(Duration::from_secs(60), || s3_parts_so_far(&prefix) >= 2);
    let objects_while_dumping = s3_keys(&prefix);
    open(&gate);
    let out = finish(child);
    assert!(
        overlapped,
        "parts went out before the dump ended: {}",
        text(&out.stderr)
    );
    assert_eq!(
        objects_while_dumping,
        Vec::<String>::new(),
        "no object before the dump is whole"
    );
    let (key, _) = stored(&out);
    assert!(s3_keys(&prefix).contains(&key), "{key}");
    assert!(s3_uploads(&prefix).is_empty(), "the upload was completed");
    assert_eq!(db.record_count("bienestar"), before + 1);
    let out = b
        .cmd(&db)
        .args(["download", "--tenant", "bienestar", "--latest", "-o", "got.sql"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = std::fs::read_to_string(db.dir.path().join("got.sql")).unwrap();
    assert!(
        got.ends_with("-- PostgreSQL database dump complete\n"),
        "the whole dump was stored"
    );
}

#[test]
fn a_failed_dump_aborts_the_s3_upload_that_followed_it() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    let fake = gated_pg_dump(db.dir.path(), 20, &gate, true);
    let before = db.record_count("bienestar");
    let child = spawn(&db, &b, tmp.path(), &fake);
    let prefix = format!("{}/", b.prefix);
    let overlapped = wait_for(Duration::from_secs(60), || s3_parts_so_far(&prefix) >= 1);
    open(&gate);
    let out = finish(child);
    assert!(overlapped);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("connection lost"), "{}", text(&out.stderr));
    assert!(s3_uploads(&prefix).is_empty(), "the multipart upload was aborted");
    assert!(s3_keys(&prefix).is_empty(), "no object");
    assert_eq!(db.record_count("bienestar"), before);
}

#[test]
fn a_stop_aborts_the_s3_upload_that_follows_the_dump() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    let fake = gated_pg_dump(db.dir.path(), 20, &gate, false);
    let child = spawn(&db, &b, tmp.path(), &fake);
    let prefix = format!("{}/", b.prefix);
    let overlapped = wait_for(Duration::from_secs(60), || s3_parts_so_far(&prefix) >= 1);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = finish(child);
    open(&gate);
    assert!(overlapped);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(s3_uploads(&prefix).is_empty(), "the multipart upload was aborted");
    assert!(s3_keys(&prefix).is_empty(), "no object");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no spool left");
}

#[test]
fn supabase_chunks_go_out_while_the_dump_runs_and_the_object_appears_at_its_end() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    let fake = gated_pg_dump(db.dir.path(), 20, &gate, false);
    let child = spawn(&db, &b, tmp.path(), &fake);
    let stub = b.stub();
    let patches = || {
        stub.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(m, _, _)| m == "PATCH")
            .count()
    };
    let overlapped = wait_for(Duration::from_secs(60), || patches() >= 2);
    let objects_while_dumping = stub.keys();
    open(&gate);
    let out = finish(child);
    assert!(
        overlapped,
        "chunks went out before the dump ended: {}",
        text(&out.stderr)
    );
    assert!(objects_while_dumping.is_empty(), "{objects_while_dumping:?}");
    let (key, size) = stored(&out);
    let st = stub.state.lock().unwrap();
    let object = st.objects.get(&key).unwrap();
    assert_eq!(object.len() as u64, size);
    assert!(object.ends_with(b"-- PostgreSQL database dump complete\n"));
    assert!(st.uploads.values().all(|u| u.length == Some(u.data.len() as u64)));
}

#[test]
fn a_supabase_upload_that_breaks_while_dumping_is_retried_from_the_spool() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    let fake = gated_pg_dump(db.dir.path(), 14, &gate, false);
    // A chunk fails for longer than its own retries last (three tries): the upload gives up
    // midway, while the dump still runs.
    b.stub()
        .inject(Some("PATCH"), "/upload/resumable/", Fault::InternalError, Some(3));
    let before = db.record_count("bienestar");
    let child = spawn(&db, &b, tmp.path(), &fake);
    let stub = b.stub();
    let gave_up = wait_for(Duration::from_secs(60), || {
        stub.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(m, _, _)| m == "DELETE")
            .count()
            >= 1
    });
    open(&gate);
    let out = finish(child);
    let stderr = text(&out.stderr);
    assert!(gave_up, "{stderr}");
    assert!(stderr.contains("storing it again from the finished spool"), "{stderr}");
    let (key, size) = stored(&out);
    assert_eq!(
        stub.state.lock().unwrap().objects.get(&key).map(|o| o.len() as u64),
        Some(size)
    );
    assert_eq!(db.record_count("bienestar"), before + 1);
}

#[test]
fn a_supabase_refusal_stops_the_dump_at_once_and_is_not_sent_again() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Supabase);
    let tmp = tempfile::tempdir().unwrap();
    let gate = db.dir.path().join("gate");
    let fake = gated_pg_dump(db.dir.path(), 20, &gate, false);
    // The bucket takes 7 MB at most: the second 6 MiB chunk is answered 413, a limit no retry
    // lifts, while the dump is far from done (it waits at the gate, which stays shut).
    b.stub().set_bucket(
        "backups",
        crate::support::supabase_stub::BucketSettings {
            file_size_limit: Some(7_000_000),
            allowed_mime_types: None,
        },
    );
    let before = db.record_count("bienestar");
    let mut child = spawn(&db, &b, tmp.path(), &fake);
    let ended = wait_for(Duration::from_secs(30), || child.try_wait().unwrap().is_some());
    open(&gate);
    let out = finish(child);
    let stderr = text(&out.stderr);
    assert!(ended, "the dump was stopped, not run to its end: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "as too large (upload's size exceeded): bucket \"backups\" takes objects up to 7000000 bytes (6.68 MB), its own file size limit; raise it (Dashboard → Storage → the bucket → Edit bucket) or use --max-size to refuse such backups before they are dumped"
        ),
        "{stderr}"
    );
    let st = b.stub().state.lock().unwrap();
    let count = |method: &str| st.log.iter().filter(|(m, _, _)| m == method).count();
    assert_eq!(count("POST"), 1, "the upload is not started again: {:?}", st.log);
    assert_eq!(count("PATCH"), 2, "the refused chunk is not sent again: {:?}", st.log);
    assert!(st.objects.is_empty());
    drop(st);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the spool is removed: {left:?}");
    assert_eq!(db.record_count("bienestar"), before);
}
