//! Encryption and authenticity: a stolen or hostile bucket reveals nothing and changes nothing.

use std::process::Output;

use serde_json::Value;

use crate::support::*;

struct Keys {
    identity: String,
    recipient: String,
    signing: String,
}

fn keys_init(db: &TestDb) -> Keys {
    let out = db
        .cmd()
        .args(["keys", "init"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let get = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing from:\n{stdout}"))
            .to_string()
    };
    assert_eq!(stdout.lines().count(), 3, "exactly three lines: {stdout}");
    Keys {
        identity: get("BACKUP_AGE_IDENTITY"),
        recipient: get("BACKUP_AGE_RECIPIENT"),
        signing: get("BACKUP_SIGNING_KEY"),
    }
}

/// The cron job's environment: public material and the signing key.
fn cron(db: &TestDb, k: &Keys) -> assert_cmd::Command {
    let mut c = db.cmd();
    c.env("BACKUP_AGE_RECIPIENT", &k.recipient)
        .env("BACKUP_SIGNING_KEY", &k.signing);
    c
}

/// Where backups are read: the master identity too.
fn reader(db: &TestDb, k: &Keys) -> assert_cmd::Command {
    let mut c = cron(db, k);
    c.env("BACKUP_AGE_IDENTITY", &k.identity);
    c
}

fn no_key_material(out: &Output, k: &Keys) {
    for s in [&out.stdout, &out.stderr] {
        let t = text(s);
        assert!(
            !t.contains(&k.identity) && !t.contains(&k.signing),
            "a secret leaked:\n{t}"
        );
    }
    assert_no_secret(out);
}

fn backup(mut c: assert_cmd::Command, k: &Keys, args: &[&str]) -> Value {
    let out = c
        .args(["--json", "--no-progress", "backup"])
        .args(args)
        .output()
        .unwrap();
    no_key_material(&out, k);
    assert!(out.status.success(), "backup {args:?}: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["backup"].clone()
}

fn data_without_history(db: &TestDb, schema: &str) -> Vec<(String, String)> {
    db.fingerprint(schema)
        .into_iter()
        .filter(|(t, _)| t != "backups_backuprecord")
        .collect()
}

#[test]
fn no_stored_object_holds_a_patient_name() {
    let db = TestDb::new();
    let k = keys_init(&db);
    for format in ["sql", "custom", "json"] {
        let b = backup(
            cron(&db, &k),
            &k,
            &["--tenant", "bienestar", "--format", format, "--compress", "none"],
        );
        assert!(b["key"].as_str().unwrap().ends_with(".age"), "{b}");
    }
    let files = db.all_files();
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let bytes = std::fs::read(db.storage().join(&f)).unwrap();
        for name in ["Gómez-Ruiz", "Refiere ansiedad", "jose.muller0@example.com"] {
            assert!(
                !bytes.windows(name.len()).any(|w| w == name.as_bytes()),
                "{f} holds {name:?} in the clear"
            );
        }
    }
    // The key table holds the tenant's identity only wrapped.
    let wrapped =
        db.sql("SELECT encode(wrapped_identity, 'escape') FROM public.tenant_backup_keys WHERE tenant = 'bienestar'");
    assert!(!wrapped.is_empty() && !wrapped.contains("AGE-SECRET-KEY"), "{wrapped}");
}

#[test]
fn encrypted_backups_round_trip_in_every_format() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let before = data_without_history(&db, "bienestar");
    for format in ["sql", "custom", "json"] {
        let b = backup(cron(&db, &k), &k, &["--tenant", "bienestar", "--format", format]);
        db.sql("DELETE FROM bienestar.appointments_patient_tags; UPDATE bienestar.appointments_patient SET notes = 'vandalized'");
        let id = b["id"].to_string();
        let out = reader(&db, &k)
            .args([
                "restore",
                "--tenant",
                "bienestar",
                "--id",
                &id,
                "--yes",
                "--drop-previous",
            ])
            .output()
            .unwrap();
        no_key_material(&out, &k);
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        assert_eq!(data_without_history(&db, "bienestar"), before, "{format}");
        let out = reader(&db, &k)
            .args(["verify", "--tenant", "bienestar", "--id", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "verify {format}: {}", text(&out.stderr));
    }
    // download decrypts: the file is the compressed dump, no longer age.
    let out = reader(&db, &k)
        .current_dir(db.dir.path())
        .args([
            "download",
            "--tenant",
            "bienestar",
            "--latest",
            "--decompress",
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Gómez-Ruiz"));
}

#[test]
fn a_cron_job_with_only_the_recipient_backs_up_but_cannot_read() {
    let db = TestDb::new();
    let k = keys_init(&db);
    backup(cron(&db, &k), &k, &["--tenant", "mindcare"]);
    for args in [
        vec!["restore", "--tenant", "mindcare", "--latest", "--yes"],
        vec!["verify", "--tenant", "mindcare"],
        vec!["download", "--tenant", "mindcare", "--latest", "-o", "-"],
    ] {
        let out = cron(&db, &k).args(&args).output().unwrap();
        no_key_material(&out, &k);
        assert_fails(&out, 2, "BACKUP_AGE_IDENTITY");
    }
}

#[test]
fn forgetting_a_tenant_erases_its_backups_and_spares_the_others() {
    let db = TestDb::new();
    let k = keys_init(&db);
    backup(cron(&db, &k), &k, &["--tenant", "bienestar"]);
    backup(cron(&db, &k), &k, &["--tenant", "mindcare"]);
    let out = reader(&db, &k)
        .args(["keys", "forget", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "--yes");
    let out = reader(&db, &k)
        .args(["keys", "forget", "--tenant", "bienestar", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = reader(&db, &k)
        .args(["restore", "--tenant", "bienestar", "--latest", "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "forgotten");
    let out = reader(&db, &k)
        .args(["verify", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = reader(&db, &k)
        .args(["list", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("key forgotten"), "{}", text(&out.stdout));
}

#[test]
fn a_forged_object_with_a_recomputed_checksum_is_refused() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let b = backup(cron(&db, &k), &k, &["--tenant", "clinica_demo"]);
    let key = b["key"].as_str().unwrap().to_string();
    let object = db.storage().join(&key);
    let manifest_path = db.storage().join(format!("{key}.manifest.json"));
    // The attacker writes their own object (here: an unencrypted plain dump) and fixes up the
    // manifest's size and sha256, dropping the signature, then re-signing with a key of their own.
    let forged = b"SET lock_timeout = 0;\nDROP SCHEMA bienestar CASCADE;\n".to_vec();
    std::fs::write(&object, &forged).unwrap();
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["size"] = forged.len().into();
    m["sha256"] = sha256_hex(&forged).into();
    m["encryption"] = Value::Null;
    m["compression"] = "none".into();
    let unsigned = {
        let mut u = m.clone();
        u.as_object_mut().unwrap().remove("signature");
        u
    };
    std::fs::write(&manifest_path, serde_json::to_vec(&unsigned).unwrap()).unwrap();
    let out = reader(&db, &k)
        .args(["restore", "--tenant", "clinica_demo", "--latest", "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "not signed");
    m["signature"] = "hmac-sha256:00112233".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    for args in [
        vec!["restore", "--tenant", "clinica_demo", "--latest", "--yes"],
        vec!["verify", "--tenant", "clinica_demo"],
        vec!["download", "--tenant", "clinica_demo", "--latest", "-o", "-"],
    ] {
        let out = reader(&db, &k).args(&args).output().unwrap();
        assert_fails(&out, 1, "signature does not match");
    }
    assert!(db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'bienestar'") == "1");
}

#[test]
fn rotation_keeps_old_backups_readable_with_the_new_identity_only() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let b = backup(cron(&db, &k), &k, &["--tenant", "bienestar"]);
    let out = reader(&db, &k).args(["keys", "rotate"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let get = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let new = Keys {
        identity: get("BACKUP_AGE_IDENTITY"),
        recipient: get("BACKUP_AGE_RECIPIENT"),
        signing: k.signing.clone(),
    };
    assert_ne!(new.identity, k.identity);
    let id = b["id"].to_string();
    let out = reader(&db, &new)
        .args(["verify", "--tenant", "bienestar", "--id", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = reader(&db, &k)
        .args(["verify", "--tenant", "bienestar", "--id", &id])
        .output()
        .unwrap();
    assert_fails(&out, 1, "not to this identity");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn max_size_refusal_of_an_encrypted_backup_says_the_limit_was_hit_once() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let before = db.record_count("bienestar");
    let limit = "the backup is larger than --max-size (100 bytes); nothing was stored";
    // 100 bytes: smaller than the encryption's own header, and than any dump.
    for format in ["sql", "custom", "json"] {
        let hc = crate::support::http_recorder::HttpRecorder::start();
        let notify = crate::support::http_recorder::HttpRecorder::start();
        let out = cron(&db, &k)
            .env("BACKUP_PING_URL", format!("{}/p", hc.url))
            .env("BACKUP_NOTIFY_URL", format!("{}/hook", notify.url))
            .args(["--no-progress", "backup", "--tenant", "bienestar", "--format", format])
            .args(["--max-size", "100"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{format}: one error line: {err}");
        assert!(
            errors[0].ends_with(&format!("ERROR backing up tenant bienestar: {limit}")),
            "{format}: {err}"
        );
        let pings = hc.requests();
        let fail = pings.iter().find(|r| r.path == "/p/fail").expect("a fail ping");
        let sent = notify.requests();
        assert_eq!(sent.len(), 1, "{format}");
        for (what, body) in [
            ("stderr", err.as_str()),
            ("ping", &fail.body),
            ("notification", &sent[0].body),
        ] {
            assert!(body.contains(limit), "{format} {what}: {body}");
            for noise in ["TooLargeMarker", "IoError", "failed to write header", "Custom {"] {
                assert!(!body.contains(noise), "{format} {what}: {body}");
            }
            assert_eq!(
                body.matches("--max-size").count(),
                1,
                "{format} {what}: said once: {body}"
            );
        }
        assert_eq!(db.record_count("bienestar"), before);
    }
}
