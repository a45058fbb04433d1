//! Configuration mistakes fail before any work (issue #26, items 2 and 3): no storage configured,
//! a storage directory that is not there, a storage string that is a mistyped URL, storage that
//! cannot be used. Each is one line and exit 2, with nothing dumped, stored or created.

use crate::support::supabase_stub::SupabaseStub;
use crate::support::*;

/// Every file and folder under the test's directory, but the storage's contents and the tools.
fn tree(db: &TestDb) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![db.dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(db.dir.path()).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn backup_run_scheduled_and_cleanup_refuse_to_run_without_a_configured_storage() {
    let db = TestDb::new();
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
    let rows = db.record_count("bienestar");
    for args in [
        &["backup", "--tenant", "bienestar"][..],
        &["backup", "--all"],
        &["run-scheduled"],
        &["cleanup", "--days", "30"],
    ] {
        // The folder the old default (./backups) named is right there: it is still not used.
        let out = db.cmd().env_remove("BACKUP_STORAGE").args(args).output().unwrap();
        assert_fails(&out, 2, "set --storage or BACKUP_STORAGE");
        assert_eq!(
            text(&out.stderr).lines().count(),
            1,
            "{args:?}: one line: {}",
            text(&out.stderr)
        );
        assert!(db.objects().is_empty(), "{args:?} stored {:?}", db.objects());
        assert_eq!(db.record_count("bienestar"), rows, "{args:?} recorded a backup");
    }
    // Read-only commands still look in ./backups.
    let out = db.cmd().env_remove("BACKUP_STORAGE").args(["list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_missing_storage_directory_is_an_error_and_is_never_created() {
    let db = TestDb::new();
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
    let typo = db.dir.path().join("bakups").join("clinic");
    let before = tree(&db);
    for args in [
        &["backup", "--tenant", "bienestar"][..],
        &["run-scheduled"],
        &["cleanup", "--orphans"],
    ] {
        let out = db.cmd().env("BACKUP_STORAGE", &typo).args(args).output().unwrap();
        assert_fails(&out, 2, "does not exist: create it (mkdir -p");
        assert_eq!(tree(&db), before, "{args:?} created something");
    }
    // doctor says so too, and does not create it either.
    let out = db.cmd().env("BACKUP_STORAGE", &typo).args(["doctor"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("storage") && l.contains("does not exist")),
        "{stdout}"
    );
    assert_eq!(tree(&db), before, "doctor created something");
    // The tenant folders inside an existing storage directory are created as needed.
    let out = db.cmd().args(["backup", "--tenant", "bienestar"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(db.storage().join("bienestar").is_dir());
}

#[test]
fn storage_strings_that_look_like_mistyped_urls_are_refused() {
    let db = TestDb::new();
    let before = tree(&db);
    for (typo, meant) in [
        ("s3:/bucket", "s3://bucket"),
        ("supabase:/backups", "supabase://backups"),
        ("s3//bucket/x", "s3://bucket/x"),
        ("s3:bucket", "s3://bucket"),
    ] {
        for args in [&["backup", "--all"][..], &["doctor"], &["list", "--check"]] {
            let out = db.cmd().env("BACKUP_STORAGE", typo).args(args).output().unwrap();
            assert_fails(&out, 2, "looks like a mistyped URL");
            assert!(text(&out.stderr).contains(meant), "{typo}: {}", text(&out.stderr));
        }
    }
    assert_eq!(tree(&db), before);
}

#[test]
fn storage_is_proven_before_the_first_dump() {
    let db = TestDb::new();
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
    let tools = db.dir.path().join("t");
    std::fs::create_dir(&tools).unwrap();
    let pg_dump = recording_tools(&tools);
    let rows = db.record_count("bienestar");
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.k", "backups", 50 * 1000 * 1000);
    let supabase = |c: &mut assert_cmd::Command| {
        c.env("BACKUP_STORAGE", "supabase://backups")
            .env("SUPABASE_URL", &stub.url)
            .env("SUPABASE_KEY", &stub.key);
    };
    type Setup<'a> = Box<dyn Fn(&mut assert_cmd::Command) + 'a>;
    let cases: Vec<(&str, Setup)> = vec![
        // The anon key: it can see nothing.
        (
            "service_role",
            Box::new(|c: &mut assert_cmd::Command| {
                supabase(c);
                c.env("SUPABASE_KEY", &stub.anon_key);
            }),
        ),
        // A bucket that is not there.
        (
            "nobucket",
            Box::new(|c: &mut assert_cmd::Command| {
                supabase(c);
                c.env("BACKUP_STORAGE", "supabase://nobucket");
            }),
        ),
        // S3 that cannot be reached.
        (
            "cannot be used",
            Box::new(|c: &mut assert_cmd::Command| {
                c.env("BACKUP_STORAGE", "s3://bucket/x")
                    .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
                    .env("AWS_ACCESS_KEY_ID", "x")
                    .env("AWS_SECRET_ACCESS_KEY", "y");
            }),
        ),
        // A local directory that cannot be written.
        (
            "cannot be written",
            Box::new(|c: &mut assert_cmd::Command| {
                c.env("BACKUP_STORAGE", "/proc");
            }),
        ),
    ];
    for (needle, setup) in &cases {
        for args in [
            &["backup", "--all", "--format", "sql"][..],
            &["run-scheduled", "--format", "sql"],
        ] {
            let mut c = db.cmd();
            setup(&mut c);
            let out = c.env("PG_DUMP", &pg_dump).args(args).output().unwrap();
            assert_no_secret(&out);
            assert_fails(&out, 2, needle);
            assert!(text(&out.stderr).contains("Nothing was done"), "{}", text(&out.stderr));
            let log = tool_log(&pg_dump, "pg_dump");
            let dumps: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with("-- ") && *l != "-- --version")
                .collect();
            assert!(dumps.is_empty(), "{needle} {args:?}: pg_dump dumped: {dumps:?}");
            assert_eq!(db.record_count("bienestar"), rows);
        }
    }
}

#[test]
fn doctor_checks_everything_else_when_the_database_url_is_missing_or_malformed() {
    let db = TestDb::new();
    for (url, said) in [
        (None, "DATABASE_URL must be set"),
        (Some("postgres://u@h:port/db"), "not a valid"),
    ] {
        let mut c = db.cmd();
        match url {
            None => c.env_remove("DATABASE_URL"),
            Some(url) => c.env("DATABASE_URL", url),
        };
        let out = c.args(["doctor"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains("database") && l.contains(said)),
            "{stdout}"
        );
        for check in ["pg_dump found", "storage", "encryption", "signing"] {
            assert!(
                stdout.lines().any(|l| l.starts_with("ok") && l.contains(check)),
                "{check} still checked: {stdout}"
            );
        }
    }
}
