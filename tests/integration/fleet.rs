//! Many tenants: `list`, `status` and `cleanup --dry-run` read them in a number of statements
//! that does not grow with every tenant, a run keeps one connection per worker, and a failing
//! tenant or overlapping workers change nothing of that. (`cargo bench --bench fleet` measures
//! the same paths at 1,000 and 10,000 tenants.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;

use crate::support::*;

/// `n` more tenants `fleet_0001…`, each a copy of mindcare's `tables` (all of them when empty)
/// with their rows, due daily.
fn clone_tenants(db: &TestDb, n: usize, tables: &[&str]) {
    let filter = if tables.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = tables.iter().map(|t| format!("'{t}'")).collect();
        format!("AND tablename IN ({})", names.join(", "))
    };
    db.sql(&format!(
        "DO $$ DECLARE s text; t text; BEGIN
           FOR i IN 1..{n} LOOP
             s := 'fleet_' || lpad(i::text, 4, '0');
             EXECUTE format('CREATE SCHEMA %I', s);
             FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'mindcare' {filter} LOOP
               EXECUTE format('CREATE TABLE %I.%I (LIKE mindcare.%I INCLUDING ALL)', s, t, t);
               EXECUTE format('INSERT INTO %I.%I SELECT * FROM mindcare.%I', s, t, t);
             END LOOP;
             INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES (s, 'Fleet ' || i, 'daily');
           END LOOP;
         END $$"
    ));
}

/// The cluster's log (the test cluster writes it beside its data directory).
fn server_log(db: &TestDb) -> PathBuf {
    let data = PathBuf::from(db.sql("SELECT current_setting('data_directory')"));
    data.parent().unwrap().join("postgres.log")
}

/// What the server ran for this database while `f` ran: `(statements, each server process's
/// first statement)`, from its log with `log_statement = all` set on this database alone for the
/// time (one test at a time: the log is the cluster's).
fn statements(db: &TestDb, f: impl FnOnce()) -> (usize, Vec<String>) {
    static LOG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let database = quote(&db.name);
    db.sql(&format!("ALTER DATABASE {database} SET log_statement = 'all'"));
    // Each call's marks are its own (the log holds every earlier call's too).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mark = |what: &str| {
        let m = format!("tb-mark-{what}-{}-{}-{call}", db.name, std::process::id());
        db.sql(&format!("SELECT '{m}'"));
        m
    };
    let start = mark("start");
    f();
    let end = mark("end");
    db.sql(&format!("ALTER DATABASE {database} RESET log_statement"));
    let log = std::fs::read_to_string(server_log(db)).unwrap();
    let from = log.find(&start).expect("the start mark in the server log");
    let to = log[from..].find(&end).map(|i| from + i).expect("the end mark");
    // Up to the start of the end mark's line.
    let to = log[..to].rfind('\n').unwrap_or(to);
    let mut count = 0;
    let mut pids = BTreeSet::new();
    let mut firsts = Vec::new();
    for line in log[from..to].lines().skip(1) {
        if line.contains("LOG:  statement: ") || line.contains("LOG:  execute ") {
            if line.contains("tb-mark-") {
                continue;
            }
            count += 1;
            if let Some(pid) = line.split('[').nth(1).and_then(|p| p.split(']').next()) {
                if pids.insert(pid.to_string()) {
                    firsts.push(line.to_string());
                }
            }
        }
    }
    (count, firsts)
}

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn list_status_and_cleanups_plan_read_all_tenants_in_a_few_statements_not_a_few_per_tenant() {
    let db = TestDb::new();
    // A bucket cleanup can see (it proves that before it reads any tenant).
    std::fs::create_dir_all(db.storage()).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = db.cmd();
        cmd.args(args);
        move || {
            let out = cmd.output().unwrap();
            assert!(out.status.code().is_some_and(|c| c <= 1), "{}", text(&out.stderr));
        }
    };
    let commands: [&[&str]; 3] = [
        &["--json", "list"],
        &["--json", "status"],
        &["--json", "cleanup", "--dry-run", "--days", "30", "--orphans"],
    ];
    let few: Vec<usize> = commands.iter().map(|c| statements(&db, run(c)).0).collect();
    let listed_few: Value =
        serde_json::from_slice(&db.cmd().args(["--json", "list"]).output().unwrap().stdout).unwrap();

    // 3 tenants become 153: two statement chunks instead of one, not 300 more statements.
    clone_tenants(&db, 150, &["backups_backuprecord", "users_user"]);
    let many: Vec<usize> = commands.iter().map(|c| statements(&db, run(c)).0).collect();
    for ((c, a), b) in commands.iter().zip(&few).zip(&many) {
        assert!(*b <= a + 3, "{c:?}: {a} statements for 3 tenants, {b} for 153");
    }

    // The same answers as one query per tenant gave: every tenant, newest first, with creators.
    let out = db.cmd().args(["--json", "list"]).output().unwrap();
    ok(&out);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tenants = listed.as_array().unwrap();
    assert_eq!(tenants.len(), 153);
    assert_eq!(tenants[0], listed_few[0], "bienestar as before");
    let copy = tenants.iter().find(|t| t["tenant"] == "fleet_0150").unwrap();
    let original = listed_few
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "mindcare")
        .unwrap();
    assert_eq!(copy["backups"], original["backups"]);
    let out = db.cmd().args(["--json", "status"]).output().unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 153);
}

