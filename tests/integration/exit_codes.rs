//! One test per row of docs/exit-codes.md: 0 done, 1 work that failed (a later run may finish
//! it), 2 a configuration or usage mistake the operator must fix (found before any work), 128 + N
//! stopped by signal N (tested in stops.rs: `a_second_signal_*`, `*_exits_130`, `*_143`).

use crate::support::*;

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn exit_0_everything_was_done() {
    let db = TestDb::new();
    let out = db.cmd().args(["backup", "--all"]).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
}

#[test]
fn exit_1_a_tenant_whose_dump_failed() {
    let db = TestDb::new();
    let failing = fake_pg_dump(db.dir.path(), "echo 'pg_dump: error: disk full' >&2; exit 1");
    let out = db
        .cmd()
        .env("PG_DUMP", &failing)
        .args(["backup", "--tenant", "bienestar", "--format", "sql"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "disk full");
}

#[test]
fn exit_1_a_database_server_that_does_not_answer() {
    let db = TestDb::new();
    let down = format!("postgres://postgres:{}@127.0.0.1:1/db", cluster().password);
    let out = db
        .cmd()
        .env("DATABASE_URL", &down)
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "gave up after 4 attempts");
}

#[test]
fn exit_2_a_flag_that_does_not_parse() {
    let db = TestDb::new();
    let out = db.cmd().args(["backup", "--concurrency", "many"]).output().unwrap();
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
}

#[test]
fn exit_2_a_missing_or_malformed_database_url() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .env_remove("DATABASE_URL")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "DATABASE_URL must be set");
    let out = db
        .cmd()
        .env("DATABASE_URL", "postgres://u@h:port/db")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "not a valid PostgreSQL URL");
}

#[test]
fn exit_2_a_wrong_password_user_or_database_name() {
    let db = TestDb::new();
    let password = cluster().password.clone();
    for (url, said) in [
        (
            db.url().replace(&password, "Wr0ng-Pa55"),
            "password authentication failed",
        ),
        (db.url().replace("//postgres:", "//nobody:"), "nobody"),
        (db.url().replace(&db.name, "no_such_db"), "check the database name"),
    ] {
        let out = db
            .cmd()
            .env("DATABASE_URL", &url)
            .args(["backup", "--all"])
            .output()
            .unwrap();
        assert_no_secret(&out);
        assert_fails(&out, 2, said);
    }
}

#[test]
fn exit_2_no_storage_a_missing_storage_directory_or_a_mistyped_storage_url() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .env_remove("BACKUP_STORAGE")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "BACKUP_STORAGE");
    let missing = db.dir.path().join("nowhere");
    let out = db
        .cmd()
        .env("BACKUP_STORAGE", &missing)
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "does not exist");
    let out = db
        .cmd()
        .env("BACKUP_STORAGE", "s3:/bucket")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "mistyped URL");
}

#[test]
fn exit_2_missing_s3_credentials() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .env("BACKUP_STORAGE", "s3://bucket/clinic")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "no S3 credentials");
    assert!(db.objects().is_empty());
}

#[test]
fn exit_2_pg_dump_missing_for_format_sql_or_an_explicit_pg_dump_that_does_not_exist() {
    let db = TestDb::new();
    let missing = db.dir.path().join("no_such_pg_dump");
    for format in ["sql", "auto", "custom"] {
        let out = db
            .cmd()
            .env("PG_DUMP", &missing)
            .args(["backup", "--tenant", "bienestar", "--format", format])
            .output()
            .unwrap();
        assert_fails(&out, 2, "no pg_dump found");
    }
    let old = fake_pg_dump(db.dir.path(), "exit 1");
    std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.1'\n").unwrap();
    let out = db
        .cmd()
        .env("PG_DUMP", &old)
        .args(["backup", "--tenant", "bienestar", "--format", "sql"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "pg_dump refuses to dump a newer server");
}

#[test]
fn exit_2_a_restore_without_the_client_programs() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--format", "sql"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let missing = db.dir.path().join("no_such_pg_dump");
    let out = db
        .cmd()
        .env("PG_DUMP", &missing)
        .args(["restore", "--tenant", "bienestar", "--latest", "--yes"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
}

#[test]
fn exit_2_a_tenant_that_does_not_exist() {
    let db = TestDb::new();
    let out = db.cmd().args(["backup", "--tenant", "bienestr"]).output().unwrap();
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_misspelled_tenant_gets_the_nearest_names_and_points_at_status() {
    let db = TestDb::new();
    for (typo, meant) in [
        ("bienestr", "\"bienestar\""),
        ("mind_care", "\"mindcare\""),
        ("clinicademo", "\"clinica_demo\""),
    ] {
        let out = db.cmd().args(["backup", "--tenant", typo]).output().unwrap();
        assert_fails(&out, 2, &format!("did you mean {meant}?"));
        assert!(
            text(&out.stderr).contains("`tenant-backup status`"),
            "{}",
            text(&out.stderr)
        );
    }
    // Nothing near: no guess, still where to look.
    let out = db
        .cmd()
        .args(["restore", "--tenant", "zzzzzzzz", "--latest", "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "`tenant-backup status` lists every tenant");
    assert!(!text(&out.stderr).contains("did you mean"), "{}", text(&out.stderr));
}

#[test]
fn exit_2_a_broken_env_file_or_setting() {
    let db = TestDb::new();
    std::fs::write(db.dir.path().join(".env"), "not a setting\n").unwrap();
    let out = db.cmd().args(["backup", "--all"]).output().unwrap();
    assert_fails(&out, 2, ".env line 1");
    std::fs::remove_file(db.dir.path().join(".env")).unwrap();
    let out = db
        .cmd()
        .env("BACKUP_RETRY_DELAY_MS", "soon")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "BACKUP_RETRY_DELAY_MS");
}
