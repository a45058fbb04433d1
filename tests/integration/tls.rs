//! TLS against a real TLS cluster (issue #26, item 8): a throwaway CA made with openssl, a server
//! that refuses unencrypted connections, and every `sslmode` tried with both the driver (the
//! catalog, locks) and the client programs (pg_dump for the backup, psql for the verify), which
//! must trust the same roots. `options=` reaches the client programs too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use devcluster::DevCluster;

use crate::support::*;

struct TlsCluster {
    cluster: DevCluster,
    dir: tempfile::TempDir,
}

impl TlsCluster {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
}

/// `openssl req` with a new P-256 key in `key`: a self-signed certificate (`-x509`) or a request.
fn new_key(dir: &Path, x509: bool, key: &str, out: &str, subject: &str, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    args.extend(["-keyout", key, "-out", out, "-subj", subject]);
    if x509 {
        args.extend(["-x509", "-days", "2"]);
    }
    args.extend(extra);
    openssl(dir, &args);
}

/// A CA (`<name>.crt`, `<name>.key`).
fn make_ca(dir: &Path, name: &str) {
    let extra = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    new_key(
        dir,
        true,
        &format!("{name}.key"),
        &format!("{name}.crt"),
        &format!("/CN={name}"),
        &extra,
    );
}

fn tls_cluster() -> &'static TlsCluster {
    static TLS: OnceLock<TlsCluster> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other-ca");
        // The server's certificate names `localhost` only: 127.0.0.1 does not match it.
        new_key(d, false, "server.key", "server.csr", "/CN=localhost", &[]);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        // Encrypted connections only.
        std::fs::write(
            d.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
            assert!(!pw.is_null(), "the postgres OS user");
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            for f in ["server.key", "server.crt", "pg_hba.conf"] {
                std::os::unix::fs::chown(d.join(f), Some(uid), Some(gid)).unwrap();
            }
        }
        let setting = |f: &str| d.join(f).display().to_string();
        let (crt, key, hba) = (setting("server.crt"), setting("server.key"), setting("pg_hba.conf"));
        let cluster = DevCluster::start_with(&[
            ("ssl", "on"),
            ("ssl_cert_file", &crt),
            ("ssl_key_file", &key),
            ("hba_file", &hba),
        ])
        .unwrap_or_else(|e| panic!("starting the TLS cluster: {e}"));
        cluster.create_database("clinic", None).unwrap();
        cluster.load_file("clinic", &fixture()).unwrap();
        TlsCluster { cluster, dir }
    })
}

/// The tool against the TLS cluster, from a fresh home (no `~/.postgresql`) and bucket.
fn run(home: &Path, url: &str, args: &[&str]) -> Output {
    let storage = home.join("backups");
    std::fs::create_dir_all(&storage).unwrap();
    tool()
        .env("HOME", home)
        .env("DATABASE_URL", url)
        .env("BACKUP_STORAGE", &storage)
        .current_dir(home)
        .args(args)
        .output()
        .unwrap()
}

/// A backup in plain SQL (the driver, then pg_dump) and its verify (psql): whether both worked.
fn back_up_and_verify(home: &Path, url: &str) -> Result<(), String> {
    for args in [
        &["backup", "--tenant", "bienestar", "--format", "sql", "--no-progress"][..],
        &["verify", "--tenant", "bienestar", "--no-progress"],
    ] {
        let out = run(home, url, args);
        assert_no_secret(&out);
        if !out.status.success() {
            return Err(format!("{args:?}: {}", text(&out.stderr)));
        }
    }
    Ok(())
}

fn url(host: &str, query: &str) -> String {
    let c = &tls_cluster().cluster;
    format!("postgres://postgres:{}@{host}:{}/clinic?{query}", c.password, c.port)
}

#[test]
fn every_sslmode_with_the_driver_and_the_client_programs() {
    let t = tls_cluster();
    let ca = t.path("ca.crt").display().to_string();
    let other = t.path("other-ca.crt").display().to_string();
    let cases = [
        // The server refuses unencrypted connections.
        ("127.0.0.1", "sslmode=disable".to_string(), false),
        // allow: unencrypted first, encrypted when the server asks for it (not disable).
        ("127.0.0.1", "sslmode=allow".to_string(), true),
        ("127.0.0.1", "sslmode=prefer".to_string(), true),
        ("127.0.0.1", "sslmode=require".to_string(), true),
        // verify-ca: the chain, not the name.
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={other}"), false),
        // verify-full: the chain and the name.
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}"), true),
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}"), false),
        ("localhost", format!("sslmode=verify-full&sslrootcert={other}"), false),
        // require with a root certificate checks the chain, as libpq does.
        ("127.0.0.1", format!("sslmode=require&sslrootcert={other}"), false),
    ];
    for (host, query, works) in cases {
        let home = tempfile::tempdir().unwrap();
        let result = back_up_and_verify(home.path(), &url(host, &query));
        assert_eq!(result.is_ok(), works, "{host} {query}: {result:?}");
        if let Err(e) = result {
            assert!(!e.contains("panicked"), "{e}");
        }
    }
}

#[test]
fn verify_full_without_sslrootcert_trusts_the_same_roots_as_libpq() {
    let t = tls_cluster();
    // libpq's default root file, ~/.postgresql/root.crt: the driver reads it too, and the client
    // programs are given the same file.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(t.path("ca.crt"), home.path().join(".postgresql/root.crt")).unwrap();
    back_up_and_verify(home.path(), &url("localhost", "sslmode=verify-full")).unwrap();
    // Without it, both refuse the server (no public root signs it), with a message saying what to
    // set.
    let bare = tempfile::tempdir().unwrap();
    let out = run(
        bare.path(),
        &url("localhost", "sslmode=verify-full"),
        &["backup", "--tenant", "bienestar", "--format", "sql"],
    );
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("sslrootcert"), "{}", text(&out.stderr));
}

#[test]
fn options_in_the_url_reach_the_client_programs() {
    let db = TestDb::new();
    let tools = recording_tools(db.dir.path());
    let url = format!("{}?options=-c%20statement_timeout%3D123456", db.url());
    for args in [
        &["backup", "--tenant", "bienestar", "--format", "sql"][..],
        &["verify", "--tenant", "bienestar"],
    ] {
        let out = db
            .cmd()
            .env("DATABASE_URL", &url)
            .env("PG_DUMP", &tools)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    for program in ["pg_dump", "psql"] {
        let log = tool_log(&tools, program);
        assert!(
            log.contains("PGOPTIONS=-c statement_timeout=123456"),
            "{program}: {log}"
        );
    }
}
