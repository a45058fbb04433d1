//! Shared helpers: one throwaway cluster per test run, a fresh database per test (a copy of a
//! template loaded once from the fixture), the binary driven with assert_cmd.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use devcluster::DevCluster;

pub const TEMPLATE: &str = "fixture_template";

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/django_tenants.sql")
}

pub fn cluster() -> &'static DevCluster {
    static CLUSTER: OnceLock<DevCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = DevCluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
        c.create_database(TEMPLATE, None).unwrap();
        c.load_file(TEMPLATE, &fixture()).unwrap();
        c
    })
}

/// A fresh copy of the fixture database, with its own bucket directory and working directory.
pub struct TestDb {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        cluster().create_database(&name, Some(TEMPLATE)).unwrap();
        TestDb::with_storage(name)
    }

    /// An empty database (no fixture), for restoring dumps into.
    pub fn empty() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("e{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        cluster().create_database(&name, None).unwrap();
        TestDb::with_storage(name)
    }

    /// The tool never creates its storage directory: the test makes it, as an operator would.
    fn with_storage(name: String) -> TestDb {
        let db = TestDb {
            name,
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(db.storage()).unwrap();
        db
    }

    pub fn url(&self) -> String {
        cluster().url(&self.name)
    }

    pub fn sql(&self, sql: &str) -> String {
        cluster().sql(&self.name, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        cluster().sql(&self.name, sql).map_err(|e| e.to_string())
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// The binary with a clean environment: this database, this bucket, run from the test's directory.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = tool_cmd();
        cmd.env("HOME", self.dir.path())
            .env("DATABASE_URL", self.url())
            .env("BACKUP_STORAGE", self.storage())
            .current_dir(self.dir.path());
        cmd
    }

    /// The binary run to its end with `args`, as [`TestDb::cmd`] sets it up; a command that must
    /// succeed is checked with [`TestDb::ok`].
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().unwrap()
    }

    /// [`TestDb::run`], which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Whether one of the tool's sessions waits for a lock now.
    pub fn tool_waits_for_a_lock(&self) -> bool {
        self.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name LIKE 'tenant-backup%' AND wait_event_type = 'Lock'",
        ) != "0"
    }

    /// Waits, up to a minute, until one of the tool's sessions waits for a lock.
    pub fn until_the_tool_waits_for_a_lock(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.tool_waits_for_a_lock() {
            assert!(std::time::Instant::now() < deadline, "the tool never waited for a lock");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The binary started in the background, with the same environment as [`TestDb::cmd`].
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        tool()
            .env("HOME", self.dir.path())
            .env("DATABASE_URL", self.url())
            .env("BACKUP_STORAGE", self.storage())
            .current_dir(self.dir.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Every schema but the system ones, comma-separated, sorted.
    pub fn schemas(&self) -> String {
        self.sql("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema'")
    }

    /// Objects (not hidden temporaries) under the bucket directory, as relative keys, sorted.
    pub fn objects(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.storage(), &self.storage(), &mut out);
        out.sort();
        out
    }

    /// Everything under the bucket directory, hidden files included.
    pub fn all_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk_all(&self.storage(), &self.storage(), &mut out);
        out
    }

    /// md5 of every table of `schema`, rows in a stable order: equal fingerprints, equal data.
    pub fn fingerprint(&self, schema: &str) -> Vec<(String, String)> {
        fingerprint_via(|q| self.sql(q), schema)
    }

    /// The fingerprint of the tenant's data: every table but its backup history.
    pub fn data(&self, schema: &str) -> Vec<(String, String)> {
        without_history(self.fingerprint(schema))
    }

    /// Every index, constraint (with whether it is validated), index comment and cluster mark of
    /// `schema`, one per line, sorted: equal structures, equal strings.
    pub fn structure(&self, schema: &str) -> String {
        let s = schema.replace('\'', "''");
        self.sql(&format!(
            "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ( \
               SELECT 'index ' || indexdef AS x FROM pg_indexes WHERE schemaname = '{s}' \
               UNION ALL SELECT format('constraint %s %s %s valid=%s', conrelid::regclass, conname, pg_get_constraintdef(oid), convalidated) \
                 FROM pg_constraint WHERE connamespace = '{s}'::regnamespace \
               UNION ALL SELECT format('comment %s %s', c.relname, d.description) FROM pg_description d \
                 JOIN pg_class c ON c.oid = d.objoid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{s}' \
               UNION ALL SELECT format('clustered %s', indexrelid::regclass) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
                 WHERE i.indisclustered AND c.relnamespace = '{s}'::regnamespace) q"
        ))
    }

    /// Runs `backup --json <args>`, which must succeed without leaking the password, and returns
    /// the backup's JSON (id, key, size, …).
    pub fn backup(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .cmd()
            .args(["--json", "--no-progress", "backup"])
            .args(args)
            .output()
            .unwrap();
        assert_no_secret(&out);
        assert!(out.status.success(), "backup {args:?} failed: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["backup"].clone()
    }

    pub fn record_count(&self, schema: &str) -> i64 {
        self.sql(&format!("SELECT count(*) FROM {}.backups_backuprecord", quote(schema)))
            .parse()
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = cluster().sql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote(&self.name)),
        );
    }
}

