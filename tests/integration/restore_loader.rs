//! The second wall (issue #28): a restore's load runs as the loader role, a LOGIN session of its
//! own that can create and write only inside its staging schema. Here the hostile corpus goes to
//! the loader raw (psql -f, no guard at all) on the fixture's tenants, with the tool connecting as
//! a superuser and as a non-superuser database owner (the managed-database case), and nothing
//! outside the staging schema may change: not another schema's data or catalog, no role, setting,
//! session or file.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tenant_backup::pg::sql::QualifiedName;
use tenant_backup::pg::target::DbTarget;
use tenant_backup::restore::loader::{loader_role, Grants, Loader, LoaderSession};

use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `url` with another user and password.
fn url_as(db: &TestDb, user: &str, password: &str) -> String {
    db.url().replacen(
        &format!("postgres:{}@", cluster().password),
        &format!("{user}:{password}@"),
        1,
    )
}

const OWNER_PASSWORD: &str = "owner-pw-0wn3r";

/// A non-superuser role that owns the database and everything in it, as the application's role
/// does on Supabase, Neon or Render (without CREATEROLE: the one-time SQL gives it that).
fn make_owner(db: &TestDb) -> String {
    let owner = format!("o_{}", db.name);
    db.sql(&format!(
        "CREATE ROLE {q} LOGIN PASSWORD '{OWNER_PASSWORD}'; ALTER DATABASE {d} OWNER TO {q}; \
         DO $$ DECLARE r record; BEGIN \
           FOR r IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP \
             EXECUTE format('ALTER SCHEMA %I OWNER TO {q}', r.nspname); END LOOP; \
           FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') \
               AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')) LOOP \
             EXECUTE format('ALTER TABLE %s OWNER TO {q}', r.t); END LOOP; \
         END $$",
        q = quote(&owner),
        d = quote(&db.name)
    ));
    owner
}

