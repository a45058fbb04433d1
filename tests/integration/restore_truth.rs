//! Truth at COMMIT (issue #12, item 3): when the connection drops right after COMMIT was sent, the
//! tool asks the server what happened and reports (and acts on) that.

use crate::support::proxy::CutAtCommit;
use crate::support::*;

#[test]
fn backup_whose_connection_drops_at_commit_keeps_its_committed_row_and_object() {
    let db = TestDb::new();
    let proxy = CutAtCommit::start(cluster().port);
    let before = db.record_count("bienestar");
    let out = db
        .cmd()
        .env("DATABASE_URL", proxy.url(&db.url()))
        .args(["--json", "--no-progress", "backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert_eq!(
        proxy.cuts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the proxy never cut"
    );
    let stderr = text(&out.stderr);
    // The row committed: the backup happened, and its object must still be there.
    assert_eq!(db.record_count("bienestar"), before + 1, "{stderr}");
    let key = db.sql("SELECT file_path FROM bienestar.backups_backuprecord ORDER BY id DESC LIMIT 1");
    assert!(
        db.objects().contains(&key) && db.objects().contains(&format!("{key}.manifest.json")),
        "the recorded backup {key} points at nothing: {:?}\n{stderr}",
        db.objects()
    );
    assert!(out.status.success(), "a committed backup is a backup: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["backup"]["key"], key.as_str());
    assert!(stderr.contains("committed"), "says what happened: {stderr}");
}

#[test]
fn restore_whose_connection_drops_at_commit_reports_what_the_server_did() {
    for format in ["sql", "json"] {
        let db = TestDb::new();
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let id = b["id"].to_string();
        let backed_up = db.fingerprint("bienestar");
        db.sql("DELETE FROM bienestar.appointments_appointment WHERE id % 2 = 0");
        let proxy = CutAtCommit::start(cluster().port);
        let mut args = vec!["restore", "--tenant", "bienestar", "--id", &id, "--yes"];
        if format == "sql" {
            args.push("--drop-previous");
        }
        let out = db
            .cmd()
            .env("DATABASE_URL", proxy.url(&db.url()))
            .args(&args)
            .output()
            .unwrap();
        assert_no_secret(&out);
        assert_eq!(
            proxy.cuts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{format}: the proxy never cut"
        );
        let stderr = text(&out.stderr);
        // The new data is live: the server committed, so the restore happened.
        let restored: Vec<_> = db
            .fingerprint("bienestar")
            .into_iter()
            .filter(|(t, _)| t != "backups_backuprecord")
            .collect();
        let expected: Vec<_> = backed_up
            .into_iter()
            .filter(|(t, _)| t != "backups_backuprecord")
            .collect();
        assert_eq!(
            restored, expected,
            "{format}: the restore did not commit after all: {stderr}"
        );
        assert!(
            out.status.success() && !stderr.contains("unchanged") && !stderr.contains("nothing was changed"),
            "{format}: a committed restore is reported as done:\n{stderr}"
        );
        assert!(
            text(&out.stdout).contains("restored bienestar"),
            "{format}: {}",
            text(&out.stdout)
        );
    }
}