/// The retry pace of every tool process the tests start: the same attempts as in production,
/// milliseconds apart instead of seconds (`BACKUP_RETRY_DELAY_MS`, read by `retry`). The tests that
/// wait out real retries (a server that is not there, a stub answering 503) then take
/// milliseconds, and still see every attempt.
pub const FAST_RETRIES: (&str, &str) = ("BACKUP_RETRY_DELAY_MS", "5");

/// The binary with a clean environment: only PATH and [`FAST_RETRIES`]. Every test starts the
/// tool through this (or [`tool_cmd`]), so none waits out the production backoff.
pub fn tool() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-backup"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(FAST_RETRIES.0, FAST_RETRIES.1);
    c
}

/// [`tool`] as an `assert_cmd` command.
pub fn tool_cmd() -> assert_cmd::Command {
    assert_cmd::Command::from_std(tool())
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn walk_all(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            walk_all(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Decompresses a stored object by its extension.
pub fn decompress(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let name = path.to_string_lossy();
    if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(raw.as_slice())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
    } else if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out = raw;
    }
    out
}

/// Fails the test if the cluster's password appears anywhere in the command's output.
pub fn assert_no_secret(output: &std::process::Output) {
    let password = &cluster().password;
    for (name, stream) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(stream);
        assert!(
            !text.contains(password.as_str()),
            "the password leaked on {name}:\n{text}"
        );
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that a command exited with `code` and said `needle` on stderr (shown when either fails).
pub fn assert_fails(out: &std::process::Output, code: i32, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

/// A json dump whose first `"patient_id"` value points at patient 999999, which does not exist.
pub fn orphan_first_patient_ref(dump: &str) -> String {
    let key = "\"patient_id\":";
    let at = dump.find(key).expect("a patient_id in the dump") + key.len();
    let end = at + dump[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    format!("{}999999{}", &dump[..at], &dump[end..])
}

/// A fake pg_dump: answers `--version` like PostgreSQL 15, otherwise runs `body` (sh).
pub fn fake_pg_dump(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake_pg_dump");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 99.0'; exit 0; fi\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[path = "http_recorder.rs"]
pub mod http_recorder;
#[path = "supabase_stub.rs"]
pub mod supabase_stub;

/// A moto S3 server for this test run, started on a free port and stopped when the tests end.
pub struct Moto {
    pub url: String,
    _watcher: std::sync::Mutex<std::process::Child>,
}

pub const S3_BUCKET: &str = "tenant-backups";

/// moto's server: `MOTO_SERVER`, else `.venv/bin/moto_server`, else `moto_server` on `PATH`, else
/// provisioned into `.venv` (see [`provision_moto`]).
fn find_moto() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv/bin/moto_server");
    if venv.is_file() {
        // If another test process is still installing moto there, wait for it to finish.
        if root.join(".venv.lock").exists() {
            drop(venv_lock(root, libc::LOCK_SH));
        }
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| provision_moto(root))
}

/// Creates `<root>/.venv` with `python3 -m venv` and installs `moto[server]` into it, once: an
/// exclusive `flock` on `<root>/.venv.lock` makes concurrent test processes wait for the first one,
/// which they then reuse (as do later runs, and `.ci/run`, which makes the same `.venv`). A venv
/// cannot be moved after it is made, so it is built in place under the lock; one left without
/// moto (an interrupted install, or a venv made for something else) gets moto added, and one
/// without a working Python is made again.
fn provision_moto(root: &Path) -> PathBuf {
    use std::process::Command;

    let venv = root.join(".venv");
    let bin = venv.join("bin/moto_server");
    let _lock = venv_lock(root, libc::LOCK_EX);
    if bin.is_file() {
        return bin; // another test process made it while this one waited
    }
    let say = |msg: &str| {
        use std::io::Write;
        // Straight to stderr, past the test harness's capture: this takes a minute or so.
        let _ = writeln!(std::io::stderr(), "tests: {msg}");
    };
    let advice = "install Python 3 with venv support (Debian/Ubuntu: `apt-get install python3-venv`), \
                  or point MOTO_SERVER at a moto_server binary";
    let python = venv.join("bin/python");
    let python_works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !python_works(&python) {
        if !python_works(Path::new("python3")) {
            panic!("moto_server is not installed and python3 was not found to install it: {advice}");
        }
        if venv.exists() {
            std::fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("removing the broken {}: {e}", venv.display()));
        }
        say(&format!(
            "creating {} for moto's S3 server (once; later runs reuse it)",
            venv.display()
        ));
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .unwrap();
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&venv);
            panic!(
                "`python3 -m venv {}` failed: {advice}\n{}",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    say("installing moto[server] into .venv with pip (once; later runs reuse it)");
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "moto[server]",
        ])
        .output()
        .unwrap();
    if !out.status.success() || !bin.is_file() {
        panic!(
            "`{} -m pip install 'moto[server]'` failed (is PyPI reachable?); fix that, or point MOTO_SERVER \
             at a moto_server binary\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    say("moto[server] installed");
    bin
}

/// `<root>/.venv.lock`, locked with `flock(how)` until the returned file is dropped.
fn venv_lock(root: &Path, how: libc::c_int) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    let path = root.join(".venv.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; the lock goes when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), how) } != 0 {
        panic!("locking {}: {}", path.display(), std::io::Error::last_os_error());
    }
    file
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let bin = find_moto();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // A watcher shell stops moto when this test process ends, however it ends.
        let script = format!(
            "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; while [ -d /proc/{} ] && kill -0 $m 2>/dev/null; do sleep 0.3; done; kill $m 2>/dev/null",
            bin.display(),
            std::process::id()
        );
        // Kept in the static: the watcher lives exactly as long as this process.
        let watcher = std::process::Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if http("PUT", port, &format!("/{S3_BUCKET}")).is_some_and(|s| s < 300) {
                return Moto { url, _watcher: std::sync::Mutex::new(watcher) };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut watcher = watcher;
        let _ = watcher.kill();
        let _ = watcher.wait();
        panic!("moto_server did not start on port {port}");
    })
}

/// A bare HTTP/1.1 request to 127.0.0.1, returning the status.
fn http(method: &str, port: u16, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[path = "proxy.rs"]
pub mod proxy;

/// The restore guard's scope for `schema` of the test database, read as restore and verify read it:
/// hostile corpora are checked through the library, many objects per test process, with a few
/// representative cases run through the binary to show the wiring.
pub fn guard_scope(db: &TestDb, schema: &str) -> tenant_backup::restore::guard::Scope {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        let scope = tenant_backup::restore::guard::Scope::load(&client, schema, 5000)
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        scope
    })
}

/// Every table of `schema` with its row count and an md5 of its rows, read through `sql` (any
/// database, any cluster).
pub fn fingerprint_via(sql: impl Fn(&str) -> String, schema: &str) -> Vec<(String, String)> {
    let tables = sql(&format!(
        "SELECT tablename FROM pg_tables WHERE schemaname = '{}' ORDER BY tablename",
        schema.replace('\'', "''")
    ));
    tables
        .lines()
        .map(|t| {
            let q = format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {}.{} x",
                quote(schema),
                quote(t)
            );
            (t.to_string(), sql(&q))
        })
        .collect()
}

