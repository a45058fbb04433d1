//! A dropped tenant comes back (issue #12, item 4), and no history row is ever lost (item 5).

use crate::support::*;

fn key_of(b: &serde_json::Value) -> String {
    b["key"].as_str().unwrap().to_string()
}

fn history(db: &TestDb, schema: &str) -> String {
    db.sql(&format!(
        "SELECT string_agg(file_path, ',' ORDER BY file_path) FROM {}.backups_backuprecord",
        quote(schema)
    ))
}

fn restore(db: &TestDb, args: &[&str]) -> std::process::Output {
    let out = db
        .cmd()
        .args([&["restore", "--yes"][..], args].concat())
        .output()
        .unwrap();
    assert_no_secret(&out);
    out
}

#[test]
fn restore_brings_back_a_dropped_tenant_from_latest_and_from_file() {
    for format in ["sql", "custom", "json"] {
        let db = TestDb::new();
        let at_first = db.data("bienestar");
        let first = key_of(&db.backup(&["--tenant", "bienestar", "--format", format]));
        db.sql("DELETE FROM bienestar.appointments_appointment WHERE id % 2 = 0");
        let at_second = db.data("bienestar");
        let second = key_of(&db.backup(&["--tenant", "bienestar", "--format", format]));
        let legacy = "/var/backups/clinic/bienestar/bienestar_20250603_154512.sql.gz";
        assert!(history(&db, "bienestar").contains(legacy));

        db.sql("DROP SCHEMA bienestar CASCADE");
        let out = restore(&db, &["--tenant", "bienestar", "--latest"]);
        assert!(out.status.success(), "{format} --latest: {}", text(&out.stderr));
        assert_eq!(
            db.data("bienestar"),
            at_second,
            "{format}: --latest is the second backup"
        );
        // The dump's own history (the legacy rows and the first backup), and the second backup,
        // which only the bucket's manifests know about.
        let h = history(&db, "bienestar");
        assert!(
            h.contains(legacy) && h.contains(&first) && h.contains(&second),
            "{format}: {h}"
        );
        // The next backup gets a fresh id.
        let third = db.backup(&["--tenant", "bienestar", "--format", format]);
        let max: i64 = db
            .sql("SELECT max(id) FROM bienestar.backups_backuprecord")
            .parse()
            .unwrap();
        assert_eq!(third["id"].as_i64(), Some(max), "{format}");

        // Only the history table gone: --file of the first backup.
        db.sql("DROP TABLE bienestar.backups_backuprecord");
        let out = restore(&db, &["--tenant", "bienestar", "--file", &first]);
        assert!(out.status.success(), "{format} --file: {}", text(&out.stderr));
        assert_eq!(db.data("bienestar"), at_first, "{format}: --file is the first backup");

        // --into, with the tenant's schema gone.
        db.sql("DROP SCHEMA bienestar CASCADE");
        let out = restore(&db, &["--tenant", "bienestar", "--latest", "--into", "bienestar_copy"]);
        assert!(out.status.success(), "{format} --into: {}", text(&out.stderr));
        assert!(!db.schemas().split(',').any(|s| s == "bienestar"), "{format}");

        // --from-tenant, into a tenant whose schema is gone.
        let mindcare = key_of(&db.backup(&["--tenant", "mindcare", "--format", format]));
        db.sql("DROP SCHEMA clinica_demo CASCADE");
        let out = restore(
            &db,
            &[
                "--tenant",
                "clinica_demo",
                "--file",
                &mindcare,
                "--from-tenant",
                "mindcare",
            ],
        );
        assert!(out.status.success(), "{format} --from-tenant: {}", text(&out.stderr));
        assert_eq!(db.data("clinica_demo"), db.data("mindcare"), "{format}");
    }
}

#[test]
fn restore_of_a_dropped_tenant_from_a_json_backup_recreates_it() {
    // The native format carries the schema's structure (format v3, issue #15), so a dropped tenant
    // comes back from `--latest` (found in the bucket) without migrations. (A v2 dump, rows only,
    // says it needs the tables: native::a_version_2_dump_still_loads_into_the_existing_tables.)
    let db = TestDb::new();
    let before = db.data("bienestar");
    db.backup(&["--tenant", "bienestar", "--format", "json"]);
    db.sql("DROP SCHEMA bienestar CASCADE");
    let out = restore(&db, &["--tenant", "bienestar", "--latest"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.data("bienestar"), before);
}

#[test]
fn restore_keeps_every_history_row_the_dump_lacks_and_latest_ignores_future_rows() {
    for format in ["sql", "json"] {
        let db = TestDb::new();
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let key = key_of(&b);
        let backed_up = db.data("bienestar");
        // Rows the dump does not hold: one the application wrote with an old date, one from the
        // future (a clock gone wrong), one ordinary later backup.
        db.sql(
            "INSERT INTO bienestar.backups_backuprecord (id, file_name, file_path, file_size, backup_type, created_at) VALUES \
             (50, 'old.sql.gz', '/var/backups/clinic/bienestar/old.sql.gz', 10, 'manual', '2020-01-01 00:00+00'), \
             (51, 'future.sql', 'bienestar/future.sql', 10, 'manual', '2099-01-01 00:00+00')",
        );
        let later = key_of(&db.backup(&["--tenant", "bienestar", "--format", format]));
        std::fs::remove_file(db.storage().join(&later)).unwrap();
        std::fs::remove_file(db.storage().join(format!("{later}.manifest.json"))).unwrap();
        db.sql(&format!(
            "DELETE FROM bienestar.backups_backuprecord WHERE file_path = '{later}'; \
             DELETE FROM bienestar.appointments_appointment WHERE id < 100"
        ));
        let before = history(&db, "bienestar");

        // --latest is the newest backup not dated in the future: the first one.
        let out = restore(&db, &["--tenant", "bienestar", "--latest"]);
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&key), "{format}: {}", text(&out.stdout));
        assert_eq!(db.data("bienestar"), backed_up, "{format}");
        assert_eq!(history(&db, "bienestar"), before, "{format}: every history row is kept");
        assert_eq!(
            db.sql(
                "SELECT string_agg(id::text, ',' ORDER BY id) FROM bienestar.backups_backuprecord WHERE id IN (50, 51)"
            ),
            "50,51",
            "{format}: kept by id"
        );
    }
}