#[test]
fn backup_all_keeps_one_connection_per_worker_and_a_failing_tenant_fails_alone() {
    let db = TestDb::new();
    clone_tenants(&db, 12, &[]);
    // A tenant row whose schema is gone: its backup fails, nobody else's.
    db.sql("INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('fleet_0006b', 'Gone', 'daily')");
    let mut out = None;
    let (count, processes) = statements(&db, || {
        out = Some(
            db.cmd()
                .args([
                    "--json",
                    "--no-progress",
                    "backup",
                    "--all",
                    "--format",
                    "json",
                    "--concurrency",
                    "2",
                ])
                .output()
                .unwrap(),
        );
    });
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 16);
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| r["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["fleet_0006b"]);
    assert!(results
        .iter()
        .any(|r| r["error"].as_str().is_some_and(|e| e.contains("fleet_0006b"))));
    for r in results.iter().filter(|r| r["status"] == "backed_up") {
        let t = r["tenant"].as_str().unwrap();
        assert_eq!(
            db.sql(&format!(
                "SELECT count(*) FROM {}.backups_backuprecord WHERE file_path LIKE '%-json-%'",
                quote(t)
            )),
            "1",
            "{t}"
        );
    }
    // The structure of the tenants is read for all of them at once (a dozen catalog statements
    // per tenant before, 37 statements a tenant in all: 592 here; 428 once batched): a tenant now
    // costs its lock, its backupable check, one round trip that begins its snapshot (importing
    // the batched read's) and reads its sequences, its 15 tables' COPY, the rewrite check with the
    // COMMIT, and its row (BEGIN, the INSERT that also returns its transaction id, COMMIT), then
    // the unlock: 23, and the batched read's own: 374 here (round 1: 428).
    eprintln!("{count} statements for 16 tenants");
    assert!(count <= 24 * 16, "{count} statements for 16 tenants");
    // The catalog connection, two workers, one more after the failed tenant's was dropped, and
    // the one holding the batched read's snapshot for the tenants to import.
    assert!(
        processes.len() <= 5,
        "{} server processes for 16 tenants: {processes:#?}",
        processes.len()
    );
}

