//! Issue #28 (the write report): what the application writes to the tenant while a restore runs
//! lands in the schema set aside. The restore says so, and `--drop-previous` keeps that schema
//! rather than destroying acknowledged writes silently.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use crate::support::*;

#[test]
fn writes_made_during_a_restore_are_reported_and_never_dropped_silently() {
    let db = TestDb::new();
    for format in ["sql", "json"] {
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let id = b["id"].to_string();
        // Something holds the schema's catalog row, so the restore waits (renaming the schema
        // aside) right after it started; meanwhile the application writes a row and commits.
        let mut holder = cluster()
            .psql_command(&db.name)
            .args(["-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(
            holder.stdin.as_mut().unwrap(),
            "BEGIN; GRANT USAGE ON SCHEMA bienestar TO PUBLIC; SELECT 'held';"
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
        let restore = db.spawn(&[
            "--json",
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &id,
            "--yes",
            "--drop-previous",
        ]);
        db.until_the_tool_waits_for_a_lock();
        db.sql(&format!(
            "INSERT INTO bienestar.appointments_tag (name) VALUES ('written during the restore {format}')"
        ));
        writeln!(holder.stdin.as_mut().unwrap(), "ROLLBACK;").unwrap();
        drop(holder.stdin.take());
        let _ = holder.wait();
        let out = restore.wait_with_output().unwrap();
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            report["application_writes_during_restore"].as_i64().unwrap_or(0) >= 1,
            "{format}: {report}\n{}",
            text(&out.stderr)
        );
        let kept = report["previous_schema_kept_as"]
            .as_str()
            .unwrap_or_else(|| panic!("{format}: --drop-previous must keep what the application wrote: {report}"));
        assert_eq!(
            db.sql(&format!(
                "SELECT count(*) FROM {}.appointments_tag WHERE name = 'written during the restore {format}'",
                quote(kept)
            )),
            "1"
        );
        assert!(text(&out.stderr).contains("KEPT"), "{format}: {}", text(&out.stderr));
    }
    // With nobody writing, --drop-previous drops the previous schema.
    let b = db.backup(&["--tenant", "bienestar"]);
    let before = db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bienestar__pre_restore_%'");
    let out = db
        .cmd()
        .args([
            "--json",
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &b["id"].to_string(),
            "--yes",
            "--drop-previous",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["application_writes_during_restore"], 0, "{report}");
    assert!(report["previous_schema_kept_as"].is_null(), "{report}");
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bienestar__pre_restore_%'"),
        before
    );
}

#[test]
fn maintenance_refuses_the_swap_when_the_application_wrote_and_changes_nothing() {
    // --maintenance: the operator says the application is stopped; a write during the restore
    // means it is not, and the restore changes nothing rather than leave that write behind.
    let db = TestDb::new();
    let id = db.backup(&["--tenant", "bienestar"])["id"].to_string();
    // The application holds the schema's catalog row, so the swap waits: a write then comes in.
    let app = AppSession::start(
        &db,
        "holder",
        "BEGIN; GRANT USAGE ON SCHEMA bienestar TO PUBLIC; SELECT pg_sleep(600)",
    );
    let restore = db.spawn(&[
        "restore",
        "--tenant",
        "bienestar",
        "--id",
        &id,
        "--yes",
        "--maintenance",
    ]);
    db.until_the_tool_waits_for_a_lock();
    db.sql("INSERT INTO bienestar.appointments_tag (name) VALUES ('written during the restore')");
    let live = db.fingerprint("bienestar");
    drop(app);
    let out = restore.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("wrote 1 row(s)"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--maintenance"), "{}", text(&out.stderr));
    assert_eq!(db.fingerprint("bienestar"), live, "nothing changed");
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bienestar\\_\\_%'"),
        "0",
        "no staging schema, no previous schema"
    );
    // With nobody writing it restores.
    db.ok(&[
        "restore",
        "--tenant",
        "bienestar",
        "--id",
        &id,
        "--yes",
        "--maintenance",
    ]);
    assert_eq!(
        db.sql("SELECT count(*) FROM bienestar.appointments_tag WHERE name = 'written during the restore'"),
        "0"
    );
}
