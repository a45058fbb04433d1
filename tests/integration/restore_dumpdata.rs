//! The application's dumpdata backups (#25): genuine `manage.py dumpdata` output of the
//! clinica_demo tenant (tests/fixtures/dumpdata, made by its make.sh with real Django) restores
//! by id, plain and gzip, to the data it was taken of; a damaged, foreign or unplaceable one is
//! refused with what to do, and nothing is touched.

use std::io::Write;

use crate::support::*;

const TENANT: &str = "clinica_demo";

fn genuine(name: &str) -> Vec<u8> {
    std::fs::read(fixture().parent().unwrap().join("dumpdata").join(name)).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Puts `bytes` in the bucket as the application did (no manifest) and adds its history row;
/// returns the row's id.
fn application_backup(db: &TestDb, ext: &str, bytes: &[u8]) -> i64 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let second = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 60;
    let name = format!("backup-json-{TENANT}-2025-01-10-1200{second:02}.{ext}");
    std::fs::create_dir_all(db.storage().join(TENANT)).unwrap();
    std::fs::write(db.storage().join(TENANT).join(&name), bytes).unwrap();
    db.sql(&format!(
        "INSERT INTO {TENANT}.backups_backuprecord (file_name, file_path, file_size, backup_type, created_at) \
         VALUES ('{name}', '{TENANT}/{name}', {}, 'json', '2025-01-10 12:00:00+00') RETURNING id",
        bytes.len()
    ))
    .parse()
    .unwrap()
}

/// The tenant as its dumpdata holds it: Django's serializer keeps datetimes to the millisecond, and
/// writes a JSONField's json `null` as it writes SQL NULL (one appointment's `extra` is `'null'`).
fn as_dumpdata_holds(db: &TestDb) {
    db.sql(&format!(
        "UPDATE {TENANT}.appointments_appointment SET extra = NULL WHERE extra = 'null'::jsonb"
    ));
    db.sql(&format!(
        "DO $$ DECLARE c record; BEGIN \
           FOR c IN SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_schema = '{TENANT}' AND data_type = 'timestamp with time zone' LOOP \
             EXECUTE format('UPDATE {TENANT}.%I SET %I = date_trunc(''milliseconds'', %I)', c.table_name, c.column_name, c.column_name); \
           END LOOP; END $$"
    ));
}

fn vandalize(db: &TestDb) {
    db.sql(&format!(
        "DELETE FROM {TENANT}.appointments_appointment WHERE id % 3 = 0; \
         UPDATE {TENANT}.appointments_patient SET first_name = 'changed', metadata = '[]', photo_thumb = NULL WHERE id < 10; \
         DELETE FROM {TENANT}.appointments_patient_tags WHERE tag_id = 1; \
         INSERT INTO {TENANT}.appointments_tag (name) VALUES ('new')"
    ));
}

/// A fingerprint without one table (the row added above to check the sequence).
fn without(fingerprint: &[(String, String)], table: &str) -> Vec<(String, String)> {
    fingerprint.iter().filter(|(t, _)| t != table).cloned().collect()
}

fn restore(db: &TestDb, id: i64, extra: &[&str]) -> std::process::Output {
    let out = db
        .cmd()
        .args(["restore", "--tenant", TENANT, "--id", &id.to_string(), "--yes"])
        .args(extra)
        .output()
        .unwrap();
    assert_no_secret(&out);
    out
}

