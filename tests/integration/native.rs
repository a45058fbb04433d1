//! The native json format: round trip of every type Django uses, version matching, `--format auto`.

use serde_json::Value;

use crate::support::*;

/// A table with every awkward type and value, in bienestar.
fn add_all_types(db: &TestDb) {
    db.sql(
        r#"CREATE TABLE bienestar.all_types (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             b bytea, j jsonb, js json, n numeric, n2 numeric(30,10), ts timestamptz, d date, t time, iv interval,
             u uuid, ip inet, ints integer[], texts text[], flag boolean, body text, f8 double precision,
             doubled bigint GENERATED ALWAYS AS (id * 2) STORED);
           INSERT INTO bienestar.all_types (b, j, js, n, n2, ts, d, t, iv, u, ip, ints, texts, flag, body, f8) VALUES
             ('\x00ff00'::bytea, '{"a": [1, null, "x"]}', '{"k":  "spaced"}', -12345678901234567890.123456789, -0.0000000001,
              '2025-06-03 15:45:12.345678+00', '2024-02-29', '23:59:59.999999', '1 year 2 mons 3 days 04:05:06.789',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '{1,2,NULL}', '{"a b","c\"d",NULL}', true,
              E'line1\r\nline2\\back\n\\.\nend ñ 漢字 🙂', 0.1),
             (NULL, 'null', 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', '{}', false, '', 'NaN'),
             ('', NULL, NULL, 0, 99999999999999999999.9999999999, '-infinity', 'infinity', '00:00', '-1 day', NULL, '::1', NULL, NULL, NULL, NULL, '-Infinity');
           -- Structure the json restore rebuilds (or, where it cannot put it back exactly, leaves alone).
           ALTER TABLE bienestar.all_types ADD CONSTRAINT all_types_u_uniq UNIQUE (u) DEFERRABLE INITIALLY DEFERRED;
           CREATE UNIQUE INDEX all_types_body_flag ON bienestar.all_types (lower(body)) WHERE flag;
           CREATE INDEX all_types_ts ON bienestar.all_types (ts DESC NULLS LAST);
           COMMENT ON INDEX bienestar.all_types_ts IS 'kept in place';
           CREATE INDEX all_types_d ON bienestar.all_types (d);
           ALTER TABLE bienestar.all_types CLUSTER ON all_types_d;
           ALTER TABLE bienestar.all_types ADD COLUMN clinic_id bigint REFERENCES public.tenants_clinic (id) DEFERRABLE INITIALLY DEFERRED;
           UPDATE bienestar.all_types SET clinic_id = (SELECT min(id) FROM public.tenants_clinic);"#,
    );
}

fn data(db: &TestDb, schema: &str) -> Vec<(String, String)> {
    db.fingerprint(schema)
        .into_iter()
        .filter(|(t, _)| t != "backups_backuprecord")
        .collect()
}

fn json_backup(db: &TestDb, tenant: &str, extra: &[&str]) -> Value {
    db.backup(&[&["--tenant", tenant, "--format", "json"][..], extra].concat())
}

