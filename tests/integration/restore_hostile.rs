//! Hostile dumps (issue #12, item 1): someone who can write to the bucket rewrites a dump and fixes
//! up its manifest. Restore and verify must still execute nothing but the dump's own SQL on its own
//! schema: no psql meta-commands, no transaction control, no other schema. Such a dump is refused
//! before anything runs, exit 1, naming the line and why.

use crate::support::*;

/// A plain, uncompressed backup of bienestar: its key and its text.
fn plain_backup(db: &TestDb) -> (String, String) {
    let b = db.backup(&["--tenant", "bienestar", "--compress", "none"]);
    let key = b["key"].as_str().unwrap().to_string();
    let text = object_text(db, &key);
    (key, text)
}

/// Everything restore and verify must leave alone, taken before and compared after.
struct Untouched {
    schemas: String,
    tenants: String,
    bienestar: Vec<(String, String)>,
    mindcare: Vec<(String, String)>,
}

impl Untouched {
    fn take(db: &TestDb) -> Untouched {
        Untouched {
            schemas: db.schemas(),
            tenants: db.sql(
                "SELECT string_agg(schema_name || ':' || backup_schedule, ',' ORDER BY id) FROM public.tenants_clinic",
            ),
            bienestar: db.fingerprint("bienestar"),
            mindcare: db.fingerprint("mindcare"),
        }
    }

    fn check(&self, db: &TestDb, what: &str) {
        assert_eq!(db.schemas(), self.schemas, "{what}: schemas changed");
        assert_eq!(
            db.sql(
                "SELECT string_agg(schema_name || ':' || backup_schedule, ',' ORDER BY id) FROM public.tenants_clinic"
            ),
            self.tenants,
            "{what}: the tenant table changed"
        );
        assert_eq!(db.fingerprint("bienestar"), self.bienestar, "{what}: bienestar changed");
        assert_eq!(db.fingerprint("mindcare"), self.mindcare, "{what}: mindcare changed");
    }
}

/// The guard restore and verify run, through the library: the dump is refused at `line`.
fn guard_refuses(scope: &tenant_backup::restore::guard::Scope, dump: &str, what: &str, line: usize) {
    use tenant_backup::restore::guard::{check, CheckError};
    match check(dump.as_bytes(), scope) {
        Err(CheckError::Refused(r)) => assert_eq!(r.line, line as u64, "{what}: {r}"),
        other => panic!("{what}: not refused: {other:?}"),
    }
}

/// Restore and verify of the tampered object both exit 1 naming `line`, and change nothing.
fn refused(db: &TestDb, key: &str, what: &str, line: usize, before: &Untouched) {
    for args in [
        vec!["restore", "--tenant", "bienestar", "--file", key, "--yes"],
        vec![
            "restore",
            "--tenant",
            "bienestar",
            "--file",
            key,
            "--yes",
            "--drop-previous",
        ],
        vec!["verify", "--tenant", "bienestar"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_no_secret(&out);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what} ({}): {stderr}", args[0]);
        assert!(
            stderr.contains(&format!("line {line}")),
            "{what} ({}): the message should name line {line}:\n{stderr}",
            args[0]
        );
        before.check(db, &format!("{what} ({})", args[0]));
    }
}