/// A fingerprint without the backup history table (which a restore carries over, not restores).
pub fn without_history(fingerprint: Vec<(String, String)>) -> Vec<(String, String)> {
    fingerprint
        .into_iter()
        .filter(|(t, _)| t != "backups_backuprecord")
        .collect()
}

/// A stored object's text, decompressed by its extension.
pub fn object_text(db: &TestDb, key: &str) -> String {
    String::from_utf8(decompress(&db.storage().join(key))).unwrap()
}

/// Replaces a stored object with `bytes` and fixes up its manifest's size and sha256 to match, as
/// anyone who can write to the bucket could: the checksum then proves nothing.
pub fn tamper(db: &TestDb, key: &str, bytes: &[u8]) {
    use sha2::Digest;
    std::fs::write(db.storage().join(key), bytes).unwrap();
    let manifest = db.storage().join(format!("{key}.manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["size"] = bytes.len().into();
    m["sha256"] = hex::encode(sha2::Sha256::digest(bytes)).into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// `dump` with `lines` inserted after the first line that starts with `after`.
pub fn insert_after(dump: &str, after: &str, lines: &str) -> String {
    let at = dump
        .find(&format!("\n{after}"))
        .unwrap_or_else(|| panic!("no line starting with {after:?}"))
        + 1;
    let end = at + dump[at..].find('\n').unwrap() + 1;
    format!("{}{lines}\n{}", &dump[..end], &dump[end..])
}

/// The 1-based number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

/// A directory holding PostgreSQL's client programs as wrappers that append their environment
/// (one `NAME=value` a line, then `--`) and arguments to `<dir>/<program>.log`, then run the
/// real program. Returns the wrapper pg_dump, for `PG_DUMP`: psql and pg_restore are found beside it.
pub fn recording_tools(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for program in ["pg_dump", "psql", "pg_restore"] {
        let log = tools.join(format!("{program}.log"));
        let real = cluster().bin(program);
        let path = tools.join(program);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n{{ env; echo \"-- $*\"; }} >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    tools.join("pg_dump")
}

/// What a recording tool's log holds so far (empty if it never ran).
pub fn tool_log(pg_dump: &Path, program: &str) -> String {
    std::fs::read_to_string(pg_dump.with_file_name(format!("{program}.log"))).unwrap_or_default()
}

/// An application session: psql running `sql` on the test database under `application_name`
/// (say `BEGIN; LOCK …; SELECT pg_sleep(30)`), killed when dropped.
pub struct AppSession {
    child: std::process::Child,
    app: String,
    db: String,
}

impl AppSession {
    pub fn start(db: &TestDb, app: &str, sql: &str) -> AppSession {
        let mut child = cluster()
            .psql_command(&db.name)
            .env("PGAPPNAME", app)
            .args(["-c", sql])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Until the session is there and holds what it asked for (it is then sleeping).
        for _ in 0..100 {
            let busy = db.sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '{app}' AND wait_event = 'PgSleep'"
            ));
            if busy == "1" {
                return AppSession {
                    child,
                    app: app.to_string(),
                    db: db.name.clone(),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the application session {app} did not start");
    }

    pub fn pid(&self) -> String {
        self.on_server("pid")
    }

    fn on_server(&self, what: &str) -> String {
        cluster()
            .sql(
                "postgres",
                &format!(
                    "SELECT {what} FROM pg_stat_activity WHERE datname = '{}' AND application_name = '{}'",
                    self.db, self.app
                ),
            )
            .unwrap_or_default()
    }
}

impl Drop for AppSession {
    fn drop(&mut self) {
        // Killing psql alone would leave its backend asleep, still holding the lock.
        self.on_server("pg_terminate_backend(pid)");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
