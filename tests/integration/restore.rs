//! restore and verify on the fixture, for plain and custom formats.

use crate::support::*;

fn backup(db: &TestDb, tenant: &str, extra: &[&str]) -> (i64, String) {
    let b = db.backup(&[&["--tenant", tenant][..], extra].concat());
    (b["id"].as_i64().unwrap(), b["key"].as_str().unwrap().to_string())
}

/// Every table's fingerprint but the history's, which restores carry forward on purpose.
fn schemas(db: &TestDb) -> String {
    db.sql("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema'")
}

fn vandalize(db: &TestDb) {
    db.sql(
        "DELETE FROM bienestar.appointments_appointment WHERE id % 3 = 0; \
         UPDATE bienestar.appointments_patient SET first_name = 'changed' WHERE id < 50; \
         DROP TABLE bienestar.appointments_patient_tags",
    );
}

fn restore_round_trip(format: &[&str]) {
    let db = TestDb::new();
    let before = db.data("bienestar");
    let (first, _) = backup(&db, "bienestar", format);
    vandalize(&db);
    assert_ne!(db.data("bienestar"), before);
    let (second, _) = backup(&db, "bienestar", format);

    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--id", &first.to_string(), "--yes"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("bienestar__pre_restore_"),
        "names the kept schema: {stdout}"
    );

    assert_eq!(db.data("bienestar"), before, "data identical to the backup");
    // History: the two legacy rows, and both backups, the second made after the first.
    let ids = db.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM bienestar.backups_backuprecord");
    assert_eq!(ids, format!("1,2,{first},{second}"));
    let kept = db.sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bienestar__pre_restore_%'");
    assert!(!kept.is_empty());
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM {}.appointments_patient WHERE first_name = 'changed'",
            quote(&kept)
        )),
        "49"
    );
    // The next backup gets a fresh id.
    let (third, _) = backup(&db, "bienestar", format);
    assert!(third > second, "{third} > {second}");
    // Django's tables are intact: a user still logs in, migrations are all there.
    assert_eq!(db.sql("SELECT count(*) > 0 FROM bienestar.django_migrations"), "t");
}

#[test]
fn restore_plain_brings_back_the_data_and_keeps_the_history() {
    restore_round_trip(&[]);
}

#[test]
fn restore_custom_brings_back_the_data_and_keeps_the_history() {
    restore_round_trip(&["--format", "custom"]);
}

#[test]
fn restore_latest_with_drop_previous_leaves_no_old_schema() {
    let db = TestDb::new();
    let before = db.data("mindcare");
    backup(&db, "mindcare", &["--compress", "gzip"]);
    db.sql("DELETE FROM mindcare.appointments_appointment");
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "mindcare",
            "--latest",
            "--yes",
            "--drop-previous",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.data("mindcare"), before);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'mindcare__pre%'"),
        "0"
    );
}

/// A backup whose object is replaced by `bytes`, manifest removed (like an old application backup).
fn legacy_object(db: &TestDb, key: &str, bytes: Vec<u8>) {
    std::fs::write(db.storage().join(key), bytes).unwrap();
    std::fs::remove_file(db.storage().join(format!("{key}.manifest.json"))).unwrap();
}

#[test]
fn bad_objects_leave_the_live_schema_untouched() {
    for format in [&[][..], &["--format", "custom"][..], &["--format", "json"][..]] {
        let db = TestDb::new();
        let (_, key) = backup(&db, "bienestar", &[&["--compress", "none"][..], format].concat());
        db.sql("UPDATE bienestar.appointments_patient SET first_name = 'live' WHERE id = 1");
        let live = db.fingerprint("bienestar");
        let all_schemas = schemas(&db);
        let original = std::fs::read(db.storage().join(&key)).unwrap();
        let try_restore = |what: &str| {
            let out = db
                .cmd()
                .args(["restore", "--tenant", "bienestar", "--file", &key, "--yes"])
                .output()
                .unwrap();
            assert_no_secret(&out);
            assert_eq!(out.status.code(), Some(1), "{what} {format:?}: {}", text(&out.stderr));
            assert_eq!(
                db.fingerprint("bienestar"),
                live,
                "{what} {format:?}: live schema changed"
            );
            assert_eq!(schemas(&db), all_schemas, "{what} {format:?}: schemas changed");
            text(&out.stderr)
        };

        // Corrupted: one byte flipped, caught by the manifest's checksum before anything runs.
        let mut corrupt = original.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0x55;
        std::fs::write(db.storage().join(&key), &corrupt).unwrap();
        assert!(try_restore("corrupt").contains("does not match its manifest"));

        // Truncated, with no manifest to catch it: the restore must not commit.
        legacy_object(&db, &key, original[..original.len() * 2 / 3].to_vec());
        try_restore("truncated");

        if format.is_empty() {
            // A dump that fails halfway: a statement that errors in the middle.
            let text_dump = String::from_utf8(original.clone()).unwrap();
            let at = text_dump.find("CREATE TABLE bienestar.appointments_tag").unwrap();
            // (A statement the dump check lets through: it fails only when it runs.)
            let broken = format!(
                "{}CREATE TABLE bienestar.broken (x int DEFAULT 1/0);\nINSERT INTO bienestar.broken DEFAULT VALUES;\n{}",
                &text_dump[..at],
                &text_dump[at..]
            );
            std::fs::write(db.storage().join(&key), broken).unwrap();
            let stderr = try_restore("failing");
            assert!(
                stderr.contains("division by zero") && stderr.contains("rolled back"),
                "{stderr}"
            );
        }
        if format.contains(&"json") {
            // Rows that break a foreign key: caught when the key is added back after the load.
            let text_dump = String::from_utf8(original.clone()).unwrap();
            let orphaned = orphan_first_patient_ref(&text_dump);
            std::fs::write(db.storage().join(&key), orphaned).unwrap();
            let stderr = try_restore("orphaned rows");
            assert!(
                stderr.contains("foreign key") && stderr.contains("nothing was changed"),
                "{stderr}"
            );
            // A value the column's type rejects, in the middle of a table's COPY.
            let bad_date = text_dump.replacen("\"birth_date\":\"", "\"birth_date\":\"not a date", 1);
            std::fs::write(db.storage().join(&key), bad_date).unwrap();
            let stderr = try_restore("bad value");
            // Named by its table and type, never by the value (issue #22 item 9: no row data).
            assert!(
                stderr.contains("appointments_patient")
                    && stderr.contains("type date")
                    && !stderr.contains("not a date"),
                "{stderr}"
            );
            // Cut after a complete row: no end marker.
            let cut = text_dump.find("[\"sequences\"").unwrap();
            std::fs::write(db.storage().join(&key), &text_dump[..cut]).unwrap();
            assert!(try_restore("no end marker").contains("truncated"));
        }
    }
}

