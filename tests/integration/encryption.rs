//! Encryption and authenticity: a stolen or hostile bucket reveals nothing and changes nothing.

use std::os::unix::fs::PermissionsExt;
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
    let before = db.data("bienestar");
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
        assert_eq!(db.data("bienestar"), before, "{format}");
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
    // Every copy the tool wrote is gone: the bucket's too; mindcare's stays.
    let copies = |t: &str| {
        std::fs::read_dir(db.storage().join(".keys").join(t))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(copies("bienestar"), 0);
    assert_eq!(copies("mindcare"), 1);
    db.sql("DROP TABLE public.tenant_backup_keys");
    let out = reader(&db, &k)
        .args(["restore", "--tenant", "bienestar", "--latest", "--yes"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "forgotten");
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
    let saved = db.dir.path().join("new-master.age");
    let out = reader(&db, &k)
        .args(["keys", "rotate", "--save-identity"])
        .arg(&saved)
        .output()
        .unwrap();
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
    // The bucket's copy is wrapped to the new recipient only.
    let copies: Vec<String> = std::fs::read_dir(db.storage().join(".keys/bienestar"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(copies, [format!("{}.age", new.recipient)]);
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
fn an_older_signed_backup_copied_over_a_newer_one_is_refused() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let old = backup(cron(&db, &k), &k, &["--tenant", "bienestar"]);
    db.sql("UPDATE bienestar.appointments_patient SET notes = 'newer'");
    // Backups are named to the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = backup(cron(&db, &k), &k, &["--tenant", "bienestar"]);
    let (old_key, new_key) = (old["key"].as_str().unwrap(), new["key"].as_str().unwrap());
    assert_ne!(old_key, new_key);
    // Someone who can write the bucket replays the older (validly signed) backup under the newer
    // one's name: object and manifest.
    for suffix in ["", ".manifest.json"] {
        std::fs::copy(
            db.storage().join(format!("{old_key}{suffix}")),
            db.storage().join(format!("{new_key}{suffix}")),
        )
        .unwrap();
    }
    let id = new["id"].to_string();
    for args in [
        vec!["verify", "--tenant", "bienestar", "--id", &id],
        vec!["restore", "--tenant", "bienestar", "--id", &id, "--yes"],
        vec!["download", "--tenant", "bienestar", "--id", &id, "-o", "-"],
    ] {
        let out = reader(&db, &k).args(&args).output().unwrap();
        no_key_material(&out, &k);
        assert_fails(&out, 1, "is the manifest of");
    }
    assert_eq!(
        db.sql("SELECT count(*) FROM bienestar.appointments_patient WHERE notes = 'newer'"),
        db.sql("SELECT count(*) FROM bienestar.appointments_patient")
    );
}

#[test]
fn a_tenant_with_a_key_refuses_an_unencrypted_object_without_a_signing_key() {
    let db = TestDb::new();
    let k = keys_init(&db);
    // No signing key anywhere: only encryption stands between the bucket and the database.
    let unsigned = |mut c: assert_cmd::Command| {
        c.env_remove("BACKUP_SIGNING_KEY");
        c
    };
    let clear = db.backup(&["--tenant", "bienestar", "--compress", "none"]);
    let sealed = backup(unsigned(cron(&db, &k)), &k, &["--tenant", "bienestar"]);
    // The old, unencrypted backup: readable only when asked for.
    let clear_id = clear["id"].to_string();
    let out = unsigned(reader(&db, &k))
        .args(["verify", "--tenant", "bienestar", "--id", &clear_id])
        .output()
        .unwrap();
    assert_fails(&out, 1, "--allow-unencrypted");
    let out = unsigned(reader(&db, &k))
        .args([
            "verify",
            "--tenant",
            "bienestar",
            "--id",
            &clear_id,
            "--allow-unencrypted",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A forged unencrypted object in place of the encrypted one, its manifest fixed up.
    let key = sealed["key"].as_str().unwrap();
    let forged = b"CREATE TABLE bienestar.planted (x int);\n".to_vec();
    std::fs::write(db.storage().join(key), &forged).unwrap();
    let manifest_path = db.storage().join(format!("{key}.manifest.json"));
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["size"] = forged.len().into();
    m["sha256"] = sha256_hex(&forged).into();
    m["compression"] = "none".into();
    m.as_object_mut().unwrap().remove("encryption");
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let id = sealed["id"].to_string();
    for args in [
        vec!["restore", "--tenant", "bienestar", "--id", &id, "--yes"],
        vec!["verify", "--tenant", "bienestar", "--id", &id],
        vec!["download", "--tenant", "bienestar", "--id", &id, "-o", "-"],
    ] {
        let out = unsigned(reader(&db, &k)).args(&args).output().unwrap();
        assert_fails(&out, 1, "not encrypted");
    }
    assert_eq!(db.sql("SELECT to_regclass('bienestar.planted') IS NULL"), "t");
}

#[test]
fn concurrent_first_encrypted_runs_all_succeed() {
    let db = TestDb::new();
    let k = keys_init(&db);
    // Small tenants besides the fixture's three, so that many workers start at once.
    for i in 0..5 {
        db.sql(&format!(
            "CREATE SCHEMA small{i}; CREATE TABLE small{i}.backups_backuprecord (LIKE bienestar.backups_backuprecord INCLUDING ALL); \
             INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('small{i}', 'Small {i}', 'daily')"
        ));
    }
    for round in 0..6 {
        db.sql("DROP TABLE IF EXISTS public.tenant_backup_keys");
        // Eight workers in one process, and a second process at the same moment.
        let run = || {
            cron(&db, &k)
                .args(["--no-progress", "backup", "--all", "--concurrency", "8"])
                .output()
                .unwrap()
        };
        let (out, first) = std::thread::scope(|s| {
            let other = s.spawn(run);
            (run(), other.join().unwrap())
        });
        for o in [&out, &first] {
            let stderr = text(&o.stderr);
            assert!(
                !stderr.contains("pg_type_typname_nsp_index") && !stderr.contains("already exists"),
                "round {round}: {stderr}"
            );
            // A tenant busy in the other process is skipped, not failed.
            assert!(o.status.success(), "round {round}: {stderr}");
        }
    }
}

const FLEET: [&str; 3] = ["bienestar", "mindcare", "clinica_demo"];

#[test]
fn an_encrypted_signed_fleet_restores_into_a_new_database_from_the_bucket_alone() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let out = cron(&db, &k)
        .args(["--no-progress", "backup", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before: Vec<_> = FLEET.iter().map(|t| db.data(t)).collect();
    // The disaster: the database is gone. What is left: the bucket, the master identity and the
    // signing key. The new database is empty: not migrated, no tenant table, no key table; first one
    // of the same server, then one of a brand-new cluster (nothing of the old server is there).
    let fresh = TestDb::empty();
    let cluster = devcluster::DevCluster::start().unwrap();
    cluster.create_database("recovered", None).unwrap();
    let new_cluster_sql = |q: &str| cluster.sql("recovered", q).unwrap();
    let fresh_sql = |q: &str| fresh.sql(q);
    type Sql<'a> = &'a dyn Fn(&str) -> String;
    let targets: [(String, Sql); 2] = [(fresh.url(), &fresh_sql), (cluster.url("recovered"), &new_cluster_sql)];
    for (url, sql) in targets {
        for t in FLEET {
            let out = reader(&fresh, &k)
                .env("DATABASE_URL", &url)
                .env("BACKUP_STORAGE", db.storage())
                .args([
                    "--no-progress",
                    "restore",
                    "--tenant",
                    t,
                    "--latest",
                    "--yes",
                    "--new-database",
                ])
                .output()
                .unwrap();
            no_key_material(&out, &k);
            assert!(out.status.success(), "{t} into {url}: {}", text(&out.stderr));
        }
        for (t, b) in FLEET.iter().zip(&before) {
            assert_eq!(&without_history(fingerprint_via(sql, t)), b, "{t} in {url}");
        }
    }
    // --new-database is for a database without a tenant table only.
    let out = reader(&db, &k)
        .args([
            "restore",
            "--tenant",
            "bienestar",
            "--latest",
            "--yes",
            "--new-database",
        ])
        .output()
        .unwrap();
    assert_fails(&out, 2, "--new-database");
}

/// A reader whose master identity is in a file (`--identity FILE`), not in the environment.
fn reader_with_file(db: &TestDb, k: &Keys, file: &std::path::Path) -> assert_cmd::Command {
    let mut c = cron(db, k);
    c.env_remove("BACKUP_AGE_RECIPIENT").arg("--identity").arg(file);
    c
}

/// The binary as a plain `std::process::Command` (to redirect its stdout), with the same
/// environment as [`TestDb::cmd`] and the cron job's keys.
fn plain(db: &TestDb, k: &Keys) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-backup"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", db.dir.path())
        .env("DATABASE_URL", db.url())
        .env("BACKUP_STORAGE", db.storage())
        .env("BACKUP_SIGNING_KEY", &k.signing)
        .current_dir(db.dir.path())
        .stdin(std::process::Stdio::null());
    c
}

fn stdout_full(mut c: std::process::Command) -> std::process::Output {
    c.stdout(std::fs::File::options().write(true).open("/dev/full").unwrap());
    c.output().unwrap()
}

#[test]
fn keys_init_and_rotate_never_lose_a_key_when_stdout_fails() {
    let db = TestDb::new();
    let k = keys_init(&db);
    let b = backup(cron(&db, &k), &k, &["--tenant", "bienestar"]);
    let id = b["id"].to_string();
    // init on a full disk: an error, not a panic; with --save-identity the identity is in the file.
    let mut c = plain(&db, &k);
    c.env_remove("DATABASE_URL").args(["keys", "init"]);
    let out = stdout_full(c);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("could not be printed"),
        "{}",
        text(&out.stderr)
    );
    let file = db.dir.path().join("init.age");
    let mut c = plain(&db, &k);
    c.env_remove("DATABASE_URL")
        .args(["keys", "init", "--save-identity"])
        .arg(&file);
    assert_eq!(stdout_full(c).status.code(), Some(1));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // rotate with stdout on /dev/full: the rotation happens, the new identity is in the file.
    let new_master = db.dir.path().join("rotated.age");
    let mut c = plain(&db, &k);
    c.env("BACKUP_AGE_IDENTITY", &k.identity)
        .args(["keys", "rotate", "--save-identity"])
        .arg(&new_master);
    let out = stdout_full(c);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&new_master.display().to_string()),
        "{}",
        text(&out.stderr)
    );
    let out = reader_with_file(&db, &k, &new_master)
        .args(["verify", "--tenant", "bienestar", "--id", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Running it again re-wraps nothing more, loses nothing, and deletes a copy wrapped to the
    // old master that a run stopped after its commit would have left.
    let stale = db.storage().join(format!(".keys/bienestar/{}.age", k.recipient));
    std::fs::write(&stale, b"left by a stopped rotation").unwrap();
    let out = reader(&db, &k)
        .args(["keys", "rotate", "--save-identity"])
        .arg(&new_master)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("0 tenant key(s) re-wrapped"),
        "{}",
        text(&out.stderr)
    );
    assert!(!stale.exists());
    // Without a file to write the new identity to, rotate refuses to start.
    let out = reader(&db, &k).args(["keys", "rotate"]).output().unwrap();
    assert_fails(&out, 2, "--save-identity");
}

/// When a rotation is killed: after its identity file appeared, after the first re-wrapped key
/// reached the bucket, after the last, or at a fixed time.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    IdentityWritten,
    FirstCopy,
    LastCopy,
    After(u64),
}

#[test]
fn a_rotation_killed_at_any_moment_is_finished_by_running_it_again() {
    let db = TestDb::new();
    let k = keys_init(&db);
    for t in FLEET {
        backup(cron(&db, &k), &k, &["--tenant", t]);
    }
    let mut current = db.dir.path().join("start.age");
    std::fs::write(&current, format!("{}\n", k.identity)).unwrap();
    std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o600)).unwrap();
    let moments = [
        KillAt::IdentityWritten,
        KillAt::FirstCopy,
        KillAt::LastCopy,
        KillAt::IdentityWritten,
        KillAt::FirstCopy,
        KillAt::LastCopy,
        KillAt::After(0),
        KillAt::After(300),
    ];
    // (identity file there, tenant keys already re-wrapped in the table) when each kill landed.
    let mut states = Vec::new();
    for (i, at) in moments.into_iter().enumerate() {
        let next = db.dir.path().join(format!("master-{i}.age"));
        let rotate = |current: &std::path::Path| {
            let mut c = plain(&db, &k);
            c.arg("--identity").arg(current);
            c.args(["--no-progress", "keys", "rotate", "--save-identity"])
                .arg(&next);
            c
        };
        let mut child = rotate(&current)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let recipient = || {
            let text = std::fs::read_to_string(&next).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("# public key: "))
                .map(str::to_string)
        };
        let copy = |t: &str, r: &str| db.storage().join(format!(".keys/{t}/{r}.age")).exists();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let reached = match (at, recipient()) {
                (KillAt::After(ms), _) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    true
                }
                (KillAt::IdentityWritten, r) => r.is_some(),
                (KillAt::FirstCopy, Some(r)) => copy(FLEET[0], &r) || copy(FLEET[2], &r),
                (KillAt::LastCopy, Some(r)) => FLEET.iter().all(|t| copy(t, &r)),
                (_, None) => false,
            };
            if reached || child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        child.kill().ok();
        child.wait().unwrap();
        let rewrapped: usize = match recipient() {
            Some(r) => db
                .sql(&format!(
                    "SELECT count(*) FROM public.tenant_backup_keys WHERE wrapped_to = '{r}'"
                ))
                .parse()
                .unwrap(),
            None => 0,
        };
        states.push((next.exists(), rewrapped));
        let out = rotate(&current).output().unwrap();
        assert!(out.status.success(), "after a kill at {at:?}: {}", text(&out.stderr));
        current = next;
        for t in FLEET {
            let out = reader_with_file(&db, &k, &current)
                .args(["verify", "--tenant", t])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{t} after a kill at {at:?}: {}",
                text(&out.stderr)
            );
            // A kill while a copy was being written may leave its hidden temporary file (as
            // for any object); `keys forget` removes those too.
            let copies = std::fs::read_dir(db.storage().join(".keys").join(t))
                .unwrap()
                .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
                .count();
            assert_eq!(copies, 1, "{t}: stale key copies after a kill at {at:?}");
        }
    }
    // The kills landed between the steps that matter: the identity written and nothing
    // re-wrapped yet, and (mostly) before the process could finish on its own.
    assert!(states.contains(&(true, 0)), "{states:?}");
    eprintln!("states at the kills (identity written, keys re-wrapped): {states:?}");
    // Forgetting leaves nothing of the key in the bucket, not even an interrupted write.
    let out = reader_with_file(&db, &k, &current)
        .args(["keys", "forget", "--tenant", "bienestar", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(db.storage().join(".keys/bienestar"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_identity_file_open_to_others_is_refused() {
    let db = TestDb::new();
    let k = keys_init(&db);
    backup(cron(&db, &k), &k, &["--tenant", "mindcare"]);
    let file = db.dir.path().join("master.age");
    std::fs::write(&file, format!("{}\n", k.identity)).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = reader_with_file(&db, &k, &file)
            .args(["verify", "--tenant", "mindcare"])
            .output()
            .unwrap();
        assert_fails(&out, 2, "chmod 600");
        no_key_material(&out, &k);
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = reader_with_file(&db, &k, &file)
        .args(["verify", "--tenant", "mindcare"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn doctor_reports_keys_in_the_bucket_signing_and_the_identity_file() {
    let db = TestDb::new();
    let k = keys_init(&db);
    backup(cron(&db, &k), &k, &["--tenant", "bienestar"]);
    backup(cron(&db, &k), &k, &["--tenant", "mindcare"]);
    let file = db.dir.path().join("master.age");
    std::fs::write(&file, format!("{}\n", k.identity)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let doctor = || {
        let out = reader_with_file(&db, &k, &file).args(["doctor"]).output().unwrap();
        no_key_material(&out, &k);
        out
    };
    let out = doctor();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in ["keys in bucket all 2 tenant keys", "signing       on", "(mode 0600"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(line)),
            "{line}:\n{stdout}"
        );
    }
    // A key whose bucket copy is gone is named.
    for e in std::fs::read_dir(db.storage().join(".keys/mindcare")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let out = doctor();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("keys in bucket") && l.contains("mindcare")),
        "{stdout}"
    );
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
