//! cleanup: retention by age with --keep-last, orphans, pre-restore schemas.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::*;

/// Makes `n` automatic backups of mindcare and returns their (id, key), oldest first.
fn automatic_backups(db: &TestDb, n: usize) -> Vec<(i64, String)> {
    (0..n)
        .map(|_| {
            let b = db.backup(&["--tenant", "mindcare", "--type", "automatic"]);
            (b["id"].as_i64().unwrap(), b["key"].as_str().unwrap().to_string())
        })
        .collect()
}

fn age(db: &TestDb, id: i64, days: u32) {
    db.sql(&format!(
        "UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '{days} days' WHERE id = {id}"
    ));
}

fn ids(db: &TestDb) -> String {
    db.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM mindcare.backups_backuprecord")
}

#[test]
fn deletes_exactly_the_old_automatic_backups() {
    let db = TestDb::new();
    let b = automatic_backups(&db, 5);
    for (i, days) in [40, 35, 31, 29, 1].into_iter().enumerate() {
        age(&db, b[i].0, days);
    }
    db.sql("UPDATE mindcare.backups_backuprecord SET backup_type = 'manual' WHERE id = 1"); // the 40-day one
    let before_objects = db.objects();

    // Dry run: the plan, nothing touched.
    let out = db
        .cmd()
        .args(["cleanup", "--days", "30", "--dry-run", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("would delete 2 backups"), "{stdout}");
    assert!(stdout.contains("keeping 1: manual"), "{stdout}");
    assert_eq!(db.objects(), before_objects);
    assert_eq!(ids(&db), "1,2,3,4,5");

    let out = db
        .cmd()
        .args(["cleanup", "--days", "30", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ids(&db), "1,4,5");
    for (id, key) in &b {
        let present = db.objects().contains(key) && db.objects().contains(&format!("{key}.manifest.json"));
        assert_eq!(present, ![2, 3].contains(id), "{key}");
    }

    let out = db
        .cmd()
        .args(["cleanup", "--days", "30", "--tenant", "mindcare", "--include-manual"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(ids(&db), "4,5");
}

#[test]
fn keep_last_protects_the_newest_even_when_all_are_old() {
    let db = TestDb::new();
    let b = automatic_backups(&db, 3);
    for (id, _) in &b {
        age(&db, *id, 100 - *id as u32);
    }
    let out = db
        .cmd()
        .args(["cleanup", "--days", "30", "--tenant", "mindcare", "--keep-last", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ids(&db), "2,3");
    let out = db
        .cmd()
        .args(["cleanup", "--days", "30", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(ids(&db), "3");
    assert_eq!(db.objects().len(), 2);
}

#[test]
fn legacy_rows_and_missing_objects_count_as_deleted_and_a_failing_delete_keeps_its_row() {
    let db = TestDb::new();
    let b = automatic_backups(&db, 3);
    for (id, _) in &b {
        age(&db, *id, 60 - *id as u32);
    }
    // Backup 1's object cannot be deleted (a directory stands in its place); backup 2's is gone.
    let one = db.storage().join(&b[0].1);
    std::fs::remove_file(&one).unwrap();
    std::fs::create_dir_all(one.join("stuck")).unwrap();
    std::fs::remove_file(db.storage().join(&b[1].1)).unwrap();
    let out = db.cmd().args(["--json", "cleanup", "--days", "30"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        ids(&db),
        "1,3",
        "the failed one keeps its row; the missing one's row goes"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 1);
    // bienestar's only automatic backup is an old application row: --keep-last protects it...
    assert_eq!(
        db.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM bienestar.backups_backuprecord"),
        "1,2"
    );
    // ...until asked; its /var/backups path is not in this bucket, so only the row goes.
    let out = db
        .cmd()
        .args(["cleanup", "--days", "30", "--tenant", "bienestar", "--keep-last", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("row deleted; the object was already missing"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        db.sql("SELECT string_agg(id::text, ',') FROM bienestar.backups_backuprecord"),
        "2"
    );
}

#[test]
fn orphans_are_found_and_fixed_with_a_one_day_grace() {
    let db = TestDb::new();
    let b = automatic_backups(&db, 2);
    // An old object no row points to, a young one (a backup in flight), and a row without object.
    let old = "mindcare/auto-sql-mindcare-2026-01-01-000000.sql.zst";
    let young = "mindcare/auto-sql-mindcare-2026-01-02-000000.sql.zst";
    for key in [old, young] {
        std::fs::copy(db.storage().join(&b[0].1), db.storage().join(key)).unwrap();
    }
    let f = std::fs::File::options()
        .write(true)
        .open(db.storage().join(old))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3 * 86400))
        .unwrap();
    std::fs::remove_file(db.storage().join(&b[1].1)).unwrap();

    let out = db.cmd().args(["cleanup", "--orphans"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("object without row {old}: found")), "{stdout}");
    assert!(
        stdout.contains(&format!("object without row {young}: found")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("row without object {} (row {})", b[1].1, b[1].0)),
        "{stdout}"
    );
    assert_eq!(ids(&db), "1,2");

    let out = db
        .cmd()
        .args(["cleanup", "--orphans", "--fix", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = db.objects();
    assert!(
        !objects.contains(&old.to_string()) && objects.contains(&young.to_string()),
        "{objects:?}"
    );
    assert_eq!(ids(&db), "1");
}

#[test]
fn pre_restore_schemas_are_dropped_only_when_old_enough_and_ours() {
    let db = TestDb::new();
    let stamp = |days: i64| {
        (chrono::Utc::now() - chrono::Duration::days(days))
            .format("%Y%m%d%H%M%S")
            .to_string()
    };
    let (old, new, foreign) = (
        format!("mindcare__pre_restore_{}", stamp(10)),
        format!("mindcare__pre_restore_{}", stamp(2)),
        format!("someone__pre_restore_{}", stamp(30)),
    );
    for s in [&old, &new, &foreign] {
        db.sql(&format!(
            "CREATE SCHEMA {}; CREATE TABLE {}.t (x int)",
            quote(s),
            quote(s)
        ));
    }
    let out = db
        .cmd()
        .args(["cleanup", "--pre-restore-days", "7", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{old} (")) && text(&out.stdout).contains("would drop"));
    let out = db.cmd().args(["cleanup", "--pre-restore-days", "7"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let left =
        db.sql("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE '%pre_restore%'");
    assert_eq!(left, format!("{new},{foreign}"));
}

#[test]
fn bad_cleanup_input_exits_2_and_touches_nothing() {
    let db = TestDb::new();
    let b = automatic_backups(&db, 2);
    age(&db, b[0].0, 90);
    for args in [
        vec!["cleanup"],
        vec!["cleanup", "--days", "0"],
        vec!["cleanup", "--days", "-3"],
        vec!["cleanup", "--days", "ten"],
        vec!["cleanup", "--days", "1.5"],
        vec!["cleanup", "--pre-restore-days", "0"],
        vec!["cleanup", "--fix"],
        vec!["cleanup", "--days", "3", "--tenant", "nope"],
        vec!["cleanup", "--days", "3", "--keep-last", "-1"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(ids(&db), "1,2");
    assert_eq!(db.objects().len(), 4);
}
