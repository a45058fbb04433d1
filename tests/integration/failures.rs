//! Failure paths record nothing and leave no object under a final key; bad input exits 2 and
//! touches nothing; the password never reaches any output.

use crate::support::*;

fn assert_untouched(db: &TestDb, records_before: i64) {
    assert_eq!(db.record_count("bienestar"), records_before, "a row was recorded");
    assert!(db.objects().is_empty(), "objects were left: {:?}", db.objects());
}

#[test]
fn pg_dump_failing_midway_records_nothing() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    // Writes part of a dump, complains with the password in its message, then fails.
    let fake = fake_pg_dump(
        db.dir.path(),
        "echo 'COPY bienestar.t (a) FROM stdin;'; echo 1; echo \"pg_dump: error: connection to $PGHOST failed for password $PGPASSWORD\" >&2; exit 1",
    );
    let out = db
        .cmd()
        .env("PG_DUMP", &fake)
        .args(["backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pg_dump failed (exit code 1)") && stderr.contains("password ***"),
        "{stderr}"
    );
    assert_untouched(&db, before);
}

#[test]
fn truncated_or_killed_dump_records_nothing() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    for body in [
        "echo 'SET statement_timeout = 0;'; exit 0",
        "echo partial; kill -9 $$",
        "exit 0",
    ] {
        let fake = fake_pg_dump(db.dir.path(), body);
        let out = db
            .cmd()
            .env("PG_DUMP", &fake)
            .args(["backup", "--tenant", "bienestar"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{body}: {}", text(&out.stderr));
        assert_untouched(&db, before);
    }
}

#[test]
fn storage_write_failing_records_nothing() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    // The tenant's folder in the bucket is a file, so the object cannot be written.
    std::fs::create_dir_all(db.storage()).unwrap();
    std::fs::write(db.storage().join("bienestar"), b"in the way").unwrap();
    let out = db.cmd().args(["backup", "--tenant", "bienestar"]).output().unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("backing up tenant bienestar"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(db.record_count("bienestar"), before);
    assert_eq!(db.all_files(), vec!["bienestar".to_string()]);
}

#[test]
fn row_insert_failing_removes_the_object_again() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    db.sql(
        "CREATE FUNCTION bienestar.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no more backups today'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON bienestar.backups_backuprecord FOR EACH ROW EXECUTE FUNCTION bienestar.refuse()",
    );
    let out = db.cmd().args(["backup", "--tenant", "bienestar"]).output().unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no more backups today") && stderr.contains("removed again"),
        "{stderr}"
    );
    assert_untouched(&db, before);
}

#[test]
fn one_failing_tenant_does_not_stop_the_others() {
    let db = TestDb::new();
    std::fs::create_dir_all(db.storage()).unwrap();
    std::fs::write(db.storage().join("mindcare"), b"in the way").unwrap();
    let out = db
        .cmd()
        .args(["backup", "--all", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "2 backed up, 1 failed");
    assert_eq!(db.record_count("clinica_demo"), 1);
    assert_eq!(db.record_count("mindcare"), 0);
}

#[test]
fn unknown_and_hostile_tenants_exit_2_and_touch_nothing() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    for name in ["nope", r#"x"; DROP SCHEMA public; --"#, "public"] {
        // Even next to a real tenant: everything is checked before anything starts.
        let out = db
            .cmd()
            .args(["backup", "--tenant", "bienestar", "--tenant", name])
            .output()
            .unwrap();
        assert_no_secret(&out);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = text(&out.stderr);
        let said = if name.contains(' ') {
            // Not a name django-tenants accepts: refused before the tenant table is even read.
            format!("{name:?} is not a schema name django-tenants accepts")
        } else {
            format!("tenant {name:?} not found in public.tenants_clinic")
        };
        assert!(stderr.contains(&said), "{stderr}");
    }
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--created-by", "nobody@example.com"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "no such user");
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'"),
        "1"
    );
    assert_untouched(&db, before);
    assert_eq!(
        std::fs::read_dir(db.storage()).unwrap().count(),
        0,
        "something was stored"
    );
}

