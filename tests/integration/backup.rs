use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// Loads a stored dump into an empty database and returns that database.
fn restore_into_empty(db: &TestDb, key: &str) -> TestDb {
    let target = TestDb::empty();
    let path = db.storage().join(key);
    if key.ends_with(".dump") {
        let out = std::process::Command::new(cluster().bin("pg_restore"))
            .args(["--no-owner", "--exit-on-error", "-d", &target.url()])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_restore: {}", text(&out.stderr));
    } else {
        let sql = target.dir.path().join("dump.sql");
        std::fs::write(&sql, decompress(&path)).unwrap();
        cluster().load_file(&target.name, &sql).unwrap();
    }
    target
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn backup_stores_object_manifest_and_a_valid_row_and_round_trips() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    let b = db.backup(&["--tenant", "bienestar"]);
    let key = b["key"].as_str().unwrap();
    let id = b["id"].as_i64().unwrap();
    assert!(
        key.starts_with("bienestar/backup-sql-bienestar-") && key.ends_with(".sql.zst"),
        "{key}"
    );

    // Object and manifest side by side, and nothing else.
    let manifest_key = format!("{key}.manifest.json");
    assert_eq!(db.objects(), vec![key.to_string(), manifest_key.clone()]);
    assert_eq!(db.all_files().len(), 2, "temporary files left: {:?}", db.all_files());
    let object = db.storage().join(key);
    let manifest: Value = serde_json::from_slice(&std::fs::read(db.storage().join(&manifest_key)).unwrap()).unwrap();
    assert_eq!(manifest["sha256"], sha256(&object));
    assert_eq!(manifest["size"], std::fs::metadata(&object).unwrap().len());
    assert_eq!(manifest["tenant"], "bienestar");
    assert_eq!(manifest["compression"], "zstd");
    assert_eq!(manifest["row_counts"]["appointments_patient"], 200);
    assert_eq!(manifest["row_counts"]["appointments_appointment"], 1000);

    // One row, valid to Django.
    assert_eq!(db.record_count("bienestar"), before + 1);
    let row = db.sql(&format!(
        "SELECT file_name, file_path, file_size, backup_type, created_at IS NOT NULL, created_by_id IS NULL \
         FROM bienestar.backups_backuprecord WHERE id = {id}"
    ));
    let file_name = key.rsplit('/').next().unwrap();
    let size = std::fs::metadata(&object).unwrap().len();
    assert_eq!(row, format!("{file_name}|{key}|{size}|manual|t|t"));
    // A manual backup leaves last_backup_at alone, as the application did.
    assert_eq!(
        db.sql("SELECT last_backup_at FROM public.tenants_clinic WHERE schema_name = 'bienestar'"),
        "2026-11-21 21:45:53+00"
    );

    // The dump restored into an empty database holds exactly the same data.
    let source = db.fingerprint("bienestar");
    assert!(source.len() > 10);
    let restored = restore_into_empty(&db, key);
    let mut expected = source.clone();
    // The new row was written after the dump's snapshot, so the restored history lacks it.
    let records = expected.iter_mut().find(|(t, _)| t == "backups_backuprecord").unwrap();
    records.1 = db_fingerprint_without(&db, id);
    assert_eq!(restored.fingerprint("bienestar"), expected);
}

fn db_fingerprint_without(db: &TestDb, id: i64) -> String {
    db.sql(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') \
         FROM bienestar.backups_backuprecord x WHERE id <> {id}"
    ))
}

