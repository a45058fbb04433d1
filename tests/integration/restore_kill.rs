//! Issue #28: a restore killed at any step leaves the tenant as it was. The debug build kills
//! itself (SIGKILL: no destructor, no deferred cleanup runs) at the step `TENANT_BACKUP_KILL_AT`
//! names (`restore::engine`'s failpoints); after each kill the live tenant is exactly as before,
//! whatever the kill left behind is found and dropped by `cleanup --orphans --fix`, and the next
//! restore runs. Killed just after the swap's COMMIT, the tenant is the restored one.

use std::os::unix::process::ExitStatusExt;

use crate::support::*;

const STAGING: &str =
    "SELECT coalesce(string_agg(nspname, ','), '') FROM pg_namespace WHERE nspname LIKE 'bienestar\\_\\_restore\\_%'";

/// Every step of `restore::engine::Engine::restore`, in order, before the swap.
const BEFORE_THE_SWAP: [&str; 6] = ["locked", "staged", "loaded", "built", "history", "handed-over"];

/// The restore the test runs, killed or not.
fn restore_args(id: &str) -> [&str; 7] {
    [
        "restore",
        "--tenant",
        "bienestar",
        "--id",
        id,
        "--yes",
        "--drop-previous",
    ]
}

fn restore_killed_at(db: &TestDb, id: &str, step: &str) {
    let out = db
        .cmd()
        .env("TENANT_BACKUP_KILL_AT", step)
        .args(restore_args(id))
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{step}: the restore was to be killed there: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn a_restore_killed_at_every_step_leaves_the_tenant_as_it_was() {
    let db = TestDb::new();
    for format in ["sql", "json"] {
        let b = db.backup(&["--tenant", "bienestar", "--format", format]);
        let id = b["id"].to_string();
        let restored = db.data("bienestar");
        db.sql("INSERT INTO bienestar.appointments_tag (name) VALUES ('after the backup')");
        // (--fix deletes the fixture's history rows whose objects never existed: done once first.)
        db.ok(&["cleanup", "--orphans", "--fix"]);
        let live = db.fingerprint("bienestar");
        let schemas = db.schemas();
        for step in BEFORE_THE_SWAP {
            restore_killed_at(&db, &id, step);
            assert_eq!(db.fingerprint("bienestar"), live, "{format}, killed at {step}");
            // A leftover staging schema, if the kill left one, is found and dropped; nothing else
            // changed.
            let fixed = db.ok(&["cleanup", "--orphans", "--fix"]);
            assert_eq!(db.sql(STAGING), "", "{format}, killed at {step}: {fixed}");
            assert_eq!(db.schemas(), schemas, "{format}, killed at {step}");
            assert_eq!(db.fingerprint("bienestar"), live, "{format}, killed at {step}");
        }
        // Killed right after the swap's COMMIT: the restore is done (the previous schema, which
        // the kill kept from being settled, is still aside), and nothing is left to clean but it.
        restore_killed_at(&db, &id, "swapped");
        assert_eq!(db.data("bienestar"), restored, "{format}: the swap had committed");
        assert_eq!(db.sql(STAGING), "", "{format}");
        let previous = db.sql(
            "SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname LIKE 'bienestar\\_\\_pre\\_restore\\_%'",
        );
        assert!(!previous.contains(','), "{previous}");
        db.sql(&format!("DROP SCHEMA {} CASCADE", quote(&previous)));
        // The next restore runs, and the loader role is back at rest after it.
        db.ok(&restore_args(&id));
        assert_eq!(db.data("bienestar"), restored, "{format}");
        let role = tenant_backup::restore::loader::loader_role(&db.name);
        assert_eq!(
            db.sql(&format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")),
            "f",
            "{format}"
        );
    }
}