#[test]
fn another_tenants_backup_is_refused_unless_named() {
    // json too (issue #28: --into and --from-tenant work for every format).
    for format in [&[][..], &["--format", "custom"][..], &["--format", "json"][..]] {
        another_tenants_backup(format);
    }
}

fn another_tenants_backup(format: &[&str]) {
    let db = TestDb::new();
    let (_, key) = backup(&db, "mindcare", format);
    let before = db.fingerprint("clinica_demo");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "clinica_demo", "--file", &key, "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "add --from-tenant mindcare");
    assert_eq!(db.fingerprint("clinica_demo"), before);

    // Named: clinica_demo gets mindcare's data and keeps its own history; mindcare is untouched.
    let mindcare = db.data("mindcare");
    let mindcare_all = db.fingerprint("mindcare");
    let history = db
        .fingerprint("clinica_demo")
        .into_iter()
        .find(|(t, _)| t == "backups_backuprecord")
        .unwrap();
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "clinica_demo",
            "--file",
            &key,
            "--from-tenant",
            "mindcare",
            "--yes",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.data("clinica_demo"), mindcare);
    assert_eq!(db.fingerprint("mindcare"), mindcare_all);
    assert_eq!(
        db.fingerprint("clinica_demo")
            .into_iter()
            .find(|(t, _)| t == "backups_backuprecord")
            .unwrap(),
        history
    );
}

#[test]
fn into_restores_a_copy_and_leaves_the_tenant_alone() {
    for format in [&[][..], &["--format", "custom"][..], &["--format", "json"][..]] {
        into_copy(format);
    }
}

fn into_copy(format: &[&str]) {
    let db = TestDb::new();
    let before = db.data("bienestar");
    backup(&db, "bienestar", format);
    db.sql("UPDATE bienestar.appointments_patient SET first_name = 'live' WHERE id = 1");
    let live = db.fingerprint("bienestar");
    let restore_copy = || {
        db.cmd()
            .args([
                "restore",
                "--tenant",
                "bienestar",
                "--latest",
                "--into",
                "bienestar_copy",
                "--yes",
            ])
            .output()
            .unwrap()
    };
    let out = restore_copy();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.fingerprint("bienestar"), live);
    assert_eq!(db.data("bienestar_copy"), before);
    // Again: the target now exists.
    let out = restore_copy();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn restore_needs_yes_off_a_terminal_and_dry_run_touches_nothing() {
    let db = TestDb::new();
    backup(&db, "bienestar", &[]);
    let all = schemas(&db);
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--latest"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "--yes");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--latest", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("restore plan:"));
    assert_eq!(schemas(&db), all);
    for args in [
        vec!["restore", "--tenant", "bienestar", "--yes"],
        vec!["restore", "--tenant", "bienestar", "--id", "999", "--yes"],
        vec!["restore", "--tenant", "nope", "--latest", "--yes"],
        vec!["restore", "--tenant", "mindcare", "--latest", "--yes"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(schemas(&db), all);
}

#[test]
fn verify_passes_on_a_good_backup_fails_on_a_tampered_one_and_leaves_no_trace() {
    let db = TestDb::new();
    let (id, key) = backup(&db, "bienestar", &[]);
    let all = schemas(&db);
    let live = db.fingerprint("bienestar");
    let out = db
        .cmd()
        .args(["verify", "--tenant", "bienestar", "--id", &id.to_string()])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("checksum ok") && stdout.contains("row counts match"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("appointments_appointment") && l.contains("1000")),
        "{stdout}"
    );
    assert_eq!(schemas(&db), all);
    assert_eq!(db.fingerprint("bienestar"), live);

    let object = db.storage().join(&key);
    let mut bytes = std::fs::read(&object).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let out = db.cmd().args(["verify", "--tenant", "bienestar"]).output().unwrap();
    assert_fails(&out, 1, "does not match its manifest");
    assert_eq!(schemas(&db), all);
}

#[test]
fn two_restores_started_in_the_same_second_both_succeed() {
    let db = TestDb::new();
    let (id, _) = backup(&db, "bienestar", &[]);
    let id = id.to_string();
    // Start both just after a second begins, so that they start within the same second.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - now.subsec_nanos() as u64 + 20_000_000,
    ));
    let args = ["restore", "--tenant", "bienestar", "--id", &id, "--yes"];
    let (a, b) = (db.spawn(&args), db.spawn(&args));
    for (n, child) in [a, b].into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "restore {n}: {}", text(&out.stderr));
    }
    let kept = db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bienestar__pre_restore_%'");
    assert_eq!(kept, "2", "each restore kept its own previous schema");
}