#[test]
fn overlapping_ticks_over_more_tenants_than_workers_back_up_each_exactly_once() {
    let db = TestDb::new();
    clone_tenants(&db, 9, &[]);
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
    let children: Vec<_> = (0..6)
        .map(|_| {
            crate::support::tool()
                .args([
                    "run-scheduled",
                    "--json",
                    "--no-progress",
                    "--format",
                    "json",
                    "--concurrency",
                    "2",
                ])
                .env("DATABASE_URL", db.url())
                .env("BACKUP_STORAGE", db.storage())
                .current_dir(db.dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut backed_up = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        ok(&out);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        backed_up += v["backed_up"].as_u64().unwrap();
    }
    assert_eq!(backed_up, 12, "each of the 12 due tenants once across all workers");
    let schemas = db.sql("SELECT schema_name FROM public.tenants_clinic WHERE schema_name <> 'public'");
    for t in schemas.lines() {
        let n = db.sql(&format!(
            "SELECT count(*) FROM {}.backups_backuprecord WHERE backup_type = 'automatic' AND created_at > now() - interval '1 hour'",
            quote(t)
        ));
        assert_eq!(n, "1", "{t}");
    }
    assert_eq!(db.objects().len(), 24, "an object and a manifest per tenant");
}

/// `schema`'s json dump as the backup streams it (fixed time and version), with `prefetched`.
async fn json_dump(
    client: &tokio_postgres::Client,
    schema: &str,
    prefetched: Option<tenant_backup::jsonl::Prefetched>,
) -> String {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        tenant_backup::jsonl::JsonLinesReader::new(rx)
            .read_to_string(&mut text)
            .map(|_| text)
    });
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    tenant_backup::jsonl::dump(client, schema, "15", at, None, prefetched, tx)
        .await
        .unwrap();
    reader.await.unwrap().unwrap()
}

#[test]
fn the_structure_read_for_many_tenants_at_once_is_used_only_while_the_tenants_own_snapshot_shows_the_same_catalog() {
    let db = TestDb::new();
    let index = db.sql(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'mindcare' AND tablename = 'appointments_tag' ORDER BY 1 LIMIT 1",
    );
    // Migrations that land between the batched read and the tenant's snapshot, and what each
    // leaves in the dump.
    let migrations = [
        (
            "ALTER TABLE mindcare.appointments_tag ADD COLUMN color text NOT NULL DEFAULT 'red'",
            "\"color\":\"red\"",
        ),
        (
            &*format!(
                "ALTER INDEX mindcare.{} RENAME TO tag_renamed_by_a_migration",
                quote(&index)
            ),
            "tag_renamed_by_a_migration",
        ),
        (
            "COMMENT ON COLUMN mindcare.appointments_tag.name IS 'commented by a migration'",
            "commented by a migration",
        ),
        ("ALTER TABLE mindcare.appointments_tag DROP COLUMN color", ""),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        // As a run's connections do.
        tenant_backup::jsonl::prepare_fingerprint(&client).await.unwrap();
        let schemas: Vec<String> = vec!["mindcare".into(), "bienestar".into(), "no_such_schema".into()];

        // Nothing changed: the batched structure gives the very dump a tenant's own read gives.
        let mut read = tenant_backup::jsonl::prefetch(&client, &schemas).await.unwrap();
        assert_eq!(read.keys().collect::<Vec<_>>(), ["bienestar", "mindcare"]);
        for schema in ["mindcare", "bienestar"] {
            let batched = json_dump(&client, schema, read.remove(schema)).await;
            assert_eq!(batched, json_dump(&client, schema, None).await, "{schema}");
        }

        for (migration, seen) in migrations {
            let mut read = tenant_backup::jsonl::prefetch(&client, &schemas).await.unwrap();
            db.sql(migration);
            let dumped = json_dump(&client, "mindcare", read.remove("mindcare")).await;
            assert!(dumped.contains(seen), "{migration}: {seen} not in the dump");
            assert_eq!(
                dumped,
                json_dump(&client, "mindcare", None).await,
                "{migration}: the dump must match the structure of its own snapshot"
            );
            // The tenant the migration did not touch still uses the batched read, unchanged.
            let other = json_dump(&client, "bienestar", read.remove("bienestar")).await;
            assert_eq!(other, json_dump(&client, "bienestar", None).await);
        }
        drop(client);
        let _ = task.await;
    });
}