#[test]
fn restore_and_verify_refuse_psql_meta_commands_and_run_no_shell() {
    let db = TestDb::new();
    let (key, original) = plain_backup(&db);
    let dump_key = original
        .lines()
        .find_map(|l| l.strip_prefix("\\restrict "))
        .expect("pg_dump >= 15.14 writes \\restrict");
    let marker = db.dir.path().join("pwned");
    let shell = format!("touch '{0}'; env > '{0}'", marker.display());
    let before = Untouched::take(&db);
    let cases = [
        ("a shell escape", format!("\\! {shell}"), "\\!"),
        (
            "a shell escape after a statement",
            format!("SELECT 1; \\! {shell}"),
            "SELECT 1;",
        ),
        (
            "the dump's own \\unrestrict, then a shell escape",
            format!("\\unrestrict {dump_key}\n\\! {shell}"),
            "\\! touch",
        ),
        ("\\set", "\\set ON_ERROR_STOP off".to_string(), "\\set"),
        (
            "\\copy to a local file",
            format!("\\copy (SELECT 1) TO '{}'", marker.display()),
            "\\copy",
        ),
        ("\\o to a local file", format!("\\o '{}'", marker.display()), "\\o"),
        (
            "\\gexec",
            "SELECT 'DROP SCHEMA mindcare CASCADE' \\gexec".to_string(),
            "\\gexec",
        ),
        ("a psql variable", "SELECT :'USER';".to_string(), ":'USER'"),
    ];
    let scope = guard_scope(&db, "bienestar");
    for (i, (what, lines, needle)) in cases.into_iter().enumerate() {
        let dump = insert_after(&original, "SET row_security", &lines);
        guard_refuses(&scope, &dump, what, line_of(&dump, needle));
        // Every case through the library; the first ones through the binary too.
        if i < 3 {
            tamper(&db, &key, dump.as_bytes());
            refused(&db, &key, what, line_of(&dump, needle), &before);
        }
        assert!(!marker.exists(), "{what}: the shell command ran");
    }
    // The untampered dump still restores.
    tamper(&db, &key, original.as_bytes());
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--file", &key, "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn restore_and_verify_refuse_a_dump_that_touches_another_schema() {
    let db = TestDb::new();
    let (key, original) = plain_backup(&db);
    let before = Untouched::take(&db);
    let cases = [
        "DROP SCHEMA mindcare CASCADE;",
        "INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('evil', 'x', 'daily');",
        "UPDATE public.tenants_clinic SET backup_schedule = 'disabled';",
        "SET search_path = mindcare;",
        "SELECT pg_catalog.set_config('search_path', 'public', false);",
        "CREATE TABLE public.evil (x int);",
        "ALTER TABLE mindcare.appointments_patient RENAME TO gone;",
        "TRUNCATE mindcare.appointments_appointment;",
        "COPY mindcare.appointments_tag (id, name) FROM stdin;\n99\tevil\n\\.",
        "COPY bienestar.appointments_tag (id, name) FROM '/etc/passwd';",
        "CREATE TABLE bienestar.spy AS SELECT * FROM mindcare.appointments_patient;",
        "CREATE VIEW bienestar.spy AS SELECT * FROM mindcare.appointments_patient;",
        "CREATE FUNCTION bienestar.f() RETURNS void LANGUAGE sql AS $$ DELETE FROM mindcare.appointments_patient $$;",
        "CREATE FUNCTION bienestar.g() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP SCHEMA mindcare CASCADE'; END $$;",
        "DO $$ BEGIN EXECUTE 'DROP SCHEMA mindcare CASCADE'; END $$;",
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'clinic-app';",
        "CREATE TABLE bienestar.t (x text DEFAULT pg_catalog.pg_read_file('/etc/passwd'));",
        "SELECT pg_catalog.setval('public.tenants_clinic_id_seq', 1, false);",
        "SET ROLE postgres;",
        "SET session_replication_role = replica;",
        "CREATE EXTENSION IF NOT EXISTS dblink;",
        "GRANT ALL ON ALL TABLES IN SCHEMA mindcare TO PUBLIC;",
    ];
    let scope = guard_scope(&db, "bienestar");
    for (i, sql) in cases.into_iter().enumerate() {
        let dump = insert_after(&original, "CREATE SCHEMA bienestar;", sql);
        let line = line_of(&dump, sql.lines().next().unwrap());
        guard_refuses(&scope, &dump, sql, line);
        if i % 5 == 0 {
            tamper(&db, &key, dump.as_bytes());
            refused(&db, &key, sql, line, &before);
        }
    }
}

#[test]
fn restore_and_verify_refuse_transaction_control_so_verify_never_commits() {
    let db = TestDb::new();
    let (key, original) = plain_backup(&db);
    let before = Untouched::take(&db);
    let scope = guard_scope(&db, "bienestar");
    for sql in [
        "COMMIT;",
        "END;",
        "ROLLBACK;",
        "ABORT;",
        "BEGIN;",
        "START TRANSACTION;",
        "SAVEPOINT s;",
        "RELEASE SAVEPOINT s;",
        "PREPARE TRANSACTION 'x';",
        "COMMIT AND CHAIN;",
    ] {
        // Right after the schema is created: a COMMIT there would make verify's rename permanent.
        let dump = insert_after(&original, "CREATE SCHEMA bienestar;", sql);
        guard_refuses(&scope, &dump, sql, line_of(&dump, sql));
        if ["COMMIT;", "PREPARE TRANSACTION 'x';"].contains(&sql) {
            tamper(&db, &key, dump.as_bytes());
            refused(&db, &key, sql, line_of(&dump, sql), &before);
        }
    }
}

#[test]
fn restore_refuses_a_custom_archive_whose_schema_reads_another_tenant() {
    // Not tampered at all: pg_dump wrote it, but the view names another clinic's table.
    let db = TestDb::new();
    db.sql("CREATE VIEW bienestar.spy AS SELECT first_name FROM mindcare.appointments_patient");
    let b = db.backup(&["--tenant", "bienestar", "--format", "custom"]);
    db.sql("DROP VIEW bienestar.spy");
    let before = Untouched::take(&db);
    let key = b["key"].as_str().unwrap();
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--file", key, "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "mindcare");
    assert!(text(&out.stderr).contains("line "), "{}", text(&out.stderr));
    before.check(&db, "custom archive");
}

#[test]
fn restore_children_get_a_minimal_environment() {
    let db = TestDb::new();
    let tools = recording_tools(db.dir.path());
    let run = |args: &[&str]| {
        let out = db
            .cmd()
            .env("PG_DUMP", &tools)
            .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
            .env("SUPABASE_URL", "http://127.0.0.1:9")
            .env("SUPABASE_SERVICE_ROLE_KEY", "supabase-secret-value")
            .env("BACKUP_SIGNING_KEY", "signing-secret-value-of-32-bytes-or-more")
            .env("PGOPTIONS", "-c search_path=mindcare")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    run(&["backup", "--tenant", "bienestar", "--no-progress"]);
    run(&["verify", "--tenant", "bienestar"]);
    run(&["restore", "--tenant", "bienestar", "--latest", "--yes"]);
    run(&["backup", "--tenant", "mindcare", "--format", "custom", "--no-progress"]);
    run(&["restore", "--tenant", "mindcare", "--latest", "--yes"]);
    for program in ["pg_dump", "psql", "pg_restore"] {
        let log = tool_log(&tools, program);
        // (pg_restore only writes SQL: it gets no connection settings at all.)
        let connects = program != "pg_restore";
        assert!(
            !log.is_empty() && (log.contains("PGHOST=") || !connects),
            "{program} never ran with its libpq settings:\n{log}"
        );
        if !connects {
            assert!(!log.contains("PGPASSWORD"), "{program} got the password:\n{log}");
        }
        for bad in [
            "AWS_",
            "SUPABASE_",
            "DATABASE_URL",
            "BACKUP_",
            "PGOPTIONS",
            "secret-value",
        ] {
            assert!(!log.contains(bad), "{program} got {bad}:\n{log}");
        }
    }
}
