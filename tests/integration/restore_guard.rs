//! Issue #22 items 3 and 4: a backup is checked by the restore's own guard before it is called OK,
//! and what pg_dump writes and psql restores (deep expressions) is checked, not refused.

use crate::support::*;

#[test]
fn a_view_chaining_many_operators_backs_up_and_restores_in_every_format() {
    let db = TestDb::new();
    let chain = vec!["id"; 60].join(" + ");
    db.sql(&format!(
        "CREATE VIEW bienestar.deep AS SELECT ({chain}) AS s FROM bienestar.appointments_patient"
    ));
    let want = db.sql("SELECT sum(s) FROM bienestar.deep");
    for format in ["sql", "json"] {
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let id = b["id"].to_string();
        let out = db
            .cmd()
            .args(["verify", "--tenant", "bienestar", "--id", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{format} verify: {}", text(&out.stderr));
        let out = db
            .cmd()
            .args([
                "restore",
                "--tenant",
                "bienestar",
                "--id",
                &id,
                "--yes",
                "--drop-previous",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{format} restore: {}", text(&out.stderr));
        assert_eq!(db.sql("SELECT sum(s) FROM bienestar.deep"), want, "{format}");
    }
}

#[test]
fn a_schema_a_restore_would_refuse_fails_its_backup_and_keeps_nothing() {
    let db = TestDb::new();
    // A function calling what no dump may call: the restore would refuse it, so the backup must.
    db.sql(
        "CREATE FUNCTION bienestar.kick() RETURNS boolean LANGUAGE sql AS 'SELECT pg_catalog.pg_terminate_backend(0)'",
    );
    let before = db.record_count("bienestar");
    for format in ["sql", "json"] {
        let out = db
            .cmd()
            .args(["backup", "--tenant", "bienestar", "--format", format])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        assert!(
            stderr.contains("pg_terminate_backend") && stderr.contains("refuse"),
            "{format}: the backup says why:\n{stderr}"
        );
        assert_eq!(
            db.record_count("bienestar"),
            before,
            "{format}: no row promises a restore"
        );
        assert!(
            !db.all_files().iter().any(|f| f.starts_with("bienestar/")),
            "{format}: nothing kept: {:?}",
            db.all_files()
        );
    }
}

#[test]
fn a_json_row_larger_than_a_restore_reads_fails_its_backup() {
    let db = TestDb::new();
    db.sql("UPDATE bienestar.appointments_patient SET notes = repeat('n', 33 * 1024 * 1024) WHERE id = (SELECT min(id) FROM bienestar.appointments_patient)");
    let before = db.record_count("bienestar");
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--format", "json"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a row of more than 32 MiB"), "{stderr}");
    assert_eq!(db.record_count("bienestar"), before, "no row promises a restore");
}
