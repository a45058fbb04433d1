//! The native json format: round trip of every type Django uses, version matching, `--format auto`.

use serde_json::Value;

use crate::support::*;

/// A table with every awkward type and value, in bienestar.
fn add_all_types(db: &TestDb) {
    db.sql(
        r#"CREATE TABLE bienestar.all_types (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             b bytea, j jsonb, js json, n numeric, n2 numeric(30,10), ts timestamptz, d date, t time, iv interval,
             u uuid, ip inet, ints integer[], texts text[], flag boolean, body text, f8 double precision,
             doubled bigint GENERATED ALWAYS AS (id * 2) STORED);
           INSERT INTO bienestar.all_types (b, j, js, n, n2, ts, d, t, iv, u, ip, ints, texts, flag, body, f8) VALUES
             ('\x00ff00'::bytea, '{"a": [1, null, "x"]}', '{"k":  "spaced"}', -12345678901234567890.123456789, -0.0000000001,
              '2025-06-03 15:45:12.345678+00', '2024-02-29', '23:59:59.999999', '1 year 2 mons 3 days 04:05:06.789',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '{1,2,NULL}', '{"a b","c\"d",NULL}', true,
              E'line1\r\nline2\\back\n\\.\nend ñ 漢字 🙂', 0.1),
             (NULL, 'null', 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', '{}', false, '', 'NaN'),
             ('', NULL, NULL, 0, 99999999999999999999.9999999999, '-infinity', 'infinity', '00:00', '-1 day', NULL, '::1', NULL, NULL, NULL, NULL, '-Infinity');
           -- Structure the json restore rebuilds (or, where it cannot put it back exactly, leaves alone).
           ALTER TABLE bienestar.all_types ADD CONSTRAINT all_types_u_uniq UNIQUE (u) DEFERRABLE INITIALLY DEFERRED;
           CREATE UNIQUE INDEX all_types_body_flag ON bienestar.all_types (lower(body)) WHERE flag;
           CREATE INDEX all_types_ts ON bienestar.all_types (ts DESC NULLS LAST);
           COMMENT ON INDEX bienestar.all_types_ts IS 'kept in place';
           CREATE INDEX all_types_d ON bienestar.all_types (d);
           ALTER TABLE bienestar.all_types CLUSTER ON all_types_d;
           ALTER TABLE bienestar.all_types ADD COLUMN clinic_id bigint REFERENCES public.tenants_clinic (id) DEFERRABLE INITIALLY DEFERRED;
           UPDATE bienestar.all_types SET clinic_id = (SELECT min(id) FROM public.tenants_clinic);"#,
    );
}

fn json_backup(db: &TestDb, tenant: &str, extra: &[&str]) -> Value {
    db.backup(&[&["--tenant", tenant, "--format", "json"][..], extra].concat())
}

#[test]
fn json_round_trips_every_type_and_keeps_the_history() {
    let db = TestDb::new();
    add_all_types(&db);
    let before = db.data("bienestar");
    let structure = db.structure("bienestar");
    assert!(
        structure.contains("all_types_body_flag") && structure.contains("FOREIGN KEY"),
        "{structure}"
    );
    let seq_before = db.sql("SELECT last_value FROM bienestar.all_types_id_seq");
    let b = json_backup(&db, "bienestar", &[]);
    let key = b["key"].as_str().unwrap();
    assert!(
        key.starts_with("bienestar/backup-json-bienestar-") && key.ends_with(".json.zst"),
        "{key}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(db.storage().join(format!("{key}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(manifest["format"], "json");
    assert_eq!(manifest["row_counts"]["appointments_appointment"], 1000);
    assert_eq!(manifest["row_counts"]["all_types"], 3);

    // Damage it all, then restore.
    db.sql(
        "DELETE FROM bienestar.appointments_appointment WHERE id % 2 = 0; UPDATE bienestar.all_types SET body = 'x'; \
         INSERT INTO bienestar.all_types (body) VALUES ('new'); UPDATE bienestar.appointments_patient SET notes = 'changed'",
    );
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "bienestar",
            "--id",
            &b["id"].to_string(),
            "--yes",
        ])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.data("bienestar"), before, "every table identical to the backup");
    assert_eq!(
        db.structure("bienestar"),
        structure,
        "indexes and constraints put back as they were"
    );
    assert_eq!(db.sql("SELECT last_value FROM bienestar.all_types_id_seq"), seq_before);
    assert_eq!(db.sql("SELECT doubled = id * 2 FROM bienestar.all_types LIMIT 1"), "t");
    // History: both backups kept, and the next one gets a fresh id.
    assert_eq!(db.sql("SELECT count(*) FROM bienestar.backups_backuprecord"), "4");
    let next = json_backup(&db, "bienestar", &[]);
    assert!(next["id"].as_i64().unwrap() > 4);
}