#[test]
fn every_compression_and_format_round_trips() {
    let db = TestDb::new();
    // Each backup adds a history row after its own snapshot; with the table emptied after every
    // backup, each dump must equal the data as it is now.
    db.sql("DELETE FROM mindcare.backups_backuprecord");
    let source = db.fingerprint("mindcare");
    for (args, ext) in [
        (vec!["--compress", "none"], ".sql"),
        (vec!["--compress", "gzip", "--level", "9"], ".sql.gz"),
        (vec!["--compress", "zstd", "--level", "19"], ".sql.zst"),
        (vec!["--inserts"], ".sql.zst"),
        (vec!["--format", "custom"], ".dump"),
        (vec!["--format", "custom", "--compress", "zstd"], ".dump.zst"),
    ] {
        let mut all = vec!["--tenant", "mindcare"];
        all.extend(&args);
        let b = db.backup(&all);
        let key = b["key"].as_str().unwrap().to_string();
        assert!(key.ends_with(ext), "{args:?}: {key}");
        let object = db.storage().join(&key);
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(db.storage().join(format!("{key}.manifest.json"))).unwrap()).unwrap();
        assert_eq!(manifest["sha256"], sha256(&object), "{args:?}");
        if key.ends_with(".dump.zst") {
            // pg_restore reads only the decompressed archive.
            let plain = db.dir.path().join("plain.dump");
            std::fs::write(&plain, decompress(&object)).unwrap();
            std::fs::rename(&plain, db.storage().join(key.trim_end_matches(".zst"))).unwrap();
            let restored = restore_into_empty(&db, key.trim_end_matches(".zst"));
            std::fs::remove_file(db.storage().join(key.trim_end_matches(".zst"))).unwrap();
            assert_eq!(restored.fingerprint("mindcare"), source, "{args:?}");
        } else {
            let restored = restore_into_empty(&db, &key);
            assert_eq!(restored.fingerprint("mindcare"), source, "{args:?}");
        }
        db.sql("DELETE FROM mindcare.backups_backuprecord");
    }
}

#[test]
fn automatic_backup_sets_last_backup_at_and_created_by_resolves_users() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "mindcare", "--type", "automatic"]);
    assert!(b["key"].as_str().unwrap().starts_with("mindcare/auto-sql-mindcare-"));
    assert_eq!(
        db.sql("SELECT last_backup_at IS NOT NULL AND last_backup_at > now() - interval '5 minutes' FROM public.tenants_clinic WHERE schema_name = 'mindcare'"),
        "t"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT backup_type FROM mindcare.backups_backuprecord WHERE id = {}",
            b["id"]
        )),
        "automatic"
    );

    let b = db.backup(&["--tenant", "bienestar", "--created-by", "Terapeuta1@Bienestar.example"]);
    assert_eq!(
        db.sql(&format!(
            "SELECT created_by_id FROM bienestar.backups_backuprecord WHERE id = {}",
            b["id"]
        )),
        "2"
    );
    let b = db.backup(&["--tenant", "bienestar", "--created-by", "3"]);
    assert_eq!(
        db.sql(&format!(
            "SELECT created_by_id FROM bienestar.backups_backuprecord WHERE id = {}",
            b["id"]
        )),
        "3"
    );
}

#[test]
fn backup_all_backs_up_every_tenant_but_public_and_prints_a_summary() {
    let db = TestDb::new();
    let out = db.cmd().args(["backup", "--all", "--no-progress"]).output().unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for t in ["bienestar", "clinica_demo", "mindcare"] {
        assert!(stdout.contains(&format!("{t}/backup-sql-{t}-")), "{stdout}");
    }
    assert!(
        stdout.contains(" KB") && stdout.contains(" s"),
        "size and duration shown: {stdout}"
    );
    assert!(!db.objects().iter().any(|k| k.starts_with("public/")));
    assert_eq!(db.objects().len(), 6);
}

#[test]
fn hostile_schema_names_are_quoted_everywhere() {
    let db = TestDb::new();
    // A name django-tenants rejects is refused before anything is touched...
    let hostile = r#"Odd "name"; x"#;
    let out = db.cmd().args(["backup", "--tenant", hostile]).output().unwrap();
    assert_fails(&out, 2, "django-tenants");
    // ...and one it accepts that SQL must still quote (mixed case) goes through quoted everywhere.
    let schema = "Odd_Name_x";
    db.sql(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.backups_backuprecord (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
         file_name varchar(255) NOT NULL, file_path text NOT NULL, file_size bigint NOT NULL, backup_type varchar(10) NOT NULL, \
         created_at timestamptz NOT NULL, created_by_id bigint); CREATE TABLE {s}.notes (id int PRIMARY KEY, body text); \
         INSERT INTO {s}.notes VALUES (1, 'it''s'); \
         INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('{lit}', 'Odd', 'daily')",
        s = quote(schema),
        lit = schema.replace('\'', "''")
    ));
    let b = db.backup(&["--tenant", schema]);
    let key = b["key"].as_str().unwrap();
    assert!(key.starts_with(&format!("{schema}/backup-sql-{schema}-")), "{key}");
    assert_eq!(db.record_count(schema), 1);
    let restored = restore_into_empty(&db, key);
    assert_eq!(
        restored.sql(&format!("SELECT body FROM {}.notes", quote(schema))),
        "it's"
    );
}
