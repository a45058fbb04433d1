//! Issue #28 (the restore engine): every format loads into a staging schema of its own, committed
//! while the application cannot see it, and is swapped in by one short transaction. Until the swap
//! the live schema is untouched; a restore killed before it leaves the tenant as it was, and its
//! leftover is found and dropped by `cleanup --orphans`. Verify never touches the live schema.

use crate::support::*;

const STAGING: &str =
    "SELECT coalesce(string_agg(nspname, ','), '') FROM pg_namespace WHERE nspname LIKE 'bienestar\\_\\_restore\\_%'";

#[test]
fn the_live_schema_is_untouched_until_the_swap_and_a_killed_restore_leaves_it_as_it_was() {
    let db = TestDb::new();
    for format in ["sql", "json"] {
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let id = b["id"].to_string();
        let in_backup = db.sql("SELECT count(*) FROM bienestar.appointments_tag");
        db.sql("INSERT INTO bienestar.appointments_tag (name) VALUES ('after the backup')");
        let live = db.fingerprint("bienestar");
        // The application holds the schema's catalog row: the swap waits for it.
        let app = AppSession::start(
            &db,
            "holder",
            "BEGIN; GRANT USAGE ON SCHEMA bienestar TO PUBLIC; SELECT pg_sleep(600)",
        );
        let mut restore = db.spawn(&[
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &id,
            "--yes",
            "--lock-timeout",
            "120",
        ]);
        db.until_the_tool_waits_for_a_lock();
        // Loaded and committed, out of the application's sight; the live schema as it was.
        let staging = db.sql(STAGING);
        assert!(!staging.is_empty() && !staging.contains(','), "{format}: {staging:?}");
        assert_eq!(
            db.sql(&format!("SELECT count(*) FROM {}.appointments_tag", quote(&staging))),
            in_backup,
            "{format}: the staging schema holds the backup"
        );
        assert_eq!(db.fingerprint("bienestar"), live, "{format}");
        // Killed while it waits to swap: the tenant stays as it was.
        restore.kill().unwrap();
        restore.wait().unwrap();
        drop(app);
        assert_eq!(db.fingerprint("bienestar"), live, "{format}");
        // The leftover is named by `cleanup --orphans` and dropped by `--fix`.
        let out = db.cmd().args(["cleanup", "--orphans"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("staging schema {staging}: left by a restore")),
            "{}",
            text(&out.stdout)
        );
        assert_eq!(db.sql(STAGING), staging, "a listing drops nothing");
        let out = db.cmd().args(["cleanup", "--orphans", "--fix"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("dropped"), "{}", text(&out.stdout));
        assert_eq!(db.sql(STAGING), "");
        // (--fix also deletes the fixture's history rows whose objects never existed.)
        assert_eq!(
            without_history(db.fingerprint("bienestar")),
            without_history(live),
            "{format}"
        );
        db.sql("DELETE FROM bienestar.appointments_tag WHERE name = 'after the backup'");
    }
}

#[test]
fn a_staging_schema_of_a_running_restore_is_never_dropped_by_cleanup() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "bienestar"]);
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
        &b["id"].to_string(),
        "--yes",
        "--lock-timeout",
        "120",
    ]);
    db.until_the_tool_waits_for_a_lock();
    let staging = db.sql(STAGING);
    let out = db.cmd().args(["cleanup", "--orphans", "--fix"]).output().unwrap();
    assert!(
        text(&out.stdout).contains(&format!(
            "staging schema {staging}: kept: a restore of this tenant is running"
        )),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(db.sql(STAGING), staging);
    drop(app);
    let out = restore.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.sql(STAGING), "", "swapped in, nothing left");
    // Loaded as the loader role, handed to the tenant's owner, the role put back to rest.
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'bienestar' AND c.relowner <> n.nspowner"
        ),
        "0"
    );
    let role = tenant_backup::restore::loader::loader_role(&db.name);
    assert_eq!(
        db.sql(&format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")),
        "f"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid WHERE r.rolname = '{role}' \
             AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )),
        "0",
        "the loader owns and holds nothing"
    );
}

#[test]
fn verify_never_touches_the_live_schema() {
    let db = TestDb::new();
    for format in ["sql", "json"] {
        db.backup(&["--tenant", "bienestar", "--format", format]);
        // The application holds the live schema's catalog row: a verify that renamed it aside
        // (even inside a rolled-back transaction) would wait for it and time out.
        let app = AppSession::start(
            &db,
            "holder",
            "BEGIN; GRANT USAGE ON SCHEMA bienestar TO PUBLIC; SELECT pg_sleep(600)",
        );
        let out = db
            .cmd()
            .args(["verify", "--tenant", "bienestar", "--lock-timeout", "3"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("match"), "{}", text(&out.stdout));
        drop(app);
        assert_eq!(db.sql(STAGING), "", "verify drops its staging schema");
    }
}
