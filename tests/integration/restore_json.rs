//! Issue #22: a json backup is untrusted input exactly as a plain dump is. Its structure passes the
//! same guard one statement at a time; its schema must be the tenant's; `--into` never names a
//! tenant; a restore keeps the previous schema, names what the backup lacks, rebuilds a dropped
//! tenant's history from the bucket; and no error prints row data.

use serde_json::Value;

use crate::support::*;

/// A json backup of `tenant`, uncompressed: its key and its lines.
fn json_backup(db: &TestDb, tenant: &str) -> (String, Vec<String>) {
    let b = db.backup(&["--tenant", tenant, "--format", "json", "--compress", "none"]);
    let key = b["key"].as_str().unwrap().to_string();
    let lines = object_text(db, &key).lines().map(str::to_string).collect();
    (key, lines)
}

/// The lines with one more statement at the start of the structure's pre-data.
fn with_statement(lines: &[String], sql: &str) -> String {
    let mut out = lines.to_vec();
    let i = out.iter().position(|l| l.starts_with("[\"structure\"")).unwrap();
    let mut marker: Value = serde_json::from_str(&out[i]).unwrap();
    let pre = marker[1]["pre_data"].as_array_mut().unwrap();
    pre.insert(1, serde_json::json!({"object": "hostile", "sql": sql}));
    out[i] = serde_json::to_string(&marker).unwrap();
    out.join("\n") + "\n"
}

/// What a restore must never change outside the tenant.
fn outside(db: &TestDb) -> String {
    db.sql(
        "SELECT concat_ws(' | ', \
           (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname NOT LIKE 'bienestar%'), \
           (SELECT string_agg(schema_name || ':' || backup_schedule, ',' ORDER BY id) FROM public.tenants_clinic), \
           (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'), \
           (SELECT coalesce(array_to_string(rolconfig, ','), '') FROM pg_roles WHERE rolname = current_user), \
           (SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf'), \
           (SELECT count(*) FROM mindcare.appointments_patient))",
    )
}

#[test]
fn a_json_structure_runs_only_what_the_guard_allows_one_statement_at_a_time() {
    let db = TestDb::new();
    let (key, lines) = json_backup(&db, "bienestar");
    let marker = std::env::temp_dir().join(format!("tb-pwned-{}", db.name));
    let corpus = [
        ("DROP SCHEMA mindcare CASCADE", "mindcare"),
        ("COMMIT", "transaction control"),
        (
            "CREATE TABLE bienestar.x (a int); DROP SCHEMA mindcare CASCADE",
            "several",
        ),
        (
            "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
            "public",
        ),
        ("ALTER ROLE CURRENT_USER SET statement_timeout = 1", "ALTER ROLE"),
        ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
        ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM"),
        ("SET ROLE NONE", "role"),
        ("RESET ROLE", "role"),
        ("SET SESSION AUTHORIZATION DEFAULT", "session_authorization"),
        (
            "CREATE OPERATOR bienestar.@@ (FUNCTION = pg_catalog.pg_terminate_backend, RIGHTARG = integer)",
            "CREATE OPERATOR",
        ),
        (
            "CREATE MATERIALIZED VIEW bienestar.m AS SELECT rolname FROM pg_catalog.pg_authid",
            "pg_authid",
        ),
        ("\\! touch /tmp/tb-pwned", "meta-command"),
    ];
    let program = format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", marker.display());
    // Every statement through the library: the structure's check (one statement at a time through
    // guard::single, as the loader does before it sends each one).
    let scope = guard_scope(&db, "bienestar");
    for (sql, why) in corpus.iter().copied().chain([(program.as_str(), "COPY")]) {
        let dump = with_statement(&lines, sql);
        let marker_line = dump.lines().find(|l| l.starts_with("[\"structure\"")).unwrap();
        let structure: tenant_backup::jsonl::Structure =
            serde_json::from_value(serde_json::from_str::<Value>(marker_line).unwrap()[1].clone()).unwrap();
        let e = structure.check(&scope).unwrap_err();
        assert!(e.contains("hostile") && e.contains(why), "{sql}: {e}");
    }
    // A few through the binary, restore and verify, with the schema there and dropped.
    let corpus = [corpus[0], corpus[4], corpus[7], corpus[10], (program.as_str(), "COPY")];
    let before = outside(&db);
    let live = db.fingerprint("bienestar");
    for dropped in [false, true] {
        if dropped {
            // The disaster-recovery case: the tenant's schema is gone.
            db.sql("DROP SCHEMA bienestar CASCADE");
        }
        for (sql, why) in corpus {
            tamper(&db, &key, with_statement(&lines, sql).as_bytes());
            for args in [
                vec!["restore", "--tenant", "bienestar", "--file", &key, "--yes"],
                vec!["verify", "--tenant", "bienestar"],
            ] {
                let out = db.cmd().args(&args).output().unwrap();
                let stderr = text(&out.stderr);
                assert_eq!(out.status.code(), Some(1), "{sql} ({}): {stderr}", args[0]);
                assert!(
                    stderr.contains("refused at hostile") && stderr.contains(why),
                    "{sql} ({}): the statement and why are named:\n{stderr}",
                    args[0]
                );
                assert!(!stderr.contains("restored "), "{sql}: {stderr}");
                assert_eq!(outside(&db), before, "{sql} ({}): something outside changed", args[0]);
                assert!(!marker.exists(), "{sql}: a program ran on the database host");
                if dropped {
                    assert!(
                        !db.schemas().split(',').any(|s| s == "bienestar"),
                        "{sql}: {}",
                        db.schemas()
                    );
                } else {
                    assert_eq!(db.fingerprint("bienestar"), live, "{sql} ({})", args[0]);
                }
            }
        }
    }
}