/// Runs `sql` as the loader through psql: `-c` with ON_ERROR_STOP, or raw `-f` without it.
fn psql_as(target: &DbTarget, args: &[&str]) -> Output {
    let mut cmd = Command::new(cluster().bin("psql"));
    cmd.env_clear()
        .envs(target.libpq_env())
        .args(["-X", "-q", "-At"])
        .args(args)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

/// Everything outside the staging schema that a load must leave alone: the data of every other
/// schema, and the catalog around it (objects, owners, privileges, triggers, rules, policies,
/// roles, memberships, settings, default privileges, event triggers, extensions, large objects).
fn outside(db: &TestDb, staging: &str, roles: &[&str]) -> String {
    let mut out = String::new();
    for schema in ["public", "bienestar", "mindcare", "clinica_demo"] {
        out.push_str(&format!("{schema}: {:?}\n", db.fingerprint(schema)));
    }
    let s = staging.replace('\'', "''");
    let roles = roles
        .iter()
        .map(|r| format!("'{}'", r.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    out.push_str(&db.sql(&format!(
        "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ( \
           SELECT format('class %s.%s %s owner=%s acl=%s rls=%s', n.nspname, c.relname, c.relkind, c.relowner::regrole, coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner)), c.relrowsecurity) x \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname <> '{s}' AND n.nspname NOT LIKE 'pg\\_t%' \
           UNION ALL SELECT format('schema %s owner=%s acl=%s', nspname, nspowner::regrole, coalesce(nspacl, acldefault('n', nspowner))) FROM pg_namespace \
             WHERE nspname <> '{s}' AND nspname NOT LIKE 'pg\\_t%' \
           UNION ALL SELECT format('function %s owner=%s acl=%s secdef=%s', p.oid::regprocedure, p.proowner::regrole, coalesce(p.proacl, acldefault('f', p.proowner)), p.prosecdef) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> '{s}' \
           UNION ALL SELECT format('type %s owner=%s', t.oid::regtype, t.typowner::regrole) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname <> '{s}' AND n.nspname NOT LIKE 'pg\\_t%' \
           UNION ALL SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname <> '{s}' \
           UNION ALL SELECT format('rule %s on %s', r.rulename, r.ev_class::regclass) FROM pg_rewrite r \
             JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname <> '{s}' \
           UNION ALL SELECT format('policy %s on %s', polname, polrelid::regclass) FROM pg_policy \
           UNION ALL SELECT format('role %s super=%s inherit=%s createrole=%s createdb=%s login=%s replication=%s bypassrls=%s password=%s', \
               rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, md5(coalesce(rolpassword, ''))) \
             FROM pg_authid WHERE rolname IN ({roles}) OR rolname LIKE 'planted%' \
           UNION ALL SELECT format('member %s of %s by %s admin=%s', member::regrole, roleid::regrole, grantor::regrole, admin_option) \
             FROM pg_auth_members WHERE roleid IN (SELECT oid FROM pg_roles WHERE rolname IN ({roles})) \
                OR member IN (SELECT oid FROM pg_roles WHERE rolname IN ({roles})) \
           UNION ALL SELECT format('setting %s %s %s', setdatabase, setrole::regrole, setconfig) FROM pg_db_role_setting \
             WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                OR setrole IN (SELECT oid FROM pg_roles WHERE rolname IN ({roles})) \
           UNION ALL SELECT format('database %s owner=%s acl=%s', datname, datdba::regrole, coalesce(datacl, acldefault('d', datdba))) FROM pg_database WHERE datname = current_database() \
           UNION ALL SELECT format('system setting %s=%s', name, setting) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf' \
           UNION ALL SELECT format('default acl %s %s %s', defaclrole::regrole, defaclnamespace, defaclacl) FROM pg_default_acl \
           UNION ALL SELECT format('event trigger %s', evtname) FROM pg_event_trigger \
           UNION ALL SELECT format('extension %s', extname) FROM pg_extension \
           UNION ALL SELECT format('publication %s', pubname) FROM pg_publication \
           UNION ALL SELECT format('large object %s owner=%s', oid, lomowner::regrole) FROM pg_largeobject_metadata \
           UNION ALL SELECT format('language %s', lanname) FROM pg_language \
           UNION ALL SELECT format('cast %s', oid) FROM pg_cast \
         ) q"
    )));
    out
}

/// The hostile corpus: each statement must fail as the loader. `{S}` is the staging schema, `{L}`
/// the loader, `{O}` the owner or superuser the tool connects as, `{D}` the database, `{P}` an
/// application session's pid, `{F}` a file path the server could write, `{SEQ}` a shared sequence.
const MUST_FAIL: &[&str] = &[
    // Other schemas: other tenants, the live tenant, the shared tables.
    "DROP SCHEMA mindcare CASCADE",
    "DROP SCHEMA bienestar CASCADE",
    "DROP TABLE public.tenants_clinic CASCADE",
    "ALTER TABLE mindcare.appointments_patient ADD COLUMN planted int",
    "ALTER SCHEMA bienestar RENAME TO planted",
    "SELECT count(*) FROM mindcare.appointments_patient",
    "SELECT count(*) FROM public.tenants_clinic",
    "SELECT * FROM public.users_user",
    "COPY bienestar.appointments_patient TO STDOUT",
    "UPDATE public.tenants_clinic SET backup_schedule = 'never'",
    "INSERT INTO mindcare.appointments_patient DEFAULT VALUES",
    "DELETE FROM public.tenants_clinic",
    "TRUNCATE mindcare.appointments_patient",
    "LOCK TABLE public.tenants_clinic IN ACCESS EXCLUSIVE MODE",
    "SELECT nextval('{SEQ}')",
    "SELECT setval('{SEQ}', 1000000)",
    "CREATE TABLE public.planted (id int)",
    "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA planted",
    "CREATE TRIGGER planted BEFORE INSERT ON public.tenants_clinic FOR EACH ROW EXECUTE FUNCTION {S}.planted()",
    "CREATE RULE planted AS ON INSERT TO public.tenants_clinic DO INSTEAD NOTHING",
    "CREATE POLICY planted ON public.tenants_clinic USING (false)",
    "ALTER TABLE public.tenants_clinic ENABLE ROW LEVEL SECURITY",
    "CREATE INDEX planted ON public.tenants_clinic (id)",
    "REINDEX TABLE public.tenants_clinic",
    "CLUSTER public.tenants_clinic USING tenants_clinic_pkey",
    "COMMENT ON SCHEMA mindcare IS 'planted'",
    "CREATE STATISTICS {S}.planted ON id, schema_name FROM public.tenants_clinic",
    "CREATE VIEW {S}.planted AS SELECT * FROM mindcare.appointments_patient",
    "CREATE TABLE {S}.planted () INHERITS (public.tenants_clinic)",
    "ALTER TABLE {S}.t ADD FOREIGN KEY (id) REFERENCES public.users_user (id)",
    "GRANT USAGE ON SCHEMA mindcare TO PUBLIC",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {O} GRANT ALL ON TABLES TO PUBLIC",
    "DROP OWNED BY {O}",
    "REASSIGN OWNED BY {O} TO {L}",
    // The staging schema goes nowhere else, and nothing changes hands.
    "ALTER SCHEMA {S} RENAME TO planted",
    "ALTER SCHEMA {S} OWNER TO {O}",
    "ALTER TABLE {S}.t OWNER TO {O}",
    // Code the loader plants runs as the loader: a trigger it fires cannot reach out either.
    "INSERT INTO {S}.t VALUES (1)",
    "DO $$ BEGIN EXECUTE 'DROP SCHEMA mindcare CASCADE'; END $$",
    "RESET ROLE; DROP SCHEMA mindcare CASCADE",
    // Other sessions.
    "SELECT pg_terminate_backend({P})",
    "SELECT pg_cancel_backend({P})",
    // Roles.
    "SET ROLE postgres",
    "SET ROLE {O}",
    "SET SESSION AUTHORIZATION postgres",
    "SET SESSION AUTHORIZATION {O}",
    "ALTER ROLE {L} SUPERUSER",
    "ALTER ROLE {L} CREATEROLE",
    "ALTER ROLE {L} BYPASSRLS",
    "ALTER ROLE {L} VALID UNTIL 'infinity'",
    "ALTER ROLE {O} PASSWORD 'planted'",
    "ALTER ROLE postgres NOSUPERUSER",
    "CREATE ROLE planted",
    "CREATE USER planted_user PASSWORD 'planted'",
    "GRANT {L} TO {O}",
    "GRANT {O} TO {L}",
    "GRANT pg_read_server_files TO {L}",
    "SELECT * FROM pg_authid",
    // Settings beyond its own session, and the system.
    "ALTER SYSTEM SET work_mem = '1GB'",
    "ALTER DATABASE {D} SET work_mem = '1GB'",
    "ALTER ROLE {O} SET work_mem = '1GB'",
    "ALTER ROLE ALL SET work_mem = '1GB'",
    "SET session_replication_role = replica",
    "SELECT set_config('log_statement', 'none', false)",
    "SELECT pg_reload_conf()",
    "CHECKPOINT",
    "CREATE DATABASE planted",
    "CREATE PUBLICATION planted FOR ALL TABLES",
    "CREATE SUBSCRIPTION planted CONNECTION 'dbname=postgres' PUBLICATION planted WITH (connect = false)",
    // Server files and programs.
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_read_binary_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT pg_stat_file('postgresql.conf')",
    "COPY {S}.t FROM '/etc/passwd'",
    "COPY (SELECT 1) TO '{F}'",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export(lo_from_bytea(0, 'planted'), '{F}')",
    "COPY {S}.t FROM PROGRAM 'touch {F}'",
    "COPY (SELECT 1) TO PROGRAM 'touch {F}'",
    "LOAD 'plpgsql'",
    // Event triggers, extensions, languages, foreign servers.
    "CREATE EVENT TRIGGER planted ON ddl_command_start EXECUTE FUNCTION {S}.planted_event()",
    "CREATE EXTENSION pgcrypto SCHEMA {S}",
    "CREATE EXTENSION adminpack",
    "CREATE LANGUAGE plperlu",
    "CREATE FOREIGN DATA WRAPPER planted",
];

/// Statements the loader may run (on itself, or harmlessly) whose every trace `close` removes.
const UNDONE_BY_CLOSE: &[&str] = &[
    "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO PUBLIC",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC",
    "ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM {L}",
    "ALTER ROLE {L} SET search_path = mindcare",
    "ALTER ROLE {L} IN DATABASE {D} SET work_mem = '1GB'",
    "ALTER ROLE {L} PASSWORD 'planted-password'",
    "SELECT lo_from_bytea(0, 'planted')",
    "SELECT pg_advisory_lock(42)",
    "VACUUM FULL mindcare.appointments_patient",
    "ANALYZE public.tenants_clinic",
];

/// The guard's own hostile corpus (src/restore/guard/tests.rs, tests/integration/restore_hostile.rs),
/// aimed at the staging schema: sent raw with the rest. Some of it succeeds as the loader, inside
/// the staging schema only (code planted there runs as whoever calls it: see the report on what the
/// engine must never do as admin); what matters is that nothing outside changes.
const GUARD_CORPUS: &[&str] = &[
    "SET search_path = public",
    "CREATE TABLE {S}.x AS SELECT * FROM mindcare.appointments_patient",
    "CREATE VIEW {S}.v1 AS SELECT pg_catalog.pg_read_file('/etc/passwd')",
    "CREATE FUNCTION {S}.h1() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP SCHEMA mindcare CASCADE'; END $$",
    "SELECT {S}.h1()",
    "CREATE FUNCTION {S}.h2() RETURNS void LANGUAGE sql AS 'DELETE FROM public.tenants_clinic'",
    "CREATE FUNCTION {S}.h3() RETURNS void LANGUAGE plpythonu AS 'import os'",
    "CREATE TABLE {S}.y (s bigint DEFAULT nextval('{SEQ}'::regclass))",
    "INSERT INTO {S}.y DEFAULT VALUES",
    "SELECT pg_catalog.setval('{SEQ}', 1, false)",
    "GRANT ALL ON SCHEMA mindcare TO PUBLIC",
    "CREATE TEMP TABLE pg_class (x int)",
    "CREATE OPERATOR {S}.@@ (FUNCTION = pg_catalog.pg_terminate_backend, RIGHTARG = integer)",
    "SELECT @@ {P}",
    "CREATE AGGREGATE {S}.a (integer) (SFUNC = pg_catalog.pg_terminate_backend, STYPE = boolean)",
    "CREATE TYPE {S}.r AS RANGE (SUBTYPE = integer, SUBTYPE_DIFF = pg_catalog.pg_terminate_backend)",
    "CREATE CAST (integer AS {S}.r) WITH FUNCTION pg_catalog.pg_terminate_backend(integer)",
    "CREATE TRIGGER x AFTER INSERT ON {S}.t FOR EACH ROW EXECUTE FUNCTION pg_catalog.lo_import()",
    "CREATE TABLE {S}.z (b boolean DEFAULT pg_catalog.pg_terminate_backend({P}))",
    "INSERT INTO {S}.z DEFAULT VALUES",
    "CREATE INDEX i ON {S}.t (pg_terminate_backend(id::int))",
    "CREATE VIEW {S}.v2 AS SELECT lo_import('/etc/passwd')",
    "CREATE DOMAIN {S}.d AS integer CHECK (pg_catalog.pg_terminate_backend(VALUE))",
    "SELECT {P}::{S}.d",
    "CREATE POLICY p ON {S}.t USING (pg_catalog.pg_terminate_backend(id::int))",
    "CREATE FUNCTION {S}.h4() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
    "CREATE MATERIALIZED VIEW {S}.m AS SELECT rolpassword FROM pg_catalog.pg_authid",
    "CREATE VIEW {S}.v3 AS SELECT query FROM pg_stat_activity",
    "ALTER TABLE {S}.t ADD CONSTRAINT f FOREIGN KEY (id) REFERENCES mindcare.appointments_patient (id)",
    "ALTER ROLE {O} SET statement_timeout = 1",
    "COPY {S}.t TO PROGRAM 'id'",
    "BEGIN",
    "DROP SCHEMA mindcare CASCADE",
    "COMMIT",
    "PREPARE TRANSACTION 'planted'",
    "LISTEN planted",
    "NOTIFY planted, 'payload'",
];

/// What the corpus's placeholders stand for.
struct Places {
    staging: String,
    loader: String,
    admin: String,
    database: String,
    pid: String,
    file: String,
    sequence: String,
}

impl Places {
    fn fill(&self, sql: &str) -> String {
        sql.replace("{SEQ}", &self.sequence)
            .replace("{S}", &quote(&self.staging))
            .replace("{L}", &quote(&self.loader))
            .replace("{O}", &quote(&self.admin))
            .replace("{D}", &quote(&self.database))
            .replace("{P}", &self.pid)
            .replace("{F}", &self.file)
    }
}

#[derive(Clone, Copy, Debug)]
enum Admin {
    Superuser,
    Owner,
}

fn the_second_wall_holds(kind: Admin) {
    let db = TestDb::new();
    let loader = loader_role(&db.name);
    let (admin_url, admin_role) = match kind {
        Admin::Superuser => (db.url(), "postgres".to_string()),
        Admin::Owner => {
            let owner = make_owner(&db);
            (url_as(&db, &owner, OWNER_PASSWORD), owner)
        }
    };
    let admin_target = DbTarget::parse(&admin_url, "the test's URL").unwrap();
    let rt = runtime();
    let admin = rt.block_on(admin_target.connect()).unwrap();

    // The managed case: an owner without CREATEROLE is told the one-time SQL, exit 2, and
    // nothing is created; a superuser runs it, and then the tool can work.
    if let Admin::Owner = kind {
        let err = rt.block_on(Loader::ensure(&admin)).unwrap_err();
        let message = format!("{err:#}");
        assert!(tenant_backup::error::is_usage(&err), "{message}");
        for needle in [
            format!("CREATE ROLE {} NOLOGIN NOINHERIT;", quote(&loader)),
            format!("ALTER ROLE {} CREATEROLE;", quote(&admin_role)),
            format!("GRANT {} TO {};", quote(&loader), quote(&admin_role)),
            "docs/restore.md".to_string(),
        ] {
            assert!(message.contains(&needle), "{needle:?} missing from:\n{message}");
        }
        assert_eq!(
            db.sql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{loader}'")),
            "0",
            "the error must create nothing"
        );
        let sql = message.split("\n\n").nth(1).unwrap().trim();
        db.sql(sql);
    }
    let handle = rt.block_on(Loader::ensure(&admin)).unwrap();
    assert_eq!(handle.role(), loader);
    // Again: idempotent.
    rt.block_on(Loader::ensure(&admin)).unwrap();
    assert_eq!(
        db.sql(&format!(
            "SELECT rolcanlogin || ',' || rolinherit || ',' || rolsuper || ',' || rolcreaterole || ',' || rolcreatedb \
             FROM pg_roles WHERE rolname = '{loader}'"
        )),
        "false,false,false,false,false"
    );

    let staging = "bienestar__restore_20261206063000".to_string();
    let roles = [loader.as_str(), admin_role.as_str(), "postgres"];
    let app = AppSession::start(&db, "clinic-app", "SELECT pg_sleep(60)");
    let pid = app.pid();
    let file = format!("/tmp/tenant-backup-loader-{}", db.name);
    let _ = std::fs::remove_file(&file);
    let seq = db.sql("SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1 LIMIT 1");
    assert!(!seq.is_empty());
    let before = outside(&db, &staging, &roles);
    let places = Places {
        staging: staging.clone(),
        loader: loader.clone(),
        admin: admin_role.clone(),
        database: db.name.clone(),
        pid: pid.clone(),
        file: file.clone(),
        sequence: seq.clone(),
    };

    let grants = Grants {
        references: vec![QualifiedName::parse("public.tenants_clinic").unwrap()],
        usage: vec![],
    };
    let mut session: LoaderSession = rt
        .block_on(handle.open(&admin_target, &staging, &grants, Duration::from_secs(10)))
        .unwrap();
    let target = session.target().unwrap().clone();
    assert!(
        target.redacted().ends_with(&format!(" as {loader}")),
        "{}",
        target.redacted()
    );

    // What a load needs works: a real copy of bienestar, a foreign key to a shared table, and
    // the code a dump may plant in its own schema.
    let dump = Command::new(cluster().bin("pg_dump"))
        .env("PGPASSWORD", &cluster().password)
        .args(["--no-owner", "--no-privileges", "-n", "bienestar", "-d", &db.url()])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", text(&dump.stderr));
    // The dump's statements aimed at the staging schema (an address @bienestar.… in the data stays).
    let copy = text(&dump.stdout)
        .replace("CREATE SCHEMA bienestar;", "")
        .replace("@bienestar.", "@BIENESTAR-DOMAIN.")
        .replace("bienestar.", &format!("{}.", quote(&staging)))
        .replace("@BIENESTAR-DOMAIN.", "@bienestar.");
    let copy_file = db.dir.path().join("copy.sql");
    std::fs::write(&copy_file, copy).unwrap();
    let out = psql_as(&target, &["-v", "ON_ERROR_STOP=1", "-f", copy_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the loader could not load a real dump: {}",
        text(&out.stderr)
    );
    assert_eq!(db.fingerprint(&staging), db.fingerprint("bienestar"));
    let setup = places.fill(
        "CREATE TABLE {S}.t (id bigint, clinic bigint REFERENCES public.tenants_clinic (id)); \
         CREATE FUNCTION {S}.planted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DROP SCHEMA mindcare CASCADE; RETURN NEW; END $$; \
         CREATE TRIGGER planted BEFORE INSERT ON {S}.t FOR EACH ROW EXECUTE FUNCTION {S}.planted(); \
         CREATE FUNCTION {S}.planted_event() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$; \
         CREATE TYPE {S}.mood AS ENUM ('ok'); CREATE SEQUENCE {S}.s; CREATE VIEW {S}.v AS SELECT * FROM {S}.t");
    let out = psql_as(&target, &["-v", "ON_ERROR_STOP=1", "-c", &setup]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Each hostile statement alone: refused by the server.
    let mut corpus = String::new();
    for sql in MUST_FAIL {
        let sql = places.fill(sql);
        let out = psql_as(&target, &["-v", "ON_ERROR_STOP=1", "-c", &sql]);
        eprintln!("{sql}\n    {}", text(&out.stderr).lines().next().unwrap_or(""));
        assert!(
            !out.status.success() && text(&out.stderr).contains("ERROR"),
            "{kind:?}: the loader could run {sql:?}: {}",
            text(&out.stdout)
        );
        corpus.push_str(&sql);
        corpus.push_str(";\n");
    }
    for sql in GUARD_CORPUS.iter().chain(UNDONE_BY_CLOSE) {
        corpus.push_str(&places.fill(sql));
        corpus.push_str(";\n");
    }
    // And all of it raw, in one session that goes on past every error, as psql -f would.
    let corpus_file = db.dir.path().join("hostile.sql");
    std::fs::write(&corpus_file, &corpus).unwrap();
    let out = psql_as(&target, &["-f", corpus_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    rt.block_on(session.seal()).unwrap();
    assert!(session.target().is_err());
    let refused = psql_as(&target, &["-c", "SELECT 1"]);
    assert!(!refused.status.success(), "a sealed loader still logs in");

    rt.block_on(session.hand_over(&admin_role)).unwrap();
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_shdepend WHERE refobjid = (SELECT oid FROM pg_roles WHERE rolname = '{loader}') \
               AND deptype = 'o' AND classid <> 'pg_default_acl'::regclass \
               AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )),
        "0",
        "the loader still owns something after the hand-over (its default privileges go at close)"
    );
    let owners = db.sql(&format!(
        "SELECT string_agg(DISTINCT o::text, ',') FROM ( \
           SELECT relowner::regrole o FROM pg_class WHERE relnamespace = '{0}'::regnamespace \
           UNION ALL SELECT typowner::regrole FROM pg_type WHERE typnamespace = '{0}'::regnamespace \
           UNION ALL SELECT proowner::regrole FROM pg_proc WHERE pronamespace = '{0}'::regnamespace \
           UNION ALL SELECT nspowner::regrole FROM pg_namespace WHERE nspname = '{0}') q",
        staging
    ));
    assert_eq!(
        owners, admin_role,
        "every object of the staging schema goes to the live owner"
    );
    // The copy is intact beside what the corpus planted (t, y, z).
    let live = db.fingerprint("bienestar");
    let mut loaded = db.fingerprint(&staging);
    loaded.retain(|(table, _)| live.iter().any(|(t, _)| t == table));
    assert_eq!(loaded, live);
    rt.block_on(session.close()).unwrap();
    db.sql(&format!("DROP SCHEMA {} CASCADE", quote(&staging)));

    // Nothing outside the staging schema changed; the application's session lives; no file.
    let after = outside(&db, &staging, &roles);
    if before != after {
        let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
        let gone: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
        let new: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
        panic!("{kind:?}: outside the staging schema, gone: {gone:#?}\nnew: {new:#?}");
    }
    assert_eq!(app.pid(), pid, "the application's session was ended");
    assert!(!std::path::Path::new(&file).exists(), "the loader wrote {file}");

    // The password is not usable after close, nor the one the corpus gave the role.
    let out = psql_as(&target, &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    let planted = target_with_password(&target, &loader, "planted-password");
    let out = psql_as(&planted, &["-c", "SELECT 1"]);
    assert!(!out.status.success(), "the password the dump set still logs in");
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{loader}'"
        )),
        "0"
    );
    drop(app);
}

fn target_with_password(target: &DbTarget, role: &str, password: &str) -> DbTarget {
    target.as_login(role, password)
}

#[test]
fn the_loader_holds_the_hostile_corpus_when_the_tool_is_a_superuser() {
    the_second_wall_holds(Admin::Superuser);
}

#[test]
fn the_loader_holds_the_hostile_corpus_when_the_tool_is_the_database_owner() {
    the_second_wall_holds(Admin::Owner);
}

/// doctor's line for the loader role: the output's line that starts with its check name.
fn doctor_loader_line(db: &TestDb, url: &str) -> (Option<i32>, String) {
    let out = db.cmd().env("DATABASE_URL", url).args(["doctor"]).output().unwrap();
    assert_no_secret(&out);
    let stdout = text(&out.stdout);
    let at = stdout
        .find("loader role")
        .unwrap_or_else(|| panic!("no loader role check in:\n{stdout}{}", text(&out.stderr)));
    let start = stdout[..at].rfind('\n').map_or(0, |i| i + 1);
    // The detail may go on over lines (the SQL), up to the next check.
    let rest = &stdout[start..];
    let end = rest[1..]
        .find("\nok  ")
        .into_iter()
        .chain(rest[1..].find("\nFAIL"))
        .min()
        .map_or(rest.len(), |i| i + 1);
    (out.status.code(), rest[..end].to_string())
}

#[test]
fn doctor_checks_the_loader_role_and_prints_the_one_time_sql() {
    let db = TestDb::new();
    let loader = loader_role(&db.name);
    let owner = make_owner(&db);
    let owner_url = url_as(&db, &owner, OWNER_PASSWORD);

    // The managed case before the one-time SQL: the check fails and says what to run.
    let (code, line) = doctor_loader_line(&db, &owner_url);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("FAIL loader role"), "{line}");
    let sql = [
        format!("CREATE ROLE {} NOLOGIN NOINHERIT;", quote(&loader)),
        format!("ALTER ROLE {} CREATEROLE;", quote(&owner)),
        format!("GRANT {} TO {};", quote(&loader), quote(&owner)),
    ];
    for needle in &sql {
        assert!(line.contains(needle.as_str()), "{needle:?} missing from:\n{line}");
    }
    // A superuser: the first restore will create the role.
    let (_, line) = doctor_loader_line(&db, &db.url());
    assert!(
        line.starts_with("ok   loader role") && line.contains("does not exist yet"),
        "{line}"
    );

    // The one-time SQL, run as a superuser, is all the owner needs.
    db.sql(&sql.join("\n"));
    let (_, line) = doctor_loader_line(&db, &owner_url);
    assert!(
        line.starts_with("ok   loader role") && line.contains(&format!("restores load as {loader}")),
        "{line}"
    );

    // A database that lets PUBLIC create in a schema (PostgreSQL 14 and older did, for public):
    // the loader would be no wall; doctor says so and a load refuses to start, exit 2.
    db.sql("GRANT CREATE ON SCHEMA public TO PUBLIC");
    let (code, line) = doctor_loader_line(&db, &owner_url);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("CREATE on schema public"), "{line}");
    let target = DbTarget::parse(&owner_url, "the test's URL").unwrap();
    let rt = runtime();
    let admin = rt.block_on(target.connect()).unwrap();
    let handle = rt.block_on(Loader::ensure(&admin)).unwrap();
    let err = rt
        .block_on(handle.open(
            &target,
            "bienestar__restore_1",
            &Grants::default(),
            Duration::from_secs(5),
        ))
        .err()
        .expect("a load must not start when the loader can reach public");
    assert!(tenant_backup::error::is_usage(&err), "{err:#}");
    assert!(format!("{err:#}").contains("CREATE on schema public"), "{err:#}");
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'bienestar__restore_1'"),
        "0",
        "the refused load left its staging schema"
    );
    assert_eq!(
        db.sql(&format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{loader}'")),
        "f"
    );
}