#[test]
fn json_round_trips_every_type_and_keeps_the_history() {
    let db = TestDb::new();
    add_all_types(&db);
    let before = data(&db, "bienestar");
    let structure = db.structure("bienestar");
    assert!(
        structure.contains("all_types_body_flag") && structure.contains("FOREIGN KEY"),
        "{structure}"
    );
    let seq_before = db.sql("SELECT last_value FROM bienestar.all_types_id_seq");
    let b = json_backup(&db, "bienestar", &[]);
    let key = b["key"].as_str().unwrap();
    assert!(
        key.starts_with("bienestar/backup-json-bienestar-") && key.ends_with(".json.zst"),
        "{key}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(db.storage().join(format!("{key}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(manifest["format"], "json");
    assert_eq!(manifest["row_counts"]["appointments_appointment"], 1000);
    assert_eq!(manifest["row_counts"]["all_types"], 3);

    // Damage it all, then restore.
    db.sql(
        "DELETE FROM bienestar.appointments_appointment WHERE id % 2 = 0; UPDATE bienestar.all_types SET body = 'x'; \
         INSERT INTO bienestar.all_types (body) VALUES ('new'); UPDATE bienestar.appointments_patient SET notes = 'changed'",
    );
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &b["id"].to_string(),
            "--yes",
        ])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(data(&db, "bienestar"), before, "every table identical to the backup");
    assert_eq!(
        db.structure("bienestar"),
        structure,
        "indexes and constraints put back as they were"
    );
    assert_eq!(db.sql("SELECT last_value FROM bienestar.all_types_id_seq"), seq_before);
    assert_eq!(db.sql("SELECT doubled = id * 2 FROM bienestar.all_types LIMIT 1"), "t");
    // History: both backups kept, and the next one gets a fresh id.
    assert_eq!(db.sql("SELECT count(*) FROM bienestar.backups_backuprecord"), "4");
    let next = json_backup(&db, "bienestar", &[]);
    assert!(next["id"].as_i64().unwrap() > 4);
}