#[test]
fn missing_invalid_and_unreachable_database_urls() {
    let db = TestDb::new();
    let out = db.cmd().env_remove("DATABASE_URL").args(["list"]).output().unwrap();
    assert_fails(&out, 2, "--database-url or DATABASE_URL must be set");

    let out = db
        .cmd()
        .env("DATABASE_URL", "postgres://u:Zz9-hidden@host:notaport/db")
        .args(["list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not a valid PostgreSQL URL") && !stderr.contains("Zz9-hidden"),
        "{stderr}"
    );

    // A flag wins over the environment.
    let unreachable = format!("postgres://postgres:{}@127.0.0.1:1/db", cluster().password);
    let out = db
        .cmd()
        .args(["--database-url", &unreachable, "backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("could not connect to postgres://postgres:***@127.0.0.1:1/db"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "says where to look: {stderr}");
    // The tests' fast retry pace (support::FAST_RETRIES) keeps every attempt.
    assert!(stderr.contains("gave up after 4 attempts"), "{stderr}");
}

#[test]
fn a_retry_delay_that_is_not_a_number_of_milliseconds_is_refused() {
    let db = TestDb::new();
    for bad in ["fast", "0", "600000", "-5"] {
        let out = db
            .cmd()
            .env("BACKUP_RETRY_DELAY_MS", bad)
            .args(["list"])
            .output()
            .unwrap();
        assert_fails(&out, 2, "BACKUP_RETRY_DELAY_MS");
    }
}

#[test]
fn wrong_password_is_reported_without_the_password() {
    let db = TestDb::new();
    let wrong = db.url().replace(&cluster().password, "Wr0ng-Pa55");
    let out = db.cmd().env("DATABASE_URL", &wrong).args(["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("password authentication failed")
            && stderr.contains("check the user name and password")
            && !stderr.contains("Wr0ng-Pa55"),
        "{stderr}"
    );
}

#[test]
fn dotenv_is_read_but_the_environment_wins() {
    let db = TestDb::new();
    std::fs::write(
        db.dir.path().join(".env"),
        format!("DATABASE_URL={}\nBACKUP_STORAGE=from-dotenv\n", db.url()),
    )
    .unwrap();
    let out = db
        .cmd()
        .env_remove("DATABASE_URL")
        .args(["backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // BACKUP_STORAGE from the real environment beat the .env file.
    assert_eq!(db.objects().len(), 2);
    assert!(!db.dir.path().join("from-dotenv").exists());
}

#[test]
fn bad_flags_exit_2() {
    let db = TestDb::new();
    for args in [
        vec!["backup"],
        vec!["backup", "--tenant", "bienestar", "--compress", "zstd", "--level", "42"],
        vec!["backup", "--tenant", "bienestar", "--compress", "lz4"],
        vec!["backup", "--tenant", "bienestar", "--storage", "ftp://x"],
        vec!["backup", "--tenant", "bienestar", "--max-size", "lots"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
    assert!(db.objects().is_empty());
}

#[test]
fn an_os_error_is_printed_once() {
    let db = TestDb::new();
    std::fs::create_dir_all(db.storage()).unwrap();
    std::fs::write(db.storage().join("mindcare"), b"in the way").unwrap();
    let out = db
        .cmd()
        .args(["backup", "--tenant", "mindcare", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for line in stderr.lines().filter(|l| l.contains("(os error")) {
        assert_eq!(line.matches("(os error").count(), 1, "{line}");
    }
    assert!(stderr.contains("(os error"), "{stderr}");
}

#[test]
fn no_dotenv_leaves_a_projects_env_file_unread_and_debug_says_which_was_read() {
    let db = TestDb::new();
    // A Django project's development .env in the working directory of a cron job.
    std::fs::write(
        db.dir.path().join(".env"),
        "DATABASE_URL=postgres://dev:dev@127.0.0.1:1/dev_db\nBACKUP_STORAGE=/nonexistent/dev-backups\n",
    )
    .unwrap();
    let out = db.cmd().args(["-v", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = db.dir.path().join(".env");
    assert!(
        text(&out.stderr).contains(&format!("read settings from {}", read.display())),
        "{}",
        text(&out.stderr)
    );
    // Without the environment's DATABASE_URL the .env one would be used; --no-dotenv says no.
    for way in [&["--no-dotenv"][..], &[]] {
        let mut c = db.cmd();
        c.env_remove("DATABASE_URL").args(way).args(["-v", "list"]);
        if way.is_empty() {
            c.env("BACKUP_NO_DOTENV", "1");
        }
        let out = c.output().unwrap();
        assert_fails(&out, 2, "DATABASE_URL must be set");
        assert!(
            !text(&out.stderr).contains("read settings from"),
            "{}",
            text(&out.stderr)
        );
    }
}