#[test]
fn dumpdata_backups_restore_to_the_data_they_were_taken_of() {
    for (ext, bytes) in [
        ("json", genuine("clinica_demo.json")),
        ("json.gz", gzip(&genuine("clinica_demo.indent.json"))),
    ] {
        let db = TestDb::new();
        as_dumpdata_holds(&db);
        let before = db.data(TENANT);
        let migrations = db.sql(&format!("SELECT count(*) FROM {TENANT}.django_migrations"));
        // For comparison: the tool's own sql backup of the same data.
        let sql = db.backup(&["--tenant", TENANT, "--format", "sql"])["id"]
            .as_i64()
            .unwrap();
        let id = application_backup(&db, ext, &bytes);
        vandalize(&db);
        assert_ne!(db.data(TENANT), before);

        let verify = db
            .cmd()
            .args(["verify", "--tenant", TENANT, "--id", &id.to_string()])
            .output()
            .unwrap();
        assert!(verify.status.success(), "verify {ext}: {}", text(&verify.stderr));

        let out = restore(&db, id, &[]);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{ext}: {stderr}");
        assert!(stderr.contains("dumpdata"), "the plan says what it is: {stderr}");
        assert!(
            stderr.contains("appointments_patient_tags"),
            "the many-to-many table is named: {stderr}"
        );
        assert_eq!(db.data(TENANT), before, "{ext}: the data the dump was taken of");
        // Tables the dump does not hold are left as they are; the history row of the backup stays.
        assert_eq!(
            db.sql(&format!("SELECT count(*) FROM {TENANT}.django_migrations")),
            migrations
        );
        assert_eq!(
            db.sql(&format!(
                "SELECT count(*) FROM {TENANT}.backups_backuprecord WHERE id = {id}"
            )),
            "1"
        );
        // The previous rows are kept aside; the next row gets a fresh id.
        let kept = db.sql(&format!(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE '{TENANT}__pre_restore_%'"
        ));
        assert_eq!(
            db.sql(&format!(
                "SELECT count(*) FROM {}.appointments_patient WHERE first_name = 'changed'",
                quote(&kept)
            )),
            "9",
            "{ext}"
        );
        let max = db.sql(&format!("SELECT max(id) FROM {TENANT}.appointments_patient_tags"));
        let next = db.sql(&format!(
            "INSERT INTO {TENANT}.appointments_patient_tags (patient_id, tag_id) VALUES (1, 2) RETURNING id"
        ));
        assert!(
            next.parse::<i64>().unwrap() > max.parse::<i64>().unwrap(),
            "{next} > {max}"
        );

        // The sql round trip of the same data lands on the same fingerprint.
        let dumpdata_restored = db.data(TENANT);
        vandalize(&db);
        let out = restore(&db, sql, &["--drop-previous"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let sql_restored = db.data(TENANT);
        assert_eq!(sql_restored, before, "{ext}: the sql round trip");
        assert_eq!(
            without(&dumpdata_restored, "appointments_patient_tags"),
            without(&sql_restored, "appointments_patient_tags"),
            "{ext}: dumpdata and sql agree"
        );
    }
}

#[test]
fn damaged_foreign_or_unplaceable_dumpdata_is_refused_and_nothing_is_touched() {
    let db = TestDb::new();
    let plain = String::from_utf8(genuine("clinica_demo.json")).unwrap();
    let cases: Vec<(&str, Vec<u8>, i32, &str)> = vec![
        (
            "truncated",
            plain.as_bytes()[..plain.len() / 2].to_vec(),
            1,
            "truncated",
        ),
        ("natural keys", genuine("clinica_demo.natural.json"), 2, "natural keys"),
        (
            "unknown models",
            plain
                .replace("\"appointments.tag\"", "\"appointments.label\"")
                .replace("\"users.user\"", "\"accounts.member\"")
                .into_bytes(),
            2,
            "appointments.label (no table appointments_label)",
        ),
        (
            "a wrong type",
            plain
                .replacen("\"is_active\": true", "\"is_active\": \"secret-value\"", 1)
                .into_bytes(),
            1,
            "is_active does not fit column users_user.is_active (boolean)",
        ),
        (
            "not json",
            b"[{\"model\": secret-value}]".to_vec(),
            1,
            "not a dumpdata object",
        ),
        ("gzip garbage", gzip(b"[1, 2, 3]"), 1, "not an object"),
    ];
    as_dumpdata_holds(&db);
    let live = db.fingerprint(TENANT);
    let schemas = db.schemas();
    let mut unknown = None;
    for (what, bytes, code, needle) in cases {
        let gz = bytes.starts_with(&[0x1f, 0x8b]);
        let id = application_backup(&db, if gz { "json.gz" } else { "json" }, &bytes);
        let live = {
            let mut l = live.clone();
            l.retain(|(t, _)| t != "backups_backuprecord");
            l
        };
        let out = restore(&db, id, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        assert!(
            !stderr.contains("secret-value"),
            "{what}: no row data in errors: {stderr}"
        );
        assert_eq!(without_history(db.fingerprint(TENANT)), live, "{what}: nothing touched");
        assert_eq!(db.schemas(), schemas, "{what}: no schema made");
        if what == "unknown models" {
            assert!(
                stderr.contains("accounts.member (no table accounts_member)"),
                "every model named: {stderr}"
            );
            assert!(stderr.contains("--model-table"), "{stderr}");
            unknown = Some((id, live));
        }
    }
    // Told where the models go, the same file restores.
    let (id, live) = unknown.unwrap();
    let out = restore(
        &db,
        id,
        &[
            "--model-table",
            "appointments.label=appointments_tag",
            "--model-table",
            "accounts.member=users_user",
            "--model-table",
            "accounts.member.groups=users_user_groups",
            "--model-table",
            "accounts.member.user_permissions=users_user_user_permissions",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(without_history(db.fingerprint(TENANT)), live, "the same data, restored");
}

#[test]
fn a_dumpdata_restore_loads_beside_the_application_and_swaps_in() {
    // Rows only, like every format: loaded into a staging schema (the live structure, the rows of
    // the tables it does not hold) as the loader role, then swapped in. The application, mid-way
    // through a transaction on a table the backup holds, is never waited for: a load into the
    // live tables would need them emptied first, and wait for it past --lock-timeout.
    let db = TestDb::new();
    as_dumpdata_holds(&db);
    let before = db.data(TENANT);
    let id = application_backup(&db, "json", &genuine("clinica_demo.json"));
    vandalize(&db);
    let app = AppSession::start(
        &db,
        "clinic",
        &format!("BEGIN; INSERT INTO {TENANT}.appointments_tag (name) VALUES ('open'); SELECT pg_sleep(600)"),
    );
    let out = restore(&db, id, &["--lock-timeout", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(app);
    assert_eq!(db.data(TENANT), before);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{TENANT}' AND c.relowner <> n.nspowner"
        )),
        "0",
        "loaded by the loader, handed to the tenant's owner"
    );
    // Into another schema too, now that it creates one (the tenant left as it is).
    let live = db.fingerprint(TENANT);
    let out = restore(&db, id, &["--into", "clinica_copy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.fingerprint(TENANT), live);
    assert_eq!(
        without(&db.data("clinica_copy"), "backups_backuprecord"),
        without(&before, "backups_backuprecord")
    );
    // And into another tenant, said in so many words (its own history kept).
    let key = db.sql(&format!(
        "SELECT file_path FROM {TENANT}.backups_backuprecord WHERE id = {id}"
    ));
    let history = db.sql("SELECT count(*) FROM mindcare.backups_backuprecord");
    let migrations = db.sql("SELECT count(*) FROM mindcare.django_migrations");
    // A row of mindcare's in a table the dump does not hold: it must not stay beside another
    // clinic's rows.
    db.sql("INSERT INTO mindcare.auth_group (name) VALUES ('mindcare staff')");
    let out = db.run(&[
        "restore",
        "--tenant",
        "mindcare",
        "--file",
        &key,
        "--from-tenant",
        TENANT,
        "--yes",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("restored empty: "), "{}", text(&out.stderr));
    assert_eq!(db.sql("SELECT count(*) FROM mindcare.auth_group"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM mindcare.django_migrations"), migrations);
    assert_eq!(
        db.sql("SELECT string_agg(first_name, ',' ORDER BY id) FROM mindcare.appointments_patient"),
        db.sql(&format!(
            "SELECT string_agg(first_name, ',' ORDER BY id) FROM {TENANT}.appointments_patient"
        ))
    );
    assert_eq!(db.sql("SELECT count(*) FROM mindcare.backups_backuprecord"), history);
}

#[test]
fn a_dumpdata_restore_blocked_by_the_application_names_it_and_changes_nothing() {
    // The live schema's rows are read for the tables the dump does not hold; a migration holding
    // one of them is waited for no longer than --lock-timeout, and named.
    let db = TestDb::new();
    let id = application_backup(&db, "json", &genuine("clinica_demo.json"));
    let live = db.fingerprint(TENANT);
    let app = AppSession::start(
        &db,
        "migrating",
        &format!("BEGIN; LOCK TABLE {TENANT}.django_migrations IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600)"),
    );
    let out = restore(&db, id, &["--lock-timeout", "2"]);
    drop(app);
    assert_fails(&out, 1, "--lock-timeout");
    assert!(text(&out.stderr).contains("migrating"), "{}", text(&out.stderr));
    assert_eq!(db.fingerprint(TENANT), live);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '{TENANT}\\_\\_%'"
        )),
        "0"
    );
}
