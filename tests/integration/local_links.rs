//! Local storage reads regular files under its root only: a symlink (to a system file, to another
//! tenant's object), a symlinked folder or a FIFO placed in the bucket directory is refused, never
//! read, written through or waited on, and `cleanup --orphans` names it.

use std::os::unix::fs::symlink;
use std::time::Duration;

use crate::support::*;

const NAME: &str = "backup-sql-bienestar-2026-01-01-000000.sql";

fn download(db: &TestDb, key: &str) -> std::process::Output {
    db.cmd()
        .timeout(Duration::from_secs(60))
        .args(["download", "--tenant", "bienestar", "--file", key, "-o", "-"])
        .output()
        .unwrap()
}

fn refused(out: &std::process::Output, secret: &str) {
    assert!(!out.status.success(), "read: {}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(secret), "{}", text(&out.stdout));
    assert!(!text(&out.stderr).contains(secret), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn symlinks_and_special_files_in_the_bucket_are_never_read() {
    let db = TestDb::new();
    db.backup(&["--tenant", "bienestar"]);
    let theirs = db.backup(&["--tenant", "mindcare", "--compress", "none"]);
    let outside = db.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("shadow"), "root:TOP-SECRET-HASH:19000\n").unwrap();
    let folder = db.storage().join("bienestar");

    // A link to a file outside the bucket (a root-only system file, for a cron job run as root).
    symlink(outside.join("shadow"), folder.join(NAME)).unwrap();
    refused(&download(&db, &format!("bienestar/{NAME}")), "TOP-SECRET-HASH");

    // A link to another tenant's object, under a name of this tenant's.
    let other = "backup-sql-bienestar-2026-01-02-000000.sql";
    symlink(db.storage().join(theirs["key"].as_str().unwrap()), folder.join(other)).unwrap();
    refused(&download(&db, &format!("bienestar/{other}")), "Mindcare");

    // A FIFO: refused at once, never waited on.
    let fifo = "backup-sql-bienestar-2026-01-03-000000.sql";
    let status = std::process::Command::new("mkfifo")
        .arg(folder.join(fifo))
        .status()
        .unwrap();
    assert!(status.success());
    refused(&download(&db, &format!("bienestar/{fifo}")), "FIFO-CONTENT");

    // A tenant's whole folder replaced by a link to a folder outside the bucket: neither read
    // nor written through.
    let elsewhere = db.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let planted = "backup-sql-clinica_demo-2026-01-01-000000.sql";
    std::fs::write(elsewhere.join(planted), "CONFIDENTIAL-OUTSIDE\n").unwrap();
    std::fs::remove_dir_all(db.storage().join("clinica_demo")).ok();
    symlink(&elsewhere, db.storage().join("clinica_demo")).unwrap();
    let out = db
        .cmd()
        .timeout(Duration::from_secs(60))
        .args([
            "download",
            "--tenant",
            "clinica_demo",
            "--file",
            &format!("clinica_demo/{planted}"),
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    refused(&out, "CONFIDENTIAL-OUTSIDE");
    let out = db
        .cmd()
        .args(["--no-progress", "backup", "--tenant", "clinica_demo"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "backed up through a link");
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        1,
        "something was written outside the bucket"
    );

    // cleanup --orphans names each of them, and --fix leaves them (and what they point at) alone.
    for fix in [false, true] {
        let mut args = vec!["--json", "cleanup", "--orphans"];
        if fix {
            args.push("--fix");
        }
        let out = db.cmd().args(&args).output().unwrap();
        let stdout = text(&out.stdout);
        for name in [NAME, other, fifo] {
            assert!(
                stdout.contains(name),
                "{name} not reported:\n{stdout}\n{}",
                text(&out.stderr)
            );
        }
        assert!(stdout.contains("clinica_demo"), "{stdout}");
        assert!(stdout.contains("not a regular file"), "{stdout}");
    }
    assert!(outside.join("shadow").exists());
    assert!(folder.join(NAME).symlink_metadata().is_ok());
    assert!(elsewhere.join(planted).exists());
}
