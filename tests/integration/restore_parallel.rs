//! Issue #28, the parallel load: a json restore loads its rows into the staging schema on its
//! `--jobs` loader connections at once (each in a transaction of its own), and a failure on any of
//! them leaves the tenant as it was, the staging schema dropped and the loader at rest.

use serde_json::Value;

use crate::support::*;

const STAGING: &str =
    "SELECT coalesce(string_agg(nspname, ','), '') FROM pg_namespace WHERE nspname LIKE 'bienestar\\_\\_%'";

/// Enough rows in one table for its load to come in many pieces (about 3 MB of COPY text).
fn grow(db: &TestDb) {
    db.sql(
        "INSERT INTO bienestar.appointments_tag (name) \
         SELECT 'tag ' || g || ' ' || md5(g::text) FROM generate_series(1, 60000) g",
    );
}

/// How many transactions wrote the rows of `table`: one per loader connection that loaded some.
fn writers(db: &TestDb, table: &str) -> String {
    db.sql(&format!("SELECT count(DISTINCT xmin::text) FROM bienestar.{table}"))
}

#[test]
fn a_json_restore_loads_one_table_on_every_jobs_connection() {
    let db = TestDb::new();
    grow(&db);
    let id = db.backup(&["--tenant", "bienestar", "--format", "json"])["id"].to_string();
    let data = db.data("bienestar");
    for (jobs, expected) in [("2", "2"), ("1", "1")] {
        db.ok(&[
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &id,
            "--yes",
            "--drop-previous",
            "--jobs",
            jobs,
        ]);
        assert_eq!(writers(&db, "appointments_tag"), expected, "--jobs {jobs}");
        assert_eq!(db.data("bienestar"), data, "--jobs {jobs}: every row restored");
        assert_eq!(db.sql(STAGING), "", "--jobs {jobs}");
    }
    // Verify loads in one transaction and counts every table as before.
    let out = db
        .cmd()
        .args(["verify", "--tenant", "bienestar", "--id", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("match"), "{}", text(&out.stdout));
}

#[test]
fn a_copy_failing_on_one_loader_connection_rolls_the_whole_load_back() {
    let db = TestDb::new();
    grow(&db);
    let b = db.backup(&["--tenant", "bienestar", "--format", "json", "--compress", "none"]);
    let key = b["key"].as_str().unwrap().to_string();
    let mut lines: Vec<String> = object_text(&db, &key).lines().map(str::to_string).collect();
    // One of the table's last rows breaks its NOT NULL: by then both connections have loaded
    // pieces of the table (and of the tables before it).
    let start = lines
        .iter()
        .position(|l| l.starts_with("[\"table\"") && l.contains("\"name\":\"appointments_tag\""))
        .unwrap();
    let end = start + 1 + lines[start + 1..].iter().take_while(|l| l.starts_with('{')).count();
    assert!(end - start > 50_000, "{}", end - start);
    let mut row: Value = serde_json::from_str(&lines[end - 10]).unwrap();
    row["name"] = Value::Null;
    lines[end - 10] = serde_json::to_string(&row).unwrap();
    tamper(&db, &key, (lines.join("\n") + "\n").as_bytes());
    let live = db.fingerprint("bienestar");
    let out = db.run(&[
        "restore",
        "--tenant",
        "bienestar",
        "--file",
        &key,
        "--yes",
        "--jobs",
        "2",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("appointments_tag"), "{stderr}");
    assert!(stderr.contains("not-null") || stderr.contains("null value"), "{stderr}");
    assert_eq!(db.fingerprint("bienestar"), live, "the tenant is untouched");
    assert_eq!(db.sql(STAGING), "", "the staging schema is dropped, nothing set aside");
    let role = tenant_backup::restore::loader::loader_role(&db.name);
    assert_eq!(
        db.sql(&format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")),
        "f"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND datname = current_database()"
        )),
        "0",
        "no loader session is left"
    );
}
