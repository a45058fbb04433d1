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
        text(&out.stdout).contains("row deleted; its file /var/backups/clinic/bienestar/bienestar_20250601_030000.sql.gz is outside the bucket and was not touched"),
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

#[test]
fn tenant_names_django_tenants_would_reject_are_refused() {
    let db = TestDb::new();
    db.backup(&["--tenant", "bienestar"]);
    // A tenant row whose name reaches into bienestar's folder, with a schema of that name.
    db.sql(
        "INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('bienestar/x', 'X', 'daily'); \
         CREATE SCHEMA \"bienestar/x\"; \
         CREATE TABLE \"bienestar/x\".backups_backuprecord (LIKE bienestar.backups_backuprecord INCLUDING ALL)",
    );
    let before = db.objects();
    for args in [
        vec!["backup", "--tenant", "bienestar/x"],
        vec!["list", "--tenant", "bienestar/x"],
        vec!["cleanup", "--orphans", "--fix", "--tenant", "bienestar/x"],
        vec!["cleanup", "--days", "1", "--tenant", "bienestar/x"],
        vec!["cleanup", "--days", "1", "--tenant", "pg_toast"],
        vec!["cleanup", "--days", "1", "--tenant", "1abc"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_fails(&out, 2, "django-tenants");
    }
    // Over all tenants it is reported and skipped; the others are cleaned.
    let out = db.cmd().args(["cleanup", "--orphans", "--fix"]).output().unwrap();
    assert_fails(&out, 1, "bienestar/x");
    assert_eq!(db.objects(), before);
}

#[test]
fn pre_restore_days_never_drops_a_schema_the_tenant_table_lists() {
    let db = TestDb::new();
    let live = "zz__pre_restore_20200101000000";
    db.sql(&format!(
        "INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('zz', 'ZZ', 'daily'), ('{live}', 'Live', 'daily'); \
         CREATE SCHEMA zz; CREATE SCHEMA {live}; CREATE TABLE {live}.patients (id int)"
    ));
    for args in [
        vec!["cleanup", "--pre-restore-days", "30", "--tenant", "zz"],
        vec!["cleanup", "--pre-restore-days", "30"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(live), "reported: {}", text(&out.stdout));
    }
    assert_eq!(
        db.sql(&format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{live}'")),
        "1",
        "a live tenant's schema is never dropped"
    );
}

#[test]
fn orphans_fix_keeps_manual_legacy_rows_and_its_dry_run_tells_the_truth() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "bienestar", "--type", "automatic"]);
    let key = b["key"].as_str().unwrap().to_string();
    // One row whose object is gone, and the fixture's two old-application rows (1 automatic, 2 manual).
    let gone = db.backup(&["--tenant", "bienestar", "--type", "automatic"]);
    std::fs::remove_file(db.storage().join(gone["key"].as_str().unwrap())).unwrap();
    let rows = |db: &TestDb| db.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM bienestar.backups_backuprecord");
    let before = rows(&db);

    let plan = |args: &[&str]| -> Vec<(String, String)> {
        let out = db.cmd().args(args).output().unwrap();
        assert!(
            out.status.code().is_some_and(|c| c < 2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["orphans"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["action"] == "delete")
            .map(|o| {
                (
                    o["key"].as_str().unwrap().to_string(),
                    o["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let dry = plan(&[
        "--json",
        "cleanup",
        "--orphans",
        "--fix",
        "--dry-run",
        "--tenant",
        "bienestar",
    ]);
    assert_eq!(rows(&db), before, "a dry run touches nothing");
    let out = db
        .cmd()
        .args(["cleanup", "--orphans", "--fix", "--dry-run", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains(&format!("would delete {}", dry.len())),
        "{}",
        text(&out.stdout)
    );
    let real = plan(&["--json", "cleanup", "--orphans", "--fix", "--tenant", "bienestar"]);
    let keys = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&dry), keys(&real), "the dry run said exactly what the run did");
    assert!(dry.iter().all(|(_, r)| r.starts_with("would")), "{dry:?}");
    assert!(
        real.iter()
            .all(|(_, r)| !r.starts_with("would") && !r.starts_with("FAILED")),
        "{real:?}"
    );
    let after = rows(&db);
    let has = |id: &str| after.split(',').any(|i| i == id);
    assert!(
        has("2"),
        "the manual old-application row stays without --include-manual: {after}"
    );
    assert!(!has("1"), "the automatic old-application row goes: {after}");
    assert!(
        !has(&gone["id"].to_string()),
        "the row whose object is gone goes: {after}"
    );
    assert!(has(&b["id"].to_string()) && db.objects().contains(&key), "{after}");

    let out = db
        .cmd()
        .args([
            "cleanup",
            "--orphans",
            "--fix",
            "--include-manual",
            "--tenant",
            "bienestar",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rows(&db), b["id"].to_string());
}

#[test]
fn orphans_fix_dry_run_counts_objects_and_rows_and_totals_as_the_run_does() {
    let db = TestDb::new();
    let backup = || db.backup(&["--tenant", "bienestar", "--type", "automatic"]);
    let kept = backup();
    // Expired with its object, expired with its object gone, recent with its object gone.
    let old = backup();
    let old_gone = backup();
    let recent_gone = backup();
    for b in [&old, &old_gone] {
        db.sql(&format!(
            "UPDATE bienestar.backups_backuprecord SET created_at = now() - interval '40 days' WHERE id = {}",
            b["id"]
        ));
    }
    for b in [&old_gone, &recent_gone] {
        std::fs::remove_file(db.storage().join(b["key"].as_str().unwrap())).unwrap();
    }
    // An object no row points to.
    std::fs::copy(
        db.storage().join(kept["key"].as_str().unwrap()),
        db.storage()
            .join("bienestar/backup-sql-bienestar-2026-01-01-000000.sql.zst"),
    )
    .unwrap();
    let summary = |extra: &[&str]| -> Vec<String> {
        let out = db
            .cmd()
            .args(["cleanup", "--days", "30", "--orphans", "--fix", "--grace-hours", "0"])
            .args(["--tenant", "bienestar"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let lines: Vec<String> = stdout.lines().map(String::from).collect();
        lines[lines.len().saturating_sub(2)..].to_vec()
    };
    let dry = summary(&["--dry-run"]);
    let real = summary(&[]);
    let size = human_size_of(old["size"].as_u64().unwrap());
    assert_eq!(
        real,
        [
            // The legacy automatic row (outside the bucket: no bytes), `old` and `old_gone`
            // (only `old`'s object was there to free).
            format!("deleted 3 backups ({size}), kept 3, 0 failed"),
            // The unreferenced object and the row of `recent_gone`; the manual legacy row stays.
            "deleted 2 orphans of 3 found (1 object and 1 row), 0 failed".to_string(),
        ]
    );
    let said: Vec<String> = dry.iter().map(|l| l.replace("would delete", "deleted")).collect();
    assert_eq!(said, real, "the dry run said what the run did: {dry:?}");
}

/// `human_size` as the tool prints it.
fn human_size_of(bytes: u64) -> String {
    tenant_backup::progress::human_size(bytes)
}
