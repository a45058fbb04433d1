//! Shared helpers: one throwaway cluster per test run, a fresh database per test (a copy of a
//! template loaded once from the fixture), the binary driven with assert_cmd.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use tenant_backup::devcluster::DevCluster;

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
        TestDb {
            name,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An empty database (no fixture), for restoring dumps into.
    pub fn empty() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("e{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        cluster().create_database(&name, None).unwrap();
        TestDb {
            name,
            dir: tempfile::tempdir().unwrap(),
        }
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
        let mut cmd = assert_cmd::Command::cargo_bin("tenant-backup").unwrap();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("DATABASE_URL", self.url())
            .env("BACKUP_STORAGE", self.storage())
            .current_dir(self.dir.path());
        cmd
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
        let tables = self.sql(&format!(
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
                (t.to_string(), self.sql(&q))
            })
            .collect()
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
