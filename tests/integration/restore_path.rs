//! `restore --path FILE` and `verify --path FILE` (#25): a backup on the operator's disk, in every
//! format the tool reads (its own objects with or without the manifest beside them, encrypted
//! ones with the identity, the application's SQL and dumpdata backups), with the same plan and
//! checks as an object from the bucket; hostile and mismatched files are refused, nothing touched.

use std::path::{Path, PathBuf};

use crate::support::*;

/// A folder of the operator's, outside the bucket.
fn disk(db: &TestDb) -> PathBuf {
    let d = db.dir.path().join("downloads");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The bucket object `key` copied to the operator's disk, with its manifest when `manifest`.
fn to_disk(db: &TestDb, key: &str, manifest: bool) -> PathBuf {
    let name = key.rsplit('/').next().unwrap();
    let to = disk(db).join(name);
    std::fs::copy(db.storage().join(key), &to).unwrap();
    if manifest {
        std::fs::copy(
            db.storage().join(format!("{key}.manifest.json")),
            disk(db).join(format!("{name}.manifest.json")),
        )
        .unwrap();
    }
    to
}

fn run(mut cmd: assert_cmd::Command, args: &[&str], path: &Path) -> std::process::Output {
    let out = cmd.args(args).arg("--path").arg(path).output().unwrap();
    assert_no_secret(&out);
    out
}

fn restore(db: &TestDb, tenant: &str, path: &Path, extra: &[&str]) -> std::process::Output {
    run(
        db.cmd(),
        &[&["restore", "--tenant", tenant, "--yes"][..], extra].concat(),
        path,
    )
}

fn vandalize(db: &TestDb) {
    db.sql(
        "DELETE FROM bienestar.appointments_appointment WHERE id % 3 = 0; \
         UPDATE bienestar.appointments_patient SET first_name = 'changed' WHERE id < 50",
    );
}

#[test]
fn the_tools_own_backups_restore_from_a_file_with_or_without_their_manifest() {
    let db = TestDb::new();
    let before = db.data("bienestar");
    for (format, manifest) in [
        (&["--format", "sql"][..], true),
        (&["--format", "custom"][..], true),
        (&["--format", "json"][..], true),
        (&["--format", "sql"][..], false),
        (&["--format", "json", "--compress", "gzip"][..], false),
    ] {
        let b = db.backup(&[&["--tenant", "bienestar"][..], format].concat());
        let key = b["key"].as_str().unwrap();
        let path = to_disk(&db, key, manifest);
        vandalize(&db);
        let what = format!("{format:?} manifest={manifest}");
        let out = run(db.cmd(), &["verify", "--tenant", "bienestar"], &path);
        assert!(out.status.success(), "verify {what}: {}", text(&out.stderr));
        let out = restore(&db, "bienestar", &path, &["--drop-previous"]);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{what}: {stderr}");
        assert!(stderr.contains("restore plan:"), "the same plan: {stderr}");
        if manifest {
            assert!(stderr.contains("checksum ok"), "{what}: {stderr}");
        }
        assert_eq!(db.data("bienestar"), before, "{what}");
    }
}

#[test]
fn the_applications_sql_and_dumpdata_backups_restore_from_a_file() {
    let db = TestDb::new();
    let before = db.data("bienestar");
    // The application's SQL backup: pg_dump --inserts, plain, named as it named them.
    let sql = disk(&db).join("backup-sql-bienestar-2025-01-10-120000.sql");
    let dumped = std::process::Command::new(cluster().bin("pg_dump"))
        .args(["--inserts", "--no-owner", "--schema", "bienestar", "-f"])
        .arg(&sql)
        .arg(db.url())
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{}", text(&dumped.stderr));
    vandalize(&db);
    let out = restore(&db, "bienestar", &sql, &["--drop-previous"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.data("bienestar"), before);

    // The application's dumpdata backup, as its download button handed it out.
    let json = disk(&db).join("backup-json-clinica_demo-2025-01-10-120000.json");
    std::fs::copy(fixture().parent().unwrap().join("dumpdata/clinica_demo.json"), &json).unwrap();
    let out = run(db.cmd(), &["verify", "--tenant", "clinica_demo"], &json);
    assert!(out.status.success(), "{}", text(&out.stderr));
    db.sql("DELETE FROM clinica_demo.appointments_appointment");
    let out = restore(&db, "clinica_demo", &json, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        db.sql("SELECT count(*) FROM clinica_demo.appointments_appointment"),
        "120"
    );
}

#[test]
fn an_encrypted_backup_restores_from_a_file_with_its_manifest_and_the_identity() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .args(["keys", "init"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keys = text(&out.stdout);
    let get = |k: &str| {
        keys.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let (identity, recipient, signing) = (
        get("BACKUP_AGE_IDENTITY"),
        get("BACKUP_AGE_RECIPIENT"),
        get("BACKUP_SIGNING_KEY"),
    );
    let out = db
        .cmd()
        .env("BACKUP_AGE_RECIPIENT", &recipient)
        .env("BACKUP_SIGNING_KEY", &signing)
        .args(["--json", "--no-progress", "backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = b[0]["backup"]["key"].as_str().unwrap().to_string();
    assert!(key.ends_with(".age"), "{key}");
    let before = db.data("bienestar");
    let path = to_disk(&db, &key, true);
    vandalize(&db);
    let reader = || {
        let mut c = db.cmd();
        c.env("BACKUP_SIGNING_KEY", &signing);
        c
    };
    // Without the identity: refused, saying what is needed.
    let out = run(reader(), &["restore", "--tenant", "bienestar", "--yes"], &path);
    assert_fails(&out, 2, "BACKUP_AGE_IDENTITY");
    let mut with_identity = reader();
    with_identity.env("BACKUP_AGE_IDENTITY", &identity);
    let out = run(with_identity, &["restore", "--tenant", "bienestar", "--yes"], &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains(&identity));
    assert_eq!(db.data("bienestar"), before);
}

#[test]
fn hostile_or_mismatched_files_are_refused_and_nothing_is_touched() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "bienestar", "--compress", "none"]);
    let key = b["key"].as_str().unwrap().to_string();
    let other = db.backup(&["--tenant", "mindcare"]);
    let other_key = other["key"].as_str().unwrap().to_string();
    db.sql("UPDATE bienestar.appointments_patient SET first_name = 'live' WHERE id = 1");
    let schemas = db.schemas();
    let live = (db.fingerprint("bienestar"), db.fingerprint("mindcare"));
    let untouched = |what: &str| {
        assert_eq!(db.schemas(), schemas, "{what}: schemas changed");
        assert_eq!(
            (db.fingerprint("bienestar"), db.fingerprint("mindcare")),
            live,
            "{what}: data changed"
        );
    };

    // A changed file whose manifest is beside it: the checksum catches it.
    let path = to_disk(&db, &key, true);
    let original = std::fs::read(&path).unwrap();
    let mut changed = original.clone();
    let mid = changed.len() / 2;
    changed[mid] ^= 0x55;
    std::fs::write(&path, &changed).unwrap();
    let out = restore(&db, "bienestar", &path, &[]);
    assert_fails(&out, 1, "does not match its manifest");
    untouched("changed");

    // A manifest beside it that is another backup's.
    std::fs::write(&path, &original).unwrap();
    let renamed = disk(&db).join("backup-sql-bienestar-2020-01-01-000000.sql");
    std::fs::copy(&path, &renamed).unwrap();
    std::fs::copy(
        disk(&db).join(format!("{}.manifest.json", path.file_name().unwrap().to_str().unwrap())),
        disk(&db).join("backup-sql-bienestar-2020-01-01-000000.sql.manifest.json"),
    )
    .unwrap();
    let out = restore(&db, "bienestar", &renamed, &[]);
    assert_fails(&out, 1, "is the manifest of");
    untouched("another's manifest");

    // Another tenant's backup: named, with the way to do it anyway.
    let theirs = to_disk(&db, &other_key, true);
    let out = restore(&db, "bienestar", &theirs, &[]);
    assert_fails(&out, 2, "--from-tenant mindcare");
    untouched("another tenant's");

    // A file whose name says nothing, without a manifest: which tenant's is asked.
    let anon = disk(&db).join("clinic.sql");
    std::fs::write(&anon, &original).unwrap();
    let out = restore(&db, "bienestar", &anon, &[]);
    assert_fails(&out, 2, "--from-tenant");
    untouched("anonymous");

    // A plain dump rewritten to reach another tenant: the guard refuses it before anything runs.
    let text_dump = String::from_utf8(original.clone()).unwrap();
    let hostile = insert_after(&text_dump, "CREATE SCHEMA bienestar;", "DROP SCHEMA mindcare CASCADE;");
    let hostile_path = disk(&db).join("backup-sql-bienestar-2021-01-01-000000.sql");
    std::fs::write(&hostile_path, hostile).unwrap();
    for cmd in ["verify", "restore"] {
        let out = run(
            db.cmd(),
            &[cmd, "--tenant", "bienestar", "--yes"][..if cmd == "verify" { 3 } else { 4 }],
            &hostile_path,
        );
        assert_fails(&out, 1, "mindcare");
        untouched(cmd);
    }

    // Not a file, or missing: the operator is told.
    let out = restore(&db, "bienestar", &disk(&db), &[]);
    assert_fails(&out, 2, "is not a regular file");
    let out = restore(&db, "bienestar", &disk(&db).join("missing.sql"), &[]);
    assert_fails(&out, 2, "missing.sql");
    untouched("not a file");
}

/// The application's download button (#25): it served `file_path` straight from the bucket, which
/// now holds compressed (and maybe encrypted) objects. The one line it runs instead writes the
/// readable dump to stdout; the row's `file_name` is the stored object's name and `file_size` its
/// stored size, so the application's list stays truthful about what the bucket holds.
#[test]
fn the_download_button_serves_a_readable_dump_and_the_rows_tell_the_truth() {
    let db = TestDb::new();
    for format in ["sql", "json"] {
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let id = b["id"].as_i64().unwrap();
        let key = b["key"].as_str().unwrap();
        let out = db
            .cmd()
            .args([
                "download",
                "--tenant",
                "bienestar",
                "--id",
                &id.to_string(),
                "--decompress",
                "-o",
                "-",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let readable = text(&out.stdout);
        assert!(readable.contains("Gómez-Ruiz"), "{format}: the readable dump");
        let row = db.sql(&format!(
            "SELECT file_name || ' ' || file_path || ' ' || file_size FROM bienestar.backups_backuprecord WHERE id = {id}"
        ));
        let stored = std::fs::metadata(db.storage().join(key)).unwrap().len();
        assert_eq!(
            row,
            format!("{} {key} {stored}", key.rsplit('/').next().unwrap()),
            "{format}"
        );
        assert!(
            key.ends_with(".zst") && (stored as usize) < readable.len(),
            "{format}: stored compressed"
        );
        // The file the button hands out restores with --path, as it is.
        let saved = disk(&db).join(key.rsplit('/').next().unwrap().trim_end_matches(".zst"));
        std::fs::write(&saved, &out.stdout).unwrap();
        let out = run(db.cmd(), &["verify", "--tenant", "bienestar"], &saved);
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
    }
}