#[test]
fn a_dump_in_the_batched_reads_exported_snapshot_is_the_dump_of_that_moment_and_falls_back_once_it_is_let_go() {
    use tenant_backup::jsonl::{prefetch_exported, SnapshotLease};
    let db = TestDb::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = || async {
            let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        };
        let (client, holder, later) = (connect().await, connect().await, connect().await);
        tenant_backup::jsonl::prepare_fingerprint(&client).await.unwrap();
        let schemas: Vec<String> = vec!["mindcare".into(), "bienestar".into()];
        let leased = |read: &std::collections::BTreeMap<String, tenant_backup::jsonl::Prefetched>, id: &str| {
            let mut part = read["mindcare"].clone();
            part.snapshot = Some(std::sync::Arc::new(SnapshotLease {
                id: id.to_string(),
                on_drop: None,
            }));
            part
        };

        // Nothing changed: the same dump a tenant's own read gives.
        let before = json_dump(&client, "mindcare", None).await;
        let (id, read) = prefetch_exported(&holder, &schemas).await.unwrap();
        assert_eq!(json_dump(&client, "mindcare", Some(leased(&read, &id))).await, before);

        // Whatever commits after the snapshot, structure or rows, is not in the dump: it is the
        // dump of the moment the structure was read, both from one snapshot.
        let (later_id, later_read) = prefetch_exported(&later, &schemas).await.unwrap();
        db.sql(
            "COMMENT ON COLUMN mindcare.appointments_tag.name IS 'commented by a migration'; \
             ALTER TABLE mindcare.appointments_tag ADD COLUMN color text NOT NULL DEFAULT 'red'; \
             UPDATE mindcare.appointments_patient SET notes = 'changed after the snapshot'",
        );
        let dumped = json_dump(&client, "mindcare", Some(leased(&later_read, &later_id))).await;
        assert_eq!(dumped, before);

        // Once the holder let its snapshot go, the dump checks the fingerprint in its own
        // snapshot instead, sees the migration, and reads the structure again.
        holder.batch_execute("COMMIT").await.unwrap();
        let after = json_dump(&client, "mindcare", Some(leased(&read, &id))).await;
        assert!(after.contains("commented by a migration") && after.contains("changed after the snapshot"));
        assert_eq!(after, json_dump(&client, "mindcare", None).await);
        later.batch_execute("COMMIT").await.unwrap();
    });
}

/// The scans of `plan` (EXPLAIN's JSON) that read one of the catalogs growing with every tenant
/// without an index condition: the whole catalog, every tenant's rows.
fn whole_catalog_scans(plan: &Value, out: &mut Vec<String>) {
    const GROWING: [&str; 10] = [
        "pg_class",
        "pg_attribute",
        "pg_depend",
        "pg_type",
        "pg_constraint",
        "pg_index",
        "pg_attrdef",
        "pg_description",
        "pg_sequence",
        "pg_trigger",
    ];
    if let Some(rel) = plan["Relation Name"].as_str() {
        if GROWING.contains(&rel) && plan.get("Index Cond").is_none() {
            out.push(format!("{} on {rel}", plan["Node Type"]));
        }
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        whole_catalog_scans(child, out);
    }
}

#[test]
fn the_names_a_run_reads_for_the_restore_guard_come_through_indexes_not_every_tenants_catalog_rows() {
    // Before: the scope read every relation (to find pg_catalog's) and joined every type,
    // function and operator to pg_depend (to find extensions' members): at 10,000 tenants most
    // of a one-tenant backup's time.
    let db = TestDb::new();
    for q in tenant_backup::restore::guard::NAMES_QUERIES {
        let plan = db.sql(&format!(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; EXPLAIN (FORMAT JSON) {q}"
        ));
        let plan: Value = serde_json::from_str(&plan[plan.find('[').expect("a plan")..]).unwrap();
        let mut whole = Vec::new();
        whole_catalog_scans(&plan[0]["Plan"], &mut whole);
        assert!(whole.is_empty(), "{whole:?} in {q}");
    }
}
