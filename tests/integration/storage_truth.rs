//! Storage truth on every backend (issue #13): absence is proven before anything is deleted or
//! called missing, a tenant's rows only reach that tenant's folder, unfinished uploads are found
//! and removed, and the S3 multipart upload a failure leaves behind is aborted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::support::supabase_stub::SupabaseStub;
use crate::support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Local,
    S3,
    Supabase,
}

/// One backend for one test: how to point the binary at it, and how to look inside it without
/// the binary.
pub struct Backend {
    pub kind: Kind,
    /// The S3 prefix (one per test), or the Supabase prefix ("" for none).
    pub prefix: String,
    pub stub: Option<SupabaseStub>,
}

pub const JWT_SERVICE: &str = "eyJhbGciOiJIUzI1NiJ9.service.role";

impl Backend {
    pub fn new(kind: Kind) -> Backend {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = match kind {
            Kind::S3 => format!("truth-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)),
            _ => String::new(),
        };
        let stub = (kind == Kind::Supabase).then(|| SupabaseStub::start(JWT_SERVICE, "backups", 50 * 1000 * 1000));
        Backend { kind, prefix, stub }
    }

    pub fn stub(&self) -> &SupabaseStub {
        self.stub.as_ref().expect("a Supabase backend")
    }

    /// The binary for `db`, pointed at this backend.
    pub fn cmd(&self, db: &TestDb) -> assert_cmd::Command {
        let mut c = db.cmd();
        match self.kind {
            Kind::Local => {}
            Kind::S3 => {
                c.env("BACKUP_STORAGE", format!("s3://{S3_BUCKET}/{}", self.prefix))
                    .env("AWS_ENDPOINT_URL", &moto().url)
                    .env("AWS_ACCESS_KEY_ID", "testing")
                    .env("AWS_SECRET_ACCESS_KEY", "testing-secret")
                    .env("AWS_REGION", "us-east-1");
            }
            Kind::Supabase => {
                let stub = self.stub();
                c.env("SUPABASE_URL", &stub.url)
                    .env("SUPABASE_KEY", &stub.key)
                    .env("BACKUP_STORAGE_RETRIES", "2");
                if self.prefix.is_empty() {
                    c.env("BACKUP_STORAGE", format!("supabase://{}", stub.bucket));
                } else {
                    c.env("BACKUP_STORAGE", format!("supabase://{}/{}", stub.bucket, self.prefix));
                }
            }
        }
        c
    }

    /// The binary pointed at a place of the same kind that cannot be seen: a directory that does
    /// not exist, a bucket that does not exist.
    pub fn unseen_cmd(&self, db: &TestDb) -> assert_cmd::Command {
        let mut c = self.cmd(db);
        match self.kind {
            Kind::Local => {
                c.env("BACKUP_STORAGE", db.dir.path().join("not-mounted"));
            }
            Kind::S3 => {
                c.env("BACKUP_STORAGE", "s3://no-such-bucket-anywhere/x");
            }
            Kind::Supabase => {
                c.env("BACKUP_STORAGE", "supabase://nobucket");
            }
        }
        c
    }

    /// Every key in the bucket (relative to the backend's prefix), manifests included, sorted.
    pub fn keys(&self, db: &TestDb) -> Vec<String> {
        match self.kind {
            Kind::Local => db.objects(),
            Kind::S3 => s3_keys(&format!("{}/", self.prefix)),
            Kind::Supabase => {
                let p = if self.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", self.prefix)
                };
                self.stub()
                    .keys()
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&p).map(String::from))
                    .collect()
            }
        }
    }

    pub fn has(&self, db: &TestDb, key: &str) -> bool {
        self.keys(db).iter().any(|k| k == key)
    }

    /// Runs the binary; returns the output (no assertion).
    pub fn run(&self, db: &TestDb, args: &[&str]) -> std::process::Output {
        let out = self.cmd(db).args(args).output().unwrap();
        assert_no_secret(&out);
        out
    }

    pub fn run_ok(&self, db: &TestDb, args: &[&str]) -> std::process::Output {
        let out = self.run(db, args);
        assert!(
            out.status.success(),
            "{args:?} on {:?}:\n{}\n{}",
            self.kind,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// `backup --json` of one tenant; the stored key.
    pub fn backup(&self, db: &TestDb, tenant: &str, extra: &[&str]) -> String {
        let mut args = vec!["--json", "--no-progress", "backup", "--tenant", tenant];
        args.extend_from_slice(extra);
        let out = self.run_ok(db, &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["backup"]["key"].as_str().unwrap().to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw S3 requests to moto (it does not check signatures), for looking inside the bucket.

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
pub fn raw_http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

pub fn moto_port() -> u16 {
    moto().url.rsplit(':').next().unwrap().parse().unwrap()
}

pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.replace("&amp;", "&")))
        .collect()
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Keys under `prefix` in the moto bucket, with `prefix` taken off.
pub fn s3_keys(prefix: &str) -> Vec<String> {
    let (status, body) = raw_http(
        moto_port(),
        "GET",
        &format!("/{S3_BUCKET}?list-type=2&prefix={}", enc(prefix)),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let mut keys: Vec<String> = xml_values(&body, "Key")
        .into_iter()
        .filter_map(|k| k.strip_prefix(prefix).map(String::from))
        .collect();
    keys.sort();
    keys
}

/// Unfinished multipart uploads under `prefix`: (key, upload id).
pub fn s3_uploads(prefix: &str) -> Vec<(String, String)> {
    let (status, body) = raw_http(
        moto_port(),
        "GET",
        &format!("/{S3_BUCKET}?uploads&prefix={}", enc(prefix)),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    xml_values(&body, "Key")
        .into_iter()
        .zip(xml_values(&body, "UploadId"))
        .collect()
}

/// Starts a multipart upload (and stores one part) without finishing it, as a crash would leave.
pub fn s3_start_upload(key: &str) -> String {
    let (status, body) = raw_http(moto_port(), "POST", &format!("/{S3_BUCKET}/{}?uploads", enc(key)), b"");
    assert_eq!(status, 200, "{body}");
    let id = xml_values(&body, "UploadId").remove(0);
    let (status, body) = raw_http(
        moto_port(),
        "PUT",
        &format!("/{S3_BUCKET}/{}?partNumber=1&uploadId={id}", enc(key)),
        &vec![b'x'; 1024],
    );
    assert_eq!(status, 200, "{body}");
    id
}

// ---------------------------------------------------------------------------------------------
// A forwarding proxy in front of moto that fails chosen requests (a part upload that breaks).

pub struct FailingProxy {
    pub url: String,
    pub failed: Arc<Mutex<Vec<String>>>,
    /// Every request line it got.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl FailingProxy {
    /// Forwards every request to moto, except that requests whose request line contains `fail`
    /// get a 400 with an S3 error body (not retried by any client).
    pub fn start(fail: &'static str) -> FailingProxy {
        Self::start_with(fail, 400, u32::MAX)
    }

    /// [`start`](Self::start), answering the first `times` matching requests with `status` (503:
    /// a failure every client retries) and forwarding the rest.
    pub fn start_with(fail: &'static str, status: u16, times: u32) -> FailingProxy {
        let left = Arc::new(AtomicU32::new(times));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let failed = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (f, s) = (failed.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, s, left) = (f.clone(), s.clone(), left.clone());
                std::thread::spawn(move || proxy_one(stream, fail, status, &left, &f, &s));
            }
        });
        FailingProxy { url, failed, seen }
    }
}

fn proxy_one(
    stream: TcpStream,
    fail: &str,
    status: u16,
    left: &AtomicU32,
    failed: &Mutex<Vec<String>>,
    seen: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        seen.lock().unwrap().push(line.trim().to_string());
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("connection") {
                    continue;
                }
            }
            headers.push(h);
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut out = stream.try_clone().unwrap();
        let fails = line.contains(fail)
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fails {
            failed.lock().unwrap().push(line.trim().to_string());
            let msg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code><Message>injected failure</Message></Error>";
            let _ = write!(
                out,
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{msg}",
                msg.len()
            );
            continue;
        }
        let mut up = TcpStream::connect(("127.0.0.1", moto_port())).unwrap();
        let mut req = line.clone().into_bytes();
        for h in &headers {
            req.extend_from_slice(h.as_bytes());
        }
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        req.extend_from_slice(&body);
        if up.write_all(&req).is_err() {
            return;
        }
        let mut answer = Vec::new();
        let _ = up.read_to_end(&mut answer);
        // moto closes after answering; keep the client's connection open for its next request
        // only when the answer has a length.
        let _ = out.write_all(&answer);
        let head = String::from_utf8_lossy(&answer[..answer.len().min(4096)]).to_ascii_lowercase();
        if !head.contains("content-length") {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 1: absence must be proven.

fn ids(db: &TestDb, schema: &str) -> String {
    db.sql(&format!(
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {}.backups_backuprecord",
        quote(schema)
    ))
}

fn age_all(db: &TestDb, schema: &str, days: u32) {
    db.sql(&format!(
        "UPDATE {}.backups_backuprecord SET created_at = now() - interval '{days} days'",
        quote(schema)
    ));
}

/// Runs every command that could call a backup "missing" against `cmd`, which cannot see the
/// bucket: none may delete a row, none may say MISSING, none may exit 0.
fn assert_unseen_keeps_everything(db: &TestDb, b: &Backend, label: &str, cmd: &dyn Fn() -> assert_cmd::Command) {
    let before = (ids(db, "mindcare"), ids(db, "bienestar"), b.keys(db));
    for args in [
        vec!["cleanup", "--days", "1", "--keep-last", "0", "--include-manual"],
        vec!["cleanup", "--orphans", "--fix", "--include-manual"],
        vec!["cleanup", "--orphans", "--fix", "--tenant", "mindcare"],
        vec!["list", "--check"],
    ] {
        let out = cmd().args(&args).output().unwrap();
        assert_no_secret(&out);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{label} {args:?} must fail:\n{stdout}\n{stderr}");
        assert!(
            !stdout.contains("MISSING") && !stdout.contains("row deleted"),
            "{label} {args:?}:\n{stdout}"
        );
        assert!(
            stderr.contains("cannot see") || stderr.contains("service_role") || stderr.contains("does not exist"),
            "{label} {args:?} says why:\n{stderr}"
        );
        assert_eq!(
            (ids(db, "mindcare"), ids(db, "bienestar"), b.keys(db)),
            before,
            "{label} {args:?} changed something"
        );
    }
}

fn unseen_storage_keeps_every_row(kind: Kind) {
    let db = TestDb::new();
    let b = Backend::new(kind);
    b.backup(&db, "mindcare", &["--type", "automatic"]);
    b.backup(&db, "mindcare", &["--type", "automatic"]);
    b.backup(&db, "bienestar", &[]);
    age_all(&db, "mindcare", 40);
    assert_unseen_keeps_everything(&db, &b, "unseen storage", &|| b.unseen_cmd(&db));
    if kind == Kind::Supabase {
        let stub = b.stub();
        // The anon key: row-level security hides every object and every bucket.
        assert_unseen_keeps_everything(&db, &b, "anon key", &|| {
            let mut c = b.cmd(&db);
            c.env("SUPABASE_KEY", &stub.anon_key);
            c
        });
        // A SUPABASE_URL whose routes do not exist (fastify's own 404, not a storage error).
        assert_unseen_keeps_everything(&db, &b, "wrong base path", &|| {
            let mut c = b.cmd(&db);
            c.env("SUPABASE_URL", format!("{}/api", stub.url));
            c
        });
        // A key that reads objects but whose deletes remove nothing: the row stays.
        stub.state.lock().unwrap().faults.silent_deletes = true;
        let out = b.run(&db, &["cleanup", "--days", "1", "--keep-last", "0"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("still there") || text(&out.stderr).contains("still there"),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(ids(&db, "mindcare"), "1,2", "rows stay while their objects do");
        stub.state.lock().unwrap().faults.silent_deletes = false;
    }
    // The same commands against the real bucket work.
    b.run_ok(&db, &["list", "--check"]);
    b.run_ok(&db, &["cleanup", "--days", "1", "--keep-last", "0"]);
    assert_eq!(ids(&db, "mindcare"), "");
}

#[test]
fn storage_unseen_keeps_every_row_on_a_local_directory() {
    unseen_storage_keeps_every_row(Kind::Local);
}

#[test]
fn storage_unseen_keeps_every_row_on_s3() {
    unseen_storage_keeps_every_row(Kind::S3);
}

#[test]
fn storage_unseen_keeps_every_row_on_supabase() {
    unseen_storage_keeps_every_row(Kind::Supabase);
}

// ---------------------------------------------------------------------------------------------
// Item 2: a tenant's rows act only on that tenant's objects.

fn rows_never_reach_another_tenant(kind: Kind) {
    let db = TestDb::new();
    let b = Backend::new(kind);
    let theirs = b.backup(&db, "mindcare", &[]);
    let manifest = format!("{theirs}.manifest.json");
    b.backup(&db, "bienestar", &["--type", "automatic"]);
    // bienestar's history gains a row pointing into mindcare's folder, old and automatic.
    db.sql(&format!(
        "INSERT INTO bienestar.backups_backuprecord (file_name, file_path, file_size, backup_type, created_at) \
         VALUES ('x', '{theirs}', 10, 'automatic', now() - interval '90 days')"
    ));
    let foreign_id = db.sql("SELECT max(id) FROM bienestar.backups_backuprecord");
    let keys_before = b.keys(&db);

    let out = b.run(
        &db,
        &["cleanup", "--days", "30", "--keep-last", "0", "--tenant", "bienestar"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a foreign row is reported: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("not under bienestar/"), "{stdout}");
    assert!(
        b.has(&db, &theirs) && b.has(&db, &manifest),
        "mindcare's backup is untouched"
    );
    assert!(
        ids(&db, "bienestar").split(',').any(|i| i == foreign_id),
        "the foreign row stays"
    );

    for fix in [
        vec!["cleanup", "--orphans", "--fix", "--tenant", "bienestar"],
        vec!["cleanup", "--orphans", "--fix", "--include-manual"],
    ] {
        let out = b.run(&db, &fix);
        assert_eq!(out.status.code(), Some(1), "{fix:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("not under bienestar/"),
            "{}",
            text(&out.stdout)
        );
        assert!(
            b.has(&db, &theirs) && b.has(&db, &manifest),
            "{fix:?} left mindcare alone"
        );
        assert!(ids(&db, "bienestar").split(',').any(|i| i == foreign_id));
    }
    let kept: Vec<String> = keys_before
        .iter()
        .filter(|k| k.starts_with("mindcare/"))
        .cloned()
        .collect();
    assert!(kept.iter().all(|k| b.has(&db, k)));

    // verify of mindcare still checks its checksum: the manifest is there.
    let out = b.run_ok(&db, &["verify", "--tenant", "mindcare"]);
    assert!(text(&out.stdout).contains("checksum ok"), "{}", text(&out.stdout));
    // list --check says so; download, verify and restore of the foreign row refuse.
    let out = b.run(&db, &["list", "--check", "--tenant", "bienestar"]);
    assert!(
        text(&out.stdout).contains("not under bienestar/"),
        "{}",
        text(&out.stdout)
    );
    for args in [
        vec!["download", "--tenant", "bienestar", "--id", &foreign_id, "-o", "-"],
        vec!["verify", "--tenant", "bienestar", "--id", &foreign_id],
        vec!["restore", "--tenant", "bienestar", "--id", &foreign_id, "--yes"],
    ] {
        let out = b.run(&db, &args);
        assert_fails(&out, 2, "not under bienestar/");
    }
}

#[test]
fn storage_rows_never_reach_another_tenant_on_a_local_directory() {
    rows_never_reach_another_tenant(Kind::Local);
}

#[test]
fn storage_rows_never_reach_another_tenant_on_s3() {
    rows_never_reach_another_tenant(Kind::S3);
}

#[test]
fn storage_rows_never_reach_another_tenant_on_supabase() {
    rows_never_reach_another_tenant(Kind::Supabase);
}

// ---------------------------------------------------------------------------------------------
// Item 5: unfinished uploads.

#[test]
fn storage_cleanup_orphans_finds_and_removes_stale_partial_files_on_a_local_directory() {
    let db = TestDb::new();
    let b = Backend::new(Kind::Local);
    b.backup(&db, "mindcare", &[]);
    let dir = db.storage().join("mindcare");
    let (old, young) = (
        ".auto-sql-mindcare-2026-01-01-000000.sql.zst.a1b2c3.partial",
        ".auto-sql-mindcare-2026-01-02-000000.sql.zst.d4e5f6.partial",
    );
    for name in [old, young] {
        std::fs::write(dir.join(name), b"half a backup").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(dir.join(old))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 86400))
        .unwrap();
    let out = b.run_ok(&db, &["cleanup", "--orphans", "--tenant", "mindcare"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("unfinished upload mindcare/{old}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("unfinished upload mindcare/{young}")),
        "{stdout}"
    );
    b.run_ok(&db, &["cleanup", "--orphans", "--fix", "--tenant", "mindcare"]);
    assert!(!dir.join(old).exists(), "the stale one is removed");
    assert!(dir.join(young).exists(), "a young one may be an upload in flight");
    b.run_ok(
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
        !dir.join(young).exists(),
        "--grace-hours 0: every unfinished upload goes"
    );
}

#[test]
fn storage_cleanup_orphans_finds_and_aborts_unfinished_multipart_uploads_on_s3() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    b.backup(&db, "mindcare", &[]);
    let key = format!("{}/mindcare/auto-sql-mindcare-2026-01-01-000000.sql.zst", b.prefix);
    s3_start_upload(&key);
    let other = format!(
        "{}/clinica_demo/auto-sql-clinica_demo-2026-01-01-000000.sql.zst",
        b.prefix
    );
    s3_start_upload(&other);
    let out = b.run_ok(&db, &["cleanup", "--orphans", "--tenant", "mindcare"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("unfinished upload mindcare/auto-sql-mindcare-2026-01-01-000000.sql.zst"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("clinica_demo"),
        "only the tenant's own folder: {stdout}"
    );
    assert_eq!(
        s3_uploads(&format!("{}/mindcare/", b.prefix)).len(),
        1,
        "a report touches nothing"
    );
    // moto says every upload was initiated in 2010, so the grace period is behind it (the grace
    // itself is tested on a local directory, whose file times are real).
    let out = b.run_ok(&db, &["cleanup", "--orphans", "--fix", "--tenant", "mindcare"]);
    assert!(text(&out.stdout).contains("aborted"), "{}", text(&out.stdout));
    assert!(s3_uploads(&format!("{}/mindcare/", b.prefix)).is_empty());
    assert_eq!(
        s3_uploads(&format!("{}/clinica_demo/", b.prefix)).len(),
        1,
        "another tenant's upload stays"
    );
}

/// mindcare made big enough for several parts (incompressible text, no compression).
pub fn grow_mindcare(db: &TestDb, mb: usize) {
    db.sql(&format!(
        "CREATE TABLE mindcare.bulk (id int PRIMARY KEY, body text); \
         INSERT INTO mindcare.bulk SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, {}) g",
        mb * 1024 * 1024 / 100
    ));
}

#[test]
fn storage_a_failed_multipart_upload_is_aborted_on_s3() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    grow_mindcare(&db, 18);
    let proxy = FailingProxy::start("partNumber=2&");
    let out = b
        .cmd(&db)
        .env("AWS_ENDPOINT_URL", &proxy.url)
        .args(["backup", "--tenant", "mindcare", "--compress", "none", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!proxy.failed.lock().unwrap().is_empty(), "the second part failed");
    assert_eq!(db.record_count("mindcare"), 0);
    assert!(
        s3_uploads(&format!("{}/", b.prefix)).is_empty(),
        "the multipart upload was aborted, its parts freed"
    );
}

#[test]
fn storage_s3_without_credentials_names_the_variables() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    let out = b
        .cmd(&db)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("BACKUP_STORAGE_RETRIES", "0")
        .args(["list", "--check", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("AWS_ACCESS_KEY_ID") && stderr.contains("AWS_SECRET_ACCESS_KEY"),
        "{stderr}"
    );
    assert!(!stderr.contains("169.254"), "{stderr}");
}

#[test]
fn storage_s3_the_unfinished_upload_listing_is_retried() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    b.backup(&db, "mindcare", &[]);
    let key = format!("{}/mindcare/auto-sql-mindcare-2026-01-01-000000.sql.zst", b.prefix);
    s3_start_upload(&key);
    // The ListMultipartUploads request meets two 503s (a service that is briefly away).
    let proxy = FailingProxy::start_with("?uploads", 503, 2);
    let out = b
        .cmd(&db)
        .env("AWS_ENDPOINT_URL", &proxy.url)
        .args(["cleanup", "--orphans", "--tenant", "mindcare"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("unfinished upload mindcare/auto-sql-mindcare-2026-01-01-000000.sql.zst"),
        "{stdout}"
    );
    assert_eq!(proxy.failed.lock().unwrap().len(), 2);
    assert_eq!(
        stderr.matches("listing unfinished uploads").count(),
        2,
        "each retry logs one line: {stderr}"
    );
}

#[test]
fn storage_s3_cleanup_orphans_fix_deletes_in_bulk() {
    let db = TestDb::new();
    let b = Backend::new(Kind::S3);
    b.backup(&db, "mindcare", &[]);
    for day in 1..=6 {
        let key = format!("{}/mindcare/auto-sql-mindcare-2026-01-0{day}-000000.sql.zst", b.prefix);
        let (status, body) = raw_http(moto_port(), "PUT", &format!("/{S3_BUCKET}/{}", enc(&key)), b"orphan");
        assert_eq!(status, 200, "{body}");
    }
    let proxy = FailingProxy::start_with("never matches", 400, 0);
    let out = b
        .cmd(&db)
        .env("AWS_ENDPOINT_URL", &proxy.url)
        .args([
            "cleanup",
            "--orphans",
            "--fix",
            "--grace-hours",
            "0",
            "--include-manual",
        ])
        .args(["--tenant", "mindcare"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("deleted 6 orphans of 6 found (6 objects and 0 rows)"),
        "{stdout}"
    );
    let seen = proxy.seen.lock().unwrap().clone();
    let per_key: Vec<_> = seen
        .iter()
        .filter(|l| l.starts_with("DELETE ") || l.starts_with("HEAD "))
        .collect();
    assert!(per_key.is_empty(), "no HEAD or DELETE per object: {seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|l| l.starts_with("POST ") && l.contains("?delete"))
            .count(),
        1,
        "one bulk DeleteObjects: {seen:?}"
    );
    assert_eq!(
        s3_keys(&format!("{}/mindcare/", b.prefix)).len(),
        2,
        "the backup and its manifest stay"
    );
}