#[test]
fn the_login_window_serves_the_load_only_and_one_load_runs_at_a_time() {
    let db = TestDb::new();
    let loader = loader_role(&db.name);
    let target = DbTarget::parse(&db.url(), "the test's URL").unwrap();
    let rt = runtime();
    let admin = rt.block_on(target.connect()).unwrap();
    let handle = rt.block_on(Loader::ensure(&admin)).unwrap();
    let grants = Grants::default();
    let mut session = rt
        .block_on(handle.open(&target, "bienestar__restore_1", &grants, Duration::from_secs(5)))
        .unwrap();

    // A psql child connects on its own; once it is in, the window closes and it goes on.
    let loader_target = session.target().unwrap().clone();
    let mut child = Command::new(cluster().bin("psql"))
        .env_clear()
        .envs(loader_target.libpq_env())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("SELECT pg_sleep(1); CREATE TABLE \"bienestar__restore_1\".t AS SELECT 1 AS one")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let driver = rt.block_on(session.connect()).unwrap();
    rt.block_on(session.wait_for_logins(2, Duration::from_secs(10)))
        .unwrap();
    rt.block_on(session.seal()).unwrap();
    assert_eq!(
        db.sql(&format!(
            "SELECT rolcanlogin::text || coalesce(rolvaliduntil::text, '') FROM pg_roles WHERE rolname = '{loader}'"
        )),
        "false-infinity"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "the psql that was in before the seal failed");
    rt.block_on(driver.batch_execute("INSERT INTO \"bienestar__restore_1\".t VALUES (2)"))
        .unwrap();
    let out = psql_as(&loader_target, &["-c", "SELECT 1"]);
    assert!(!out.status.success(), "a new loader session started after the seal");

    // A second load of the same database waits for the first, and gives up after its wait.
    let second = rt.block_on(handle.open(&target, "mindcare__restore_1", &grants, Duration::from_secs(1)));
    let err = second.err().expect("two loads at once in one database");
    assert!(
        format!("{err:#}").contains("another restore of this database is loading"),
        "{err:#}"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'mindcare__restore_1'"),
        "0"
    );

    // Dropped without close (an error path): closed all the same, before the process ends.
    drop(driver);
    assert!(rt.block_on(async move {
        drop(session);
        tenant_backup::stop::finish_deferred().await
    }));
    assert_eq!(
        db.sql(&format!(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'bienestar__restore_1') || ',' || \
                    (SELECT count(*) FROM pg_stat_activity WHERE usename = '{loader}') || ',' || \
                    (SELECT rolcanlogin FROM pg_roles WHERE rolname = '{loader}')"
        )),
        "0,0,false",
        "a dropped session leaves its staging schema, a session or the login behind"
    );
    // And the next load may start.
    let next = rt
        .block_on(handle.open(&target, "mindcare__restore_1", &grants, Duration::from_secs(5)))
        .unwrap();
    rt.block_on(next.close()).unwrap();
}