#[test]
fn json_verify_passes_and_leaves_no_trace_and_a_changed_schema_is_refused() {
    let db = TestDb::new();
    json_backup(&db, "mindcare", &["--compress", "gzip"]);
    let live = db.fingerprint("mindcare");
    // The clinic is writing meanwhile (a transaction holding a row lock): verify only reads the
    // live tables, so it neither waits for the writer nor blocks it.
    let mut writer = cluster()
        .psql_command(&db.name)
        .args([
            "-c",
            "UPDATE mindcare.appointments_patient SET notes = notes WHERE id = (SELECT min(id) FROM mindcare.appointments_patient); SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND relation = 'mindcare.appointments_patient'::regclass AND mode = 'RowExclusiveLock' AND granted";
    for _ in 0..100 {
        if db.sql(held) == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(db.sql(held), "1", "the writer never got its lock");
    let out = db
        .cmd()
        .args(["verify", "--tenant", "mindcare", "--lock-timeout", "2"])
        .output()
        .unwrap();
    db.sql(&held.replace("count(*)", "pg_terminate_backend(pid)"));
    let _ = writer.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("row counts match"), "{}", text(&out.stdout));
    assert_eq!(db.fingerprint("mindcare"), live);

    // A dump whose rows break a foreign key fails verify, naming the key.
    let b = json_backup(&db, "mindcare", &["--compress", "none"]);
    let key = b["key"].as_str().unwrap();
    let live = db.fingerprint("mindcare");
    let dump = std::fs::read_to_string(db.storage().join(key)).unwrap();
    std::fs::write(db.storage().join(key), orphan_first_patient_ref(&dump)).unwrap();
    std::fs::remove_file(db.storage().join(format!("{key}.manifest.json"))).unwrap();
    let out = db
        .cmd()
        .args(["verify", "--tenant", "mindcare", "--id", &b["id"].to_string()])
        .output()
        .unwrap();
    assert_fails(&out, 1, "reference missing appointments_patient rows");
    assert_eq!(db.fingerprint("mindcare"), live);

    db.sql("ALTER TABLE mindcare.appointments_patient DROP COLUMN notes");
    let live = db.fingerprint("mindcare");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "mindcare", "--latest", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("column mindcare.appointments_patient.notes is missing") && stderr.contains("migrations"),
        "{stderr}"
    );
    assert_eq!(db.fingerprint("mindcare"), live, "nothing changed");
}

#[test]
fn auto_falls_back_to_json_when_pg_dump_is_older_or_missing_and_sql_refuses() {
    let db = TestDb::new();
    let old = db.dir.path().join("old_pg_dump");
    std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.9'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let missing = db.dir.path().join("no_such_pg_dump");
    for pg_dump in [&old, &missing] {
        let out = db
            .cmd()
            .env("PG_DUMP", pg_dump)
            .args(["--json", "backup", "--tenant", "mindcare"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("using the native json format"),
            "{}",
            text(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v[0]["backup"]["key"]
            .as_str()
            .unwrap()
            .contains("/backup-json-mindcare-"));

        let out = db
            .cmd()
            .env("PG_DUMP", pg_dump)
            .args(["backup", "--tenant", "mindcare", "--format", "sql"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("postgresql-client-15") || stderr.contains("12.9"),
            "{stderr}"
        );
    }
    // A restore of the json backup needs no pg_dump either.
    let out = db
        .cmd()
        .env("PG_DUMP", &missing)
        .args(["restore", "--tenant", "mindcare", "--latest", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn doctor_reports_a_healthy_and_a_broken_setup() {
    let db = TestDb::new();
    let out = db.cmd().args(["doctor"]).output().unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "database",
        "tenants",
        "pooler",
        "session",
        "pg_dump found",
        "pg_dump used",
        "storage",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(line)),
            "{line}: {stdout}"
        );
    }
    assert!(stdout.contains("3 tenants in public.tenants_clinic"), "{stdout}");
    // Each pg_dump once (Debian's /usr/bin wrapper reports the same version as the real one), and
    // the storage probe leaves nothing behind, not even an empty folder.
    let found = stdout.lines().find(|l| l.contains("pg_dump found")).unwrap();
    let versions: Vec<&str> = found.split(", ").map(|d| d.rsplit(' ').next().unwrap()).collect();
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(versions, unique, "{found}");
    let left: Vec<_> = std::fs::read_dir(db.storage())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // Storage that cannot be written, and a pg_dump too old: storage fails, json is the way out.
    std::fs::write(db.dir.path().join("blocked"), b"a file, not a directory").unwrap();
    let old = fake_pg_dump(db.dir.path(), "exit 1");
    std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.1'\n").unwrap();
    let out = db
        .cmd()
        .env("BACKUP_STORAGE", db.dir.path().join("blocked"))
        .env("PG_DUMP", &old)
        .args(["doctor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("storage")),
        "{stdout}"
    );
    assert!(stdout.contains("native json"), "{stdout}");

    let out = db
        .cmd()
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:{}@127.0.0.1:1/x", cluster().password),
        )
        .args(["doctor"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout)
        .lines()
        .any(|l| l.starts_with("FAIL") && l.contains("database")));
}

#[test]
fn pg_dump_is_chosen_among_fakes_on_path_reporting_older_and_newer_versions() {
    let db = TestDb::new();
    let server: u32 = db
        .sql("SELECT current_setting('server_version_num')::int / 10000")
        .parse()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let fake_dir = |name: &str, version: &str| {
        let dir = db.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pg_dump");
        std::fs::write(&p, format!("#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    };
    let older = fake_dir("older", &format!("{}.9", server - 1));
    let newest = fake_dir("newest", "99.0");
    let path = std::env::join_paths(
        [older.clone(), newest.clone()]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let out = db
        .cmd()
        .env_remove("PG_DUMP")
        .env("PATH", &path)
        .args(["--json", "doctor"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["detail"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} check in {checks}"))
    };
    let found = detail("pg_dump found");
    assert!(
        found.contains(&format!("{} {}.9", older.join("pg_dump").display(), server - 1))
            && found.contains(&format!("{} 99.0", newest.join("pg_dump").display())),
        "{found}"
    );
    // The matching one the tests' server came with beats both: lowest major >= the server's.
    let used = detail("pg_dump used");
    assert!(
        used.contains(&format!("({server}.")) && !used.contains("older") && !used.contains("newest"),
        "{used}"
    );
    // A backup with that PATH really dumps with the matching pg_dump (sql, not the json fallback).
    let out = db
        .cmd()
        .env_remove("PG_DUMP")
        .env("PATH", &path)
        .args(["--json", "backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v[0]["backup"]["key"]
            .as_str()
            .unwrap()
            .contains("/backup-sql-mindcare-"),
        "{v}"
    );
}
