//! One broken tenant never breaks the others (issue #12, item 6): every all-tenant command reports
//! it, goes on with the rest, and exits 1.

use crate::support::*;

/// clinica_demo loses its history table; a tenant row `ghost` has no schema at all. Both sort
/// before mindcare, so "goes on" is seen.
fn break_two_tenants(db: &TestDb) {
    db.sql(
        "DROP TABLE clinica_demo.backups_backuprecord; \
         INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('ghost', 'Ghost clinic', 'daily')",
    );
}

fn assert_names_the_broken(out: &std::process::Output, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    for broken in ["clinica_demo", "ghost"] {
        assert!(stderr.contains(broken), "{what}: {broken} not reported:\n{stderr}");
    }
}

#[test]
fn list_and_status_report_a_broken_tenant_and_show_the_others() {
    let db = TestDb::new();
    db.backup(&["--tenant", "mindcare"]);
    break_two_tenants(&db);
    let out = db.cmd().args(["list"]).output().unwrap();
    assert_names_the_broken(&out, "list");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("bienestar") && stdout.contains("mindcare/backup-sql-mindcare-"),
        "{stdout}"
    );

    let out = db.cmd().args(["--json", "list"]).output().unwrap();
    assert_names_the_broken(&out, "list --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["error"].is_string())
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["clinica_demo", "ghost"], "{v}");

    let out = db.cmd().args(["status"]).output().unwrap();
    assert_names_the_broken(&out, "status");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("bienestar") && stdout.contains("mindcare"), "{stdout}");
}

#[test]
fn backup_all_and_run_scheduled_skip_a_broken_tenant_before_dumping_it() {
    let db = TestDb::new();
    break_two_tenants(&db);
    let tools = recording_tools(db.dir.path());
    let out = db
        .cmd()
        .env("PG_DUMP", &tools)
        .args(["backup", "--all", "--no-progress"])
        .output()
        .unwrap();
    assert_names_the_broken(&out, "backup --all");
    assert_eq!(db.record_count("bienestar"), 3);
    assert_eq!(db.record_count("mindcare"), 1);

    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
    let out = db
        .cmd()
        .env("PG_DUMP", &tools)
        .args(["run-scheduled", "--no-progress"])
        .output()
        .unwrap();
    assert_names_the_broken(&out, "run-scheduled");
    assert_eq!(db.record_count("mindcare"), 2);
    let dumped = tool_log(&tools, "pg_dump");
    for broken in ["clinica_demo", "ghost"] {
        assert!(
            !dumped.contains(&format!("--schema=\"{broken}\"")),
            "{broken} was dumped:\n{dumped}"
        );
    }
    assert!(db
        .objects()
        .iter()
        .all(|k| !k.starts_with("clinica_demo/") && !k.starts_with("ghost/")));
}

#[test]
fn cleanup_reports_a_broken_tenant_and_cleans_the_others() {
    let db = TestDb::new();
    let old = db.backup(&["--tenant", "mindcare", "--type", "automatic"]);
    db.backup(&["--tenant", "mindcare", "--type", "automatic"]);
    db.sql(&format!(
        "UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '40 days' WHERE id = {}",
        old["id"]
    ));
    break_two_tenants(&db);
    let out = db.cmd().args(["cleanup", "--days", "30"]).output().unwrap();
    assert_names_the_broken(&out, "cleanup");
    assert_eq!(
        db.record_count("mindcare"),
        1,
        "mindcare was cleaned: {}",
        text(&out.stdout)
    );
    assert!(!db.objects().contains(&old["key"].as_str().unwrap().to_string()));
}
