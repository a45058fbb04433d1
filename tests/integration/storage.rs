//! The same backup / list / download / verify / restore / delete suite on every backend, plus the
//! Supabase quirks and faults.

use serde_json::Value;

use crate::support::supabase_stub::SupabaseStub;
use crate::support::*;

/// A command for `db` against a given backend.
fn cmd(db: &TestDb, env: &[(String, String)]) -> assert_cmd::Command {
    let mut c = db.cmd();
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn s3_env(prefix: &str) -> Vec<(String, String)> {
    let m = moto();
    [
        ("BACKUP_STORAGE", format!("s3://{S3_BUCKET}/{prefix}")),
        ("AWS_ENDPOINT_URL", m.url.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn supabase_env(stub: &SupabaseStub) -> Vec<(String, String)> {
    vec![
        ("SUPABASE_URL".into(), stub.url.clone()),
        ("SUPABASE_KEY".into(), stub.key.clone()),
        ("SUPABASE_BUCKET_NAME".into(), stub.bucket.clone()),
    ]
}

fn run_ok(c: &mut assert_cmd::Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert_no_secret(&out);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    out
}

fn suite(env: Vec<(String, String)>) {
    let db = TestDb::new();
    let mut env = env;
    if env.iter().any(|(k, _)| k == "SUPABASE_URL") {
        // Supabase is the default when SUPABASE_URL is set: no BACKUP_STORAGE at all.
        env.push(("BACKUP_STORAGE".into(), String::new()));
    }
    let c = |args: &[&str]| {
        let mut c = cmd(&db, &env);
        if env.iter().any(|(k, v)| k == "BACKUP_STORAGE" && v.is_empty()) {
            c.env_remove("BACKUP_STORAGE");
        }
        c.args(args);
        c
    };
    let out = run_ok(&mut c(&["--json", "backup", "--all"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["backup"]["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 3);

    let out = run_ok(&mut c(&["--json", "list", "--check"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for t in v.as_array().unwrap() {
        for b in t["backups"].as_array().unwrap() {
            let ours = keys.contains(&b["file_path"].as_str().unwrap().to_string());
            assert_eq!(b["exists"], ours, "{b}");
        }
    }

    let sql = db.dir.path().join("out.sql");
    run_ok(&mut c(&[
        "download",
        "--tenant",
        "bienestar",
        "--latest",
        "--decompress",
        "-o",
        sql.to_str().unwrap(),
    ]));
    assert!(std::fs::read_to_string(&sql)
        .unwrap()
        .contains("PostgreSQL database dump complete"));
    let out = run_ok(&mut c(&["download", "--tenant", "mindcare", "--latest", "-o", "-"]));
    assert!(
        out.stdout.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "zstd magic on stdout"
    );

    run_ok(&mut c(&["verify", "--tenant", "mindcare"]));
    db.sql("DELETE FROM mindcare.appointments_appointment");
    run_ok(&mut c(&[
        "restore",
        "--tenant",
        "mindcare",
        "--latest",
        "--yes",
        "--drop-previous",
    ]));
    assert_ne!(db.sql("SELECT count(*) FROM mindcare.appointments_appointment"), "0");

    let mindcare_key = keys.iter().find(|k| k.starts_with("mindcare/")).unwrap();
    db.sql("UPDATE mindcare.backups_backuprecord SET created_at = now() - interval '40 days'");
    let out = run_ok(&mut c(&[
        "cleanup",
        "--days",
        "30",
        "--keep-last",
        "0",
        "--include-manual",
        "--tenant",
        "mindcare",
    ]));
    assert!(
        text(&out.stdout).contains("deleted 1 backup ("),
        "{}",
        text(&out.stdout)
    );
    let out = c(&["download", "--tenant", "mindcare", "--file", mindcare_key, "-o", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the object is gone: {}", text(&out.stderr));
    let out = run_ok(&mut c(&["cleanup", "--orphans", "--tenant", "mindcare"]));
    assert!(
        !text(&out.stdout).contains("object without row"),
        "the manifest went too: {}",
        text(&out.stdout)
    );
}

/// Tenant keys live in the bucket too: with the key table gone, an encrypted backup is read with
/// the bucket's copy; `keys forget` deletes that copy; cleanup's orphans never see it.
fn keys_in_the_bucket(env: Vec<(String, String)>) {
    let db = TestDb::new();
    let out = run_ok(db.cmd().env_remove("DATABASE_URL").args(["keys", "init"]));
    let mut env = env;
    for line in text(&out.stdout).lines() {
        let (k, v) = line.split_once('=').unwrap();
        env.push((k.to_string(), v.to_string()));
    }
    let supabase = env.iter().any(|(k, _)| k == "SUPABASE_URL");
    let c = |args: &[&str]| {
        let mut c = cmd(&db, &env);
        if supabase {
            c.env_remove("BACKUP_STORAGE");
        }
        c.args(args);
        c
    };
    run_ok(&mut c(&["backup", "--tenant", "bienestar"]));
    // A second backup finds its key's copy already there.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_ok(&mut c(&["backup", "--tenant", "bienestar"]));
    db.sql("DROP TABLE public.tenant_backup_keys");
    run_ok(&mut c(&["verify", "--tenant", "bienestar"]));
    let out = run_ok(&mut c(&["cleanup", "--orphans", "--tenant", "bienestar"]));
    assert!(!text(&out.stdout).contains(".keys"), "{}", text(&out.stdout));
    run_ok(&mut c(&["keys", "forget", "--tenant", "bienestar", "--yes"]));
    let out = c(&["verify", "--tenant", "bienestar"]).output().unwrap();
    assert_fails(&out, 1, "forgotten");
}

#[test]
fn keys_in_the_bucket_on_s3() {
    keys_in_the_bucket(s3_env(&format!("keys-{}", std::process::id())));
}

#[test]
fn keys_in_the_bucket_on_supabase() {
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.service.role", "backups", 50 * 1000 * 1000);
    keys_in_the_bucket(supabase_env(&stub));
}

#[test]
fn suite_on_a_local_directory() {
    suite(Vec::new());
}

#[test]
fn suite_on_s3() {
    suite(s3_env(&format!("run-{}", std::process::id())));
}

#[test]
fn suite_on_supabase() {
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.service.role", "backups", 50 * 1000 * 1000);
    suite(supabase_env(&stub));
    let log = stub.state.lock().unwrap().log.clone();
    assert!(
        log.iter().all(|(_, _, bearer)| *bearer),
        "a JWT key goes in Authorization too"
    );
}

#[test]
fn supabase_secret_keys_go_only_in_apikey_and_upload_retries_succeed() {
    let stub = SupabaseStub::start("sb_secret_abc123", "backups", 50 * 1000 * 1000);
    stub.state.lock().unwrap().faults.fail_uploads = 2;
    let db = TestDb::new();
    let out = cmd(&db, &supabase_env(&stub))
        .env_remove("BACKUP_STORAGE")
        .args(["backup", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("503"),
        "the retries are logged: {}",
        text(&out.stderr)
    );
    assert_eq!(stub.keys().len(), 2);
    assert!(stub.state.lock().unwrap().log.iter().all(|(_, _, bearer)| !bearer));
    assert_eq!(db.record_count("mindcare"), 1);
}

/// mindcare made big enough for the resumable upload (incompressible text, no compression).
fn grow_mindcare(db: &TestDb, mb: usize) {
    db.sql(&format!(
        "CREATE TABLE mindcare.bulk (id int PRIMARY KEY, body text); \
         INSERT INTO mindcare.bulk SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, {}) g",
        mb * 1024 * 1024 / 100
    ));
}

#[test]
fn supabase_large_objects_use_tus_and_resume_a_broken_chunk() {
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.k", "backups", 6 * 1000 * 1000);
    stub.state.lock().unwrap().faults.break_next_patch = true;
    let db = TestDb::new();
    grow_mindcare(&db, 14);
    let out = cmd(&db, &supabase_env(&stub))
        .env_remove("BACKUP_STORAGE")
        .args(["--json", "backup", "--tenant", "mindcare", "--compress", "none"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v[0]["backup"]["key"].as_str().unwrap();
    let size = v[0]["backup"]["size"].as_u64().unwrap();
    assert!(size > 12 * 1024 * 1024, "{size}");
    let log = stub.state.lock().unwrap().log.clone();
    assert!(log.iter().filter(|(m, _, _)| m == "PATCH").count() >= 3, "chunked");
    assert!(
        log.iter().any(|(m, _, _)| m == "HEAD"),
        "asked for the offset after the broken chunk"
    );
    // The stored object is byte for byte what the manifest says.
    let stored = stub.state.lock().unwrap().objects.get(key).cloned().unwrap();
    use sha2::Digest;
    let manifest: Value = serde_json::from_slice(
        stub.state
            .lock()
            .unwrap()
            .objects
            .get(&format!("{key}.manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["sha256"], hex::encode(sha2::Sha256::digest(&stored)));
    // And it restores.
    let out = cmd(&db, &supabase_env(&stub))
        .env_remove("BACKUP_STORAGE")
        .args(["verify", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn supabase_failures_record_nothing_and_say_what_to_do() {
    let db = TestDb::new();
    // A persistent 500 for one tenant: it fails cleanly, the others are backed up.
    let stub = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.k", "backups", 50 * 1000 * 1000);
    stub.state.lock().unwrap().faults.always_500_for = Some("mindcare/".into());
    let out = cmd(&db, &supabase_env(&stub))
        .env_remove("BACKUP_STORAGE")
        .env("BACKUP_STORAGE_RETRIES", "2")
        .args(["backup", "--all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(db.record_count("mindcare"), 0);
    assert_eq!(db.record_count("clinica_demo"), 1);
    assert!(stub.keys().iter().all(|k| !k.starts_with("mindcare/")));
    let bienestar_rows = db.record_count("bienestar");

    // The anon key (or any wrong key).
    let wrong = [("SUPABASE_KEY".to_string(), "eyJ-anon-key".to_string())];
    let out = cmd(&db, &supabase_env(&stub))
        .envs(wrong)
        .env_remove("BACKUP_STORAGE")
        .args(["backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    // A configuration error, found before anything was dumped: exit 2.
    assert_fails(&out, 2, "use the service_role key, not the anon key");
    assert!(!text(&out.stderr).contains("eyJ-anon-key"));

    // A bucket that does not exist.
    let out = cmd(&db, &supabase_env(&stub))
        .env("BACKUP_STORAGE", "supabase://nobucket")
        .args(["backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bucket \"nobucket\" does not exist") && text(&out.stderr).contains("create it"),
        "{}",
        text(&out.stderr)
    );

    // Over the project's size limit (a tiny limit here).
    let small = SupabaseStub::start("eyJhbGciOiJIUzI1NiJ9.k", "backups", 1000);
    let out = cmd(&db, &supabase_env(&small))
        .env_remove("BACKUP_STORAGE")
        .args(["backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "upload size limit");

    // A wrong endpoint names the URL.
    let out = cmd(&db, &supabase_env(&stub))
        .env("SUPABASE_URL", "http://127.0.0.1:1")
        .env("BACKUP_STORAGE_RETRIES", "1")
        .env_remove("BACKUP_STORAGE")
        .args(["backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "cannot reach http://127.0.0.1:1/storage/v1");
    assert_eq!(db.record_count("bienestar"), bienestar_rows, "nothing recorded");
}
