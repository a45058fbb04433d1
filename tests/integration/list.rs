use serde_json::Value;

use crate::support::*;

#[test]
fn list_shows_legacy_and_new_rows_as_table_and_json() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--no-progress", "--created-by", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = db.cmd().args(["list", "--tenant", "bienestar"]).output().unwrap();
    assert_no_secret(&out);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("tenant") && lines[0].contains("created_by"),
        "{stdout}"
    );
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[1].contains("bienestar/backup-sql-bienestar-") && lines[1].contains("admin@bienestar.example"),
        "newest first: {stdout}"
    );
    assert!(
        stdout.contains("/var/backups/clinic/bienestar/bienestar_20250603_154512.sql.gz"),
        "legacy rows listed: {stdout}"
    );
    assert!(stdout.contains("1.76 MB"), "{stdout}");

    let out = db.cmd().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tenants: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["bienestar", "clinica_demo", "mindcare"]);
    assert_eq!(v[0]["backups"].as_array().unwrap().len(), 3);
    // One timestamp form across commands: RFC 3339, UTC, microseconds.
    assert_eq!(v[0]["backups"][2]["created_at"], "2025-06-01T03:00:00.000000Z");
}