#[test]
fn json_verify_passes_and_leaves_no_trace_and_a_changed_schema_is_refused() {
    let db = TestDb::new();
    let b0 = json_backup(&db, "mindcare", &["--compress", "gzip"]);
    let live = db.fingerprint("mindcare");
    // The clinic is writing meanwhile (a transaction holding a row lock): verify only reads the
    // live tables, so it neither waits for the writer nor blocks it.
    let mut writer = cluster()
        .psql_command(&db.name)
        .args([
            "-c",
            "UPDATE mindcare.appointments_patient SET notes = notes WHERE id = (SELECT min(id) FROM mindcare.appointments_patient); SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND relation = 'mindcare.appointments_patient'::regclass AND mode = 'RowExclusiveLock' AND granted";
    for _ in 0..100 {
        if db.sql(held) == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(db.sql(held), "1", "the writer never got its lock");
    let out = db
        .cmd()
        .args(["verify", "--tenant", "mindcare", "--lock-timeout", "2"])
        .output()
        .unwrap();
    db.sql(&held.replace("count(*)", "pg_terminate_backend(pid)"));
    let _ = writer.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("row counts match"), "{}", text(&out.stdout));
    assert_eq!(db.fingerprint("mindcare"), live);

    // A dump whose rows break a foreign key fails verify, naming the key.
    let b = json_backup(&db, "mindcare", &["--compress", "none"]);
    let key = b["key"].as_str().unwrap();
    let live = db.fingerprint("mindcare");
    let dump = std::fs::read_to_string(db.storage().join(key)).unwrap();
    std::fs::write(db.storage().join(key), orphan_first_patient_ref(&dump)).unwrap();
    std::fs::remove_file(db.storage().join(format!("{key}.manifest.json"))).unwrap();
    let out = db
        .cmd()
        .args(["verify", "--tenant", "mindcare", "--id", &b["id"].to_string()])
        .output()
        .unwrap();
    assert_fails(&out, 1, "violates foreign key constraint");
    assert_eq!(db.fingerprint("mindcare"), live);

    // A version 3 dump brings back the schema as it was backed up, as a plain dump does; the
    // changed one is kept aside.
    let before_changes = db.data("mindcare");
    db.sql("ALTER TABLE mindcare.appointments_patient DROP COLUMN notes");
    let out = db
        .cmd()
        .args([
            "restore",
            "--tenant",
            "mindcare",
            "--id",
            &b0["id"].to_string(),
            "--yes",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.data("mindcare"), before_changes);
    let kept =
        db.sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'mindcare__pre_restore_%' ORDER BY 1 DESC LIMIT 1");
    assert_eq!(
        db.sql(&format!("SELECT count(*) FROM information_schema.columns WHERE table_schema = '{kept}' AND table_name = 'appointments_patient' AND column_name = 'notes'")),
        "0"
    );
}

#[test]
fn auto_falls_back_to_json_when_pg_dump_is_older_or_missing_and_sql_refuses() {
    let db = TestDb::new();
    let old = db.dir.path().join("old_pg_dump");
    std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.9'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let missing = db.dir.path().join("no_such_pg_dump");
    // An explicit pg_dump that does not exist is a mistake to fix, not a reason to switch formats.
    let out = db
        .cmd()
        .env("PG_DUMP", &missing)
        .args(["--json", "backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "--pg-dump / PG_DUMP");
    assert!(!text(&out.stderr).contains("native json"), "{}", text(&out.stderr));
    {
        let pg_dump = &old;
        let out = db
            .cmd()
            .env("PG_DUMP", pg_dump)
            .args(["--json", "backup", "--tenant", "mindcare"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("using the native json format"),
            "{}",
            text(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v[0]["backup"]["key"]
            .as_str()
            .unwrap()
            .contains("/backup-json-mindcare-"));

        let out = db
            .cmd()
            .env("PG_DUMP", pg_dump)
            .args(["backup", "--tenant", "mindcare", "--format", "sql"])
            .output()
            .unwrap();
        // Something to install or point at: a configuration error.
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("postgresql-client-15") || stderr.contains("12.9"),
            "{stderr}"
        );
    }
    // A restore of the json backup needs no pg_dump either.
    let out = db
        .cmd()
        .env("PG_DUMP", &missing)
        .args(["restore", "--tenant", "mindcare", "--latest", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn doctor_reports_a_healthy_and_a_broken_setup() {
    let db = TestDb::new();
    let out = db.cmd().args(["doctor"]).output().unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "database",
        "tenants",
        "pooler",
        "session",
        "pg_dump found",
        "pg_dump used",
        "storage",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(line)),
            "{line}: {stdout}"
        );
    }
    assert!(stdout.contains("3 tenants in public.tenants_clinic"), "{stdout}");
    // Each pg_dump once (Debian's /usr/bin wrapper reports the same version as the real one), and
    // the storage probe leaves nothing behind, not even an empty folder.
    let found = stdout.lines().find(|l| l.contains("pg_dump found")).unwrap();
    let versions: Vec<&str> = found.split(", ").map(|d| d.rsplit(' ').next().unwrap()).collect();
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(versions, unique, "{found}");
    let left: Vec<_> = std::fs::read_dir(db.storage())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // Storage that cannot be written, and a pg_dump too old: storage fails, json is the way out.
    std::fs::write(db.dir.path().join("blocked"), b"a file, not a directory").unwrap();
    let old = fake_pg_dump(db.dir.path(), "exit 1");
    std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.1'\n").unwrap();
    let out = db
        .cmd()
        .env("BACKUP_STORAGE", db.dir.path().join("blocked"))
        .env("PG_DUMP", &old)
        .args(["doctor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("storage")),
        "{stdout}"
    );
    assert!(stdout.contains("native json"), "{stdout}");

    let out = db
        .cmd()
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:{}@127.0.0.1:1/x", cluster().password),
        )
        .args(["doctor"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout)
        .lines()
        .any(|l| l.starts_with("FAIL") && l.contains("database")));
}

#[test]
fn pg_dump_is_chosen_among_fakes_on_path_reporting_older_and_newer_versions() {
    let db = TestDb::new();
    let server: u32 = db
        .sql("SELECT current_setting('server_version_num')::int / 10000")
        .parse()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let fake_dir = |name: &str, version: &str| {
        let dir = db.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pg_dump");
        std::fs::write(&p, format!("#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    };
    let older = fake_dir("older", &format!("{}.9", server - 1));
    let newest = fake_dir("newest", "99.0");
    let path = std::env::join_paths(
        [older.clone(), newest.clone()]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let out = db
        .cmd()
        .env_remove("PG_DUMP")
        .env("PATH", &path)
        .args(["--json", "doctor"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["detail"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} check in {checks}"))
    };
    let found = detail("pg_dump found");
    assert!(
        found.contains(&format!("{} {}.9", older.join("pg_dump").display(), server - 1))
            && found.contains(&format!("{} 99.0", newest.join("pg_dump").display())),
        "{found}"
    );
    // The matching one the tests' server came with beats both: lowest major >= the server's.
    let used = detail("pg_dump used");
    assert!(
        used.contains(&format!("({server}.")) && !used.contains("older") && !used.contains("newest"),
        "{used}"
    );
    // A backup with that PATH really dumps with the matching pg_dump (sql, not the json fallback).
    let out = db
        .cmd()
        .env_remove("PG_DUMP")
        .env("PATH", &path)
        .args(["--json", "backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v[0]["backup"]["key"]
            .as_str()
            .unwrap()
            .contains("/backup-sql-mindcare-"),
        "{v}"
    );
}

/// What a Django schema may hold beyond the fixture's tables: an enum, a standalone sequence owned
/// by a column, a serial, a generated column, a collation, a NOT VALID check, expression and
/// partial indexes, a cluster mark, comments everywhere, functions (one parsed at creation, over
/// a row type), triggers (one disabled), views over views, a materialized view with an index, a
/// rule, extended statistics and a replica identity.
const EXTRAS: &str = r#"
CREATE TYPE mindcare.mood AS ENUM ('calm', 'anxious', 'it''s complicated');
COMMENT ON TYPE mindcare.mood IS 'how the patient feels';
CREATE SEQUENCE mindcare.invoice_number AS integer START 1000 INCREMENT 5 CACHE 3;
SELECT nextval('mindcare.invoice_number');
CREATE TABLE mindcare.billing_invoice (
  id serial PRIMARY KEY,
  number integer NOT NULL DEFAULT nextval('mindcare.invoice_number'),
  patient_id bigint NOT NULL REFERENCES mindcare.appointments_patient (id) DEFERRABLE INITIALLY DEFERRED,
  amount numeric(10,2) NOT NULL CHECK (amount >= 0),
  total_with_tax numeric(12,2) GENERATED ALWAYS AS (amount * 1.21) STORED,
  mood mindcare.mood,
  code text COLLATE "C" UNIQUE,
  issued_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz
) WITH (fillfactor = 80);
ALTER SEQUENCE mindcare.invoice_number OWNED BY mindcare.billing_invoice.number;
ALTER TABLE mindcare.billing_invoice ADD CONSTRAINT amount_sane CHECK (amount < 1000000) NOT VALID;
CREATE INDEX billing_invoice_lower_code ON mindcare.billing_invoice (lower(code)) WHERE code IS NOT NULL;
CREATE INDEX billing_invoice_issued ON mindcare.billing_invoice (issued_at DESC);
ALTER TABLE mindcare.billing_invoice CLUSTER ON billing_invoice_issued;
COMMENT ON TABLE mindcare.billing_invoice IS 'invoices, one per visit';
COMMENT ON COLUMN mindcare.billing_invoice.amount IS 'before tax';
COMMENT ON INDEX mindcare.billing_invoice_issued IS 'for the monthly report';
COMMENT ON CONSTRAINT amount_sane ON mindcare.billing_invoice IS 'nobody pays that much';
CREATE FUNCTION mindcare.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
COMMENT ON FUNCTION mindcare.touch_updated_at() IS 'keeps updated_at current';
CREATE TRIGGER billing_invoice_touch BEFORE UPDATE ON mindcare.billing_invoice FOR EACH ROW EXECUTE FUNCTION mindcare.touch_updated_at();
CREATE TRIGGER billing_invoice_quiet AFTER INSERT ON mindcare.billing_invoice FOR EACH ROW EXECUTE FUNCTION mindcare.touch_updated_at();
ALTER TABLE mindcare.billing_invoice DISABLE TRIGGER billing_invoice_quiet;
COMMENT ON TRIGGER billing_invoice_touch ON mindcare.billing_invoice IS 'updated_at';
CREATE FUNCTION mindcare.patient_total(p mindcare.appointments_patient) RETURNS numeric LANGUAGE sql STABLE
  BEGIN ATOMIC SELECT coalesce(sum(amount), 0) FROM mindcare.billing_invoice WHERE patient_id = p.id; END;
CREATE VIEW mindcare.invoice_totals AS SELECT patient_id, sum(amount) AS total, count(*) AS n FROM mindcare.billing_invoice GROUP BY patient_id;
CREATE VIEW mindcare.big_spenders WITH (security_barrier = true) AS SELECT * FROM mindcare.invoice_totals WHERE total > 100;
COMMENT ON VIEW mindcare.big_spenders IS 'for the front desk';
CREATE MATERIALIZED VIEW mindcare.monthly AS SELECT date_trunc('month', issued_at) AS month, sum(amount) AS total FROM mindcare.billing_invoice GROUP BY 1;
CREATE UNIQUE INDEX monthly_month ON mindcare.monthly (month);
CREATE RULE no_delete_vip AS ON DELETE TO mindcare.appointments_tag WHERE old.name = 'vip' DO INSTEAD NOTHING;
COMMENT ON SCHEMA mindcare IS 'the Mindcare clinic';
COMMENT ON COLUMN mindcare.appointments_patient.notes IS 'free text; may hold health data';
CREATE STATISTICS mindcare.patient_names (dependencies) ON first_name, last_name FROM mindcare.appointments_patient;
ALTER TABLE mindcare.appointments_tag REPLICA IDENTITY FULL;
INSERT INTO mindcare.billing_invoice (patient_id, amount, mood, code)
  SELECT id, id * 10, 'calm', 'INV-' || id FROM mindcare.appointments_patient;
REFRESH MATERIALIZED VIEW mindcare.monthly;
"#;

/// The schema's structure as the catalog describes it, one line per object, sorted: columns
/// (position, type, NOT NULL, default, identity, generation, collation), constraints, indexes,
/// comments, sequences (definition and owner; values apart), views, functions, triggers, rules,
/// types, statistics and relation options. Equal strings, equal structures.
fn catalog_fingerprint(db: &TestDb, schema: &str) -> String {
    let s = format!("'{}'", schema.replace('\'', "''"));
    db.sql(&format!(
        r#"SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT format('rel %s kind=%s persistence=%s options=%s replident=%s rls=%s', c.relname, c.relkind,
      c.relpersistence, c.reloptions, c.relreplident, c.relrowsecurity) AS x
    FROM pg_class c WHERE c.relnamespace = {s}::regnamespace
  UNION ALL SELECT format('column %s.%s #%s %s notnull=%s default=%s identity=%s generated=%s collation=%s',
      c.relname, a.attname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
      a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attcollation::regcollation)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = {s}::regnamespace AND c.relkind NOT IN ('S', 'i')
  UNION ALL SELECT format('constraint %s %s %s valid=%s', conrelid::regclass, conname, pg_get_constraintdef(oid), convalidated)
    FROM pg_constraint WHERE connamespace = {s}::regnamespace
  UNION ALL SELECT format('index %s clustered=%s replident=%s', pg_get_indexdef(i.indexrelid), i.indisclustered, i.indisreplident)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = {s}::regnamespace
  UNION ALL SELECT format('comment %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
    FROM pg_description d WHERE pg_describe_object(d.classoid, d.objoid, d.objsubid) LIKE '%' || {s} || '.%'
       OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = {s}::regnamespace)
  UNION ALL SELECT format('sequence %s %s start=%s inc=%s min=%s max=%s cache=%s cycle=%s owned=%s', c.relname,
      format_type(q.seqtypid, NULL), q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle,
      (SELECT format('%s.%s %s', d.refobjid::regclass, d.refobjsubid, d.deptype) FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
    FROM pg_sequence q JOIN pg_class c ON c.oid = q.seqrelid WHERE c.relnamespace = {s}::regnamespace
  UNION ALL SELECT format('view %s %s populated=%s', c.relname, pg_get_viewdef(c.oid), c.relispopulated)
    FROM pg_class c WHERE c.relnamespace = {s}::regnamespace AND c.relkind IN ('v', 'm')
  UNION ALL SELECT format('function %s', pg_get_functiondef(p.oid)) FROM pg_proc p WHERE p.pronamespace = {s}::regnamespace
  UNION ALL SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled) FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = {s}::regnamespace AND NOT t.tgisinternal
  UNION ALL SELECT format('rule %s', pg_get_ruledef(r.oid)) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
    WHERE c.relnamespace = {s}::regnamespace AND r.rulename <> '_RETURN'
  UNION ALL SELECT format('type %s %s', t.typname, ARRAY(SELECT enumlabel FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder))
    FROM pg_type t WHERE t.typnamespace = {s}::regnamespace AND t.typtype = 'e'
  UNION ALL SELECT format('statistics %s', pg_get_statisticsobjdef(x.oid)) FROM pg_statistic_ext x WHERE x.stxnamespace = {s}::regnamespace
) q"#
    ))
}

/// Every sequence's value but the history's (the backups themselves move that one).
fn sequence_values(db: &TestDb, schema: &str) -> String {
    db.sql(&format!(
        "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, '-'), ' ' ORDER BY sequencename) \
         FROM pg_sequences WHERE schemaname = '{schema}' AND sequencename <> 'backups_backuprecord_id_seq'"
    ))
}

/// More tenants than `--format auto` dumps with pg_dump (rows only: nothing touches their schemas).
fn grow_past_the_auto_threshold(db: &TestDb) {
    db.sql(
        "INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) \
         SELECT 'ghost_' || g, 'Ghost ' || g, 'disabled' FROM generate_series(1, 120) g",
    );
}

fn restore_file(db: &TestDb, tenant: &str, key: &str) {
    let out = db
        .cmd()
        .args(["--no-progress", "restore", "--tenant", tenant, "--file", key, "--yes"])
        .output()
        .unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "restore {key}: {}", text(&out.stderr));
}

#[test]
fn a_dropped_schema_restores_from_the_default_format_with_the_structure_pg_dump_gives() {
    let db = TestDb::new();
    db.sql(EXTRAS);
    grow_past_the_auto_threshold(&db);
    let structure = catalog_fingerprint(&db, "mindcare");
    for needle in [
        "view big_spenders",
        "trigger CREATE TRIGGER billing_invoice_quiet",
        "enabled=D",
        "statistics CREATE",
    ] {
        assert!(structure.contains(needle), "{needle}: {structure}");
    }
    let rows = db.data("mindcare");
    let values = sequence_values(&db, "mindcare");

    // The default format at this size is the native one, and it says so.
    let out = db
        .cmd()
        .args(["--json", "--no-progress", "backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("using the native json format: 123 tenants"),
        "{}",
        text(&out.stderr)
    );
    let native: Value = serde_json::from_slice(&out.stdout).unwrap();
    let native = native[0]["backup"]["key"].as_str().unwrap().to_string();
    assert!(native.contains("/backup-json-mindcare-"), "{native}");
    let dumped = String::from_utf8(decompress(&db.storage().join(&native))).unwrap();
    let header: Value = serde_json::from_str(dumped.lines().next().unwrap()).unwrap();
    assert_eq!(header["format_version"], 3);
    let sql = db.backup(&["--tenant", "mindcare", "--format", "sql"])["key"]
        .as_str()
        .unwrap()
        .to_string();

    // The disaster: the schema is gone, its history with it.
    db.sql("DROP SCHEMA mindcare CASCADE");
    restore_file(&db, "mindcare", &native);
    let from_native = catalog_fingerprint(&db, "mindcare");
    assert_eq!(
        from_native, structure,
        "the native format gives the schema back as it was"
    );
    assert_eq!(db.data("mindcare"), rows);
    assert_eq!(sequence_values(&db, "mindcare"), values);
    // It behaves, too: defaults, the identity and the triggers work; the keys hold.
    db.sql("INSERT INTO mindcare.billing_invoice (patient_id, amount) SELECT min(id), 5 FROM mindcare.appointments_patient");
    assert_eq!(
        db.sql("SELECT number > 1000 AND total_with_tax = 6.05 FROM mindcare.billing_invoice WHERE amount = 5"),
        "t"
    );
    assert!(db
        .try_sql("INSERT INTO mindcare.billing_invoice (patient_id, amount) VALUES (999999, 1)")
        .is_err());

    db.sql("DROP SCHEMA mindcare CASCADE");
    restore_file(&db, "mindcare", &sql);
    assert_eq!(
        catalog_fingerprint(&db, "mindcare"),
        from_native,
        "pg_dump's dump gives the same structure as the native format"
    );
    assert_eq!(db.data("mindcare"), rows);
}

/// A json backup of bienestar rewritten as format version 2 (version 3 without the structure
/// line), with `edit` applied to its header, without a manifest; its key.
fn version_2_backup(db: &TestDb, edit: impl Fn(&mut Value)) -> String {
    let b = json_backup(db, "bienestar", &["--compress", "none"]);
    let key = b["key"].as_str().unwrap().to_string();
    let v3 = std::fs::read_to_string(db.storage().join(&key)).unwrap();
    let mut lines = v3.lines();
    let mut header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    header["format_version"] = 2.into();
    edit(&mut header);
    assert!(lines.next().unwrap().starts_with("[\"structure\","));
    // Each table's marker says what the header says of it.
    let marker = |l: &str| -> String {
        let Ok(Value::Array(m)) = serde_json::from_str::<Value>(l) else {
            return l.to_string();
        };
        match header["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| m[0] == "table" && t["name"] == m[1]["name"])
        {
            Some(spec) => serde_json::json!(["table", spec]).to_string(),
            None => l.to_string(),
        }
    };
    let v2: String = std::iter::once(header.to_string())
        .chain(lines.map(marker))
        .map(|l| l + "\n")
        .collect();
    std::fs::write(db.storage().join(&key), v2).unwrap();
    std::fs::remove_file(db.storage().join(format!("{key}.manifest.json"))).unwrap();
    key
}

#[test]
fn a_version_2_dump_naming_what_the_schema_lacks_is_refused_and_nothing_is_touched() {
    let db = TestDb::new();
    // A table the schema does not have (its rows follow the header's spec: a damaged or foreign
    // object) and a column it does not have.
    let key = version_2_backup(&db, |h| {
        let tables = h["tables"].as_array_mut().unwrap();
        let tag = tables.iter_mut().find(|t| t["name"] == "appointments_tag").unwrap();
        tag["columns"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "colour", "type": "text"}));
        tables.push(serde_json::json!({"name": "not_there", "columns": []}));
    });
    let live = db.fingerprint("bienestar");
    let out = db.run(&["restore", "--tenant", "bienestar", "--file", &key, "--yes"]);
    assert_fails(&out, 1, "the schema does not match the backup");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("has no table \"not_there\""), "{stderr}");
    assert!(stderr.contains("appointments_tag has no column \"colour\""), "{stderr}");
    assert_eq!(db.fingerprint("bienestar"), live);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bienestar\\_\\_%'"),
        "0"
    );
}

#[test]
fn a_version_2_dump_still_loads_into_the_existing_tables() {
    let db = TestDb::new();
    let before = db.data("bienestar");
    let key = version_2_backup(&db, |_| {});

    db.sql("DELETE FROM bienestar.appointments_appointment WHERE id % 3 = 0; UPDATE bienestar.appointments_patient SET notes = 'x'");
    // Loaded beside the application (into a staging schema, then swapped in): its open
    // transaction on a table the backup holds is not waited for.
    let app = AppSession::start(
        &db,
        "clinic",
        "BEGIN; INSERT INTO bienestar.appointments_tag (name) VALUES ('open'); SELECT pg_sleep(600)",
    );
    let out = db.run(&[
        "restore",
        "--tenant",
        "bienestar",
        "--file",
        &key,
        "--yes",
        "--lock-timeout",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(app);
    assert_eq!(db.data("bienestar"), before);

    // It cannot create a dropped schema: it says what to do instead.
    db.sql("DROP SCHEMA bienestar CASCADE");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "bienestar", "--file", &key, "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "the application's migrations");
}

#[test]
fn a_schema_holding_what_the_native_format_cannot_create_is_refused_once_dropped() {
    let db = TestDb::new();
    db.sql("CREATE DOMAIN mindcare.positive AS integer CHECK (VALUE > 0)");
    let out = db
        .cmd()
        .args([
            "--json",
            "--no-progress",
            "backup",
            "--tenant",
            "mindcare",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not carry domain mindcare.positive"),
        "{}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v[0]["backup"]["key"].as_str().unwrap().to_string();
    // Into the existing schema it loads as ever.
    restore_file(&db, "mindcare", &key);
    db.sql("DROP SCHEMA mindcare CASCADE");
    let out = db
        .cmd()
        .args(["restore", "--tenant", "mindcare", "--file", &key, "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "does not carry domain mindcare.positive");
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'mindcare'"),
        "0"
    );
}

/// A table rewritten after a json backup's snapshot was taken and before its rows were read
/// (TRUNCATE, an ALTER TABLE that rewrites it): the snapshot sees the new, empty file, so the
/// backup would hold the table empty and say OK. It must fail instead, storing nothing.
#[test]
fn a_table_rewritten_between_the_snapshot_and_its_copy_fails_the_backup_instead_of_storing_it_empty() {
    use std::io::Write as _;
    for rewrite in [
        "TRUNCATE mindcare.appointments_appointment",
        "ALTER TABLE mindcare.appointments_appointment ADD COLUMN drawn integer DEFAULT (random() * 10)::integer",
    ] {
        let db = TestDb::new();
        std::fs::create_dir_all(db.storage()).unwrap();
        let records = db.record_count("mindcare");
        // The application's migration, holding its lock until told to commit.
        let mut app = cluster()
            .psql_command(&db.name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut to_app = app.stdin.take().unwrap();
        writeln!(to_app, "BEGIN; {rewrite};").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while db.sql(
            "SELECT count(*) FROM pg_locks WHERE relation = 'mindcare.appointments_appointment'::regclass \
             AND mode = 'AccessExclusiveLock' AND granted",
        ) != "1"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{rewrite}: the migration never took its lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let backup = db.spawn(&[
            "--json",
            "--no-progress",
            "backup",
            "--tenant",
            "mindcare",
            "--format",
            "json",
        ]);
        // The backup's snapshot is taken; its COPY of the table waits for the migration.
        db.until_the_tool_waits_for_a_lock();
        writeln!(to_app, "COMMIT;").unwrap();
        drop(to_app);
        assert!(app.wait().unwrap().success());
        let out = backup.wait_with_output().unwrap();
        assert_fails(&out, 1, "appointments_appointment rewritten");
        assert_eq!(db.record_count("mindcare"), records, "{rewrite}: no history row");
        assert!(db.objects().is_empty(), "{rewrite}: nothing stored: {:?}", db.objects());
        // Run again, it backs up the table as it now is.
        db.ok(&["--no-progress", "backup", "--tenant", "mindcare", "--format", "json"]);
    }
}