#[test]
fn a_json_backup_of_another_tenant_is_refused_whatever_its_name() {
    let db = TestDb::new();
    let (key, _) = json_backup(&db, "mindcare");
    let live = db.fingerprint("bienestar");
    // Copied into bienestar's folder under a bienestar name, with and without its manifest.
    let name = key.rsplit('/').next().unwrap().replace("mindcare", "bienestar");
    let copy = format!("bienestar/{name}");
    std::fs::create_dir_all(db.storage().join("bienestar")).unwrap();
    std::fs::copy(db.storage().join(&key), db.storage().join(&copy)).unwrap();
    for with_manifest in [false, true] {
        if with_manifest {
            let m = std::fs::read_to_string(db.storage().join(format!("{key}.manifest.json"))).unwrap();
            let m = m.replace(&key, &copy).replace("\"mindcare\"", "\"bienestar\"");
            std::fs::write(db.storage().join(format!("{copy}.manifest.json")), m).unwrap();
        }
        for args in [
            vec!["restore", "--tenant", "bienestar", "--file", &copy, "--yes"],
            vec![
                "restore",
                "--tenant",
                "bienestar",
                "--file",
                &copy,
                "--yes",
                "--drop-previous",
            ],
        ] {
            let out = db.cmd().args(&args).output().unwrap();
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "manifest {with_manifest}: {stderr}");
            assert!(stderr.contains("is of schema mindcare, not bienestar"), "{stderr}");
            assert_eq!(db.fingerprint("bienestar"), live, "bienestar got another clinic's rows");
        }
    }
}

#[test]
fn into_never_names_a_tenant_even_one_whose_schema_is_missing() {
    let db = TestDb::new();
    let (key, _) = json_backup(&db, "bienestar");
    db.sql("DROP SCHEMA mindcare CASCADE");
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "bienestar",
            "--file",
            &key,
            "--into",
            "mindcare",
            "--yes",
        ])
        .output()
        .unwrap();
    assert_fails(&out, 2, "is a tenant's schema name");
    assert!(!db.schemas().split(',').any(|s| s == "mindcare"), "{}", db.schemas());
    // A new name works for json backups too, leaving the tenant as it is.
    let live = db.fingerprint("bienestar");
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "bienestar",
            "--file",
            &key,
            "--into",
            "bienestar_copy",
            "--yes",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.fingerprint("bienestar"), live);
    assert_eq!(db.data("bienestar_copy"), db.data("bienestar"));
}

#[test]
fn a_json_restore_keeps_the_previous_schema_and_names_the_tables_it_lacks() {
    let db = TestDb::new();
    let (key, _) = json_backup(&db, "bienestar");
    let backed_up = db.data("bienestar");
    db.sql("CREATE TABLE bienestar.added_later (id int); INSERT INTO bienestar.added_later VALUES (7); DELETE FROM bienestar.appointments_patient_tags");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--file", &key, "--yes"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NOT IN THE BACKUP: added_later"),
        "the plan names it:\n{stderr}"
    );
    let kept = db.sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bienestar__pre_restore_%'");
    assert!(!kept.is_empty(), "the previous schema is kept");
    assert!(text(&out.stdout).contains(&kept), "{}", text(&out.stdout));
    assert_eq!(db.sql(&format!("SELECT id FROM {}.added_later", quote(&kept))), "7");
    assert_eq!(db.data("bienestar"), backed_up);
}

#[test]
fn a_dropped_tenant_restored_from_json_gets_its_history_back_from_the_bucket() {
    let db = TestDb::new();
    let (first, _) = json_backup(&db, "bienestar");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (latest, _) = json_backup(&db, "bienestar");
    db.sql("DROP SCHEMA bienestar CASCADE");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--latest", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paths = db.sql("SELECT string_agg(file_path, ',' ORDER BY file_path) FROM bienestar.backups_backuprecord");
    for key in [&first, &latest] {
        assert!(paths.contains(key.as_str()), "{key} is in the history: {paths}");
    }
    // So the weekly cleanup does not take the object restored from for an orphan.
    let out = db.cmd().args(["cleanup", "--orphans", "--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(&latest), "{}", text(&out.stdout));
}

#[test]
fn json_load_errors_name_the_table_but_never_row_data() {
    let db = TestDb::new();
    let (key, mut lines) = json_backup(&db, "bienestar");
    let start = lines
        .iter()
        .position(|l| l.contains("\"name\":\"appointments_patient\"") && l.starts_with("[\"table\""))
        .unwrap();
    let mut row: Value = serde_json::from_str(&lines[start + 1]).unwrap();
    let (document, last_name) = (
        row["document_id"].as_str().unwrap().to_string(),
        row["last_name"].as_str().unwrap().to_string(),
    );
    row["first_name"] = Value::Null;
    lines[start + 1] = serde_json::to_string(&row).unwrap();
    tamper(&db, &key, (lines.join("\n") + "\n").as_bytes());
    let live = db.fingerprint("bienestar");
    for args in [
        vec!["restore", "--tenant", "bienestar", "--file", &key, "--yes"],
        vec!["verify", "--tenant", "bienestar"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", args[0]);
        assert!(stderr.contains("appointments_patient"), "{}: {stderr}", args[0]);
        for private in [&document, &last_name] {
            assert!(
                !stderr.contains(private.as_str()),
                "{}: {private} leaked:\n{stderr}",
                args[0]
            );
        }
        assert_eq!(db.fingerprint("bienestar"), live);
    }
}
