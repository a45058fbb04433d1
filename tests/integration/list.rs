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

#[test]
fn list_check_has_an_in_bucket_column_and_legacy_rows_say_where_they_are() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "bienestar"]);
    let out = db.cmd().args(["list", "--tenant", "bienestar"]).output().unwrap();
    assert!(
        text(&out.stdout)
            .contains("outside the bucket: /var/backups/clinic/bienestar/bienestar_20250603_154512.sql.gz"),
        "{}",
        text(&out.stdout)
    );
    let out = db
        .cmd()
        .args(["list", "--check", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].trim_end().ends_with("in bucket"), "{stdout}");
    assert!(lines[1].trim_end().ends_with("yes"), "{stdout}");
    assert!(lines[2].trim_end().ends_with("outside bucket"), "{stdout}");

    std::fs::remove_file(db.storage().join(b["key"].as_str().unwrap())).unwrap();
    let out = db
        .cmd()
        .args(["--json", "list", "--check", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing object is a finding: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = v[0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["in_bucket"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["missing", "outside", "outside"]);
    let out = db
        .cmd()
        .args(["list", "--check", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert!(text(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim_end()
        .ends_with("MISSING"));
}

#[test]
fn legacy_rows_are_not_in_the_bucket_and_commands_say_what_to_do() {
    let db = TestDb::new();
    for args in [
        vec!["download", "--tenant", "bienestar", "--id", "2", "-o", "-"],
        vec!["verify", "--tenant", "bienestar", "--id", "2"],
        vec!["restore", "--tenant", "bienestar", "--id", "2", "--yes"],
    ] {
        let out = db.cmd().args(&args).output().unwrap();
        assert_fails(&out, 2, "is not in the configured storage");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("/var/backups/clinic/bienestar/bienestar_20250603_154512.sql.gz"),
            "{stderr}"
        );
        assert!(
            stderr.contains("copy it into") && stderr.contains("bienestar/"),
            "{stderr}"
        );
        assert!(!stderr.contains("invalid object key"), "{stderr}");
    }
}

/// `list | head`: a reader that goes away after the first line ends the command quietly, exit 0
/// (as ripgrep does), with a table far bigger than the pipe's buffer, as a table and as JSON.
#[test]
fn a_reader_that_goes_away_ends_list_quietly_with_exit_0() {
    use std::io::Read;
    let db = TestDb::new();
    // ~5,000 rows of ~150 bytes: 10 times the 64 KiB a pipe holds.
    db.sql(
        "INSERT INTO bienestar.backups_backuprecord (id, file_name, file_path, file_size, backup_type, created_at) \
         SELECT 1000 + g, 'bienestar_' || g || '.sql.gz', '/var/backups/clinic/bienestar/bienestar_' || g || '.sql.gz', g, 'manual', now() - g * interval '1 hour' \
         FROM generate_series(1, 5000) g",
    );
    for json in [false, true] {
        let mut cmd = db.spawn(if json { &["--json", "list"][..] } else { &["list"] });
        let mut head = [0u8; 200];
        cmd.stdout.as_mut().unwrap().read_exact(&mut head).unwrap();
        drop(cmd.stdout.take());
        let out = cmd.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "json {json}: {stderr}");
        assert!(stderr.trim().is_empty(), "json {json}: quietly: {stderr}");
    }
}
