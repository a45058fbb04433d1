//! `download`: the file appears only complete (0600, renamed into place from a temporary name
//! beside it), a failed download leaves nothing at the output path, and a closed stdout is a quiet
//! success.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::support::*;

/// The binary as `TestDb::cmd` sets it up, as a std `Command` (for pipes and limits).
fn command(db: &TestDb) -> Command {
    let mut c = crate::support::tool();
    c.env("HOME", db.dir.path())
        .env("DATABASE_URL", db.url())
        .env("BACKUP_STORAGE", db.storage())
        .current_dir(db.dir.path());
    c
}

fn entries(db: &TestDb) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(db.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "backups")
        .collect();
    out.sort();
    out
}

#[test]
fn downloads_are_private_to_their_owner() {
    let db = TestDb::new();
    db.backup(&["--tenant", "bienestar"]);
    for extra in [&[][..], &["--decompress"][..]] {
        let target = db.dir.path().join(format!("out{}.sql", extra.len()));
        let out = db
            .cmd()
            .args(["download", "--tenant", "bienestar", "--latest", "-o"])
            .arg(&target)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{extra:?}: mode {mode:o}");
    }
    assert_eq!(entries(&db), ["out0.sql", "out1.sql"]);
}

#[test]
fn a_download_that_fails_midway_leaves_nothing_at_the_output_path() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "bienestar"]);
    let (stored, whole) = (b["size"].as_u64().unwrap(), b["uncompressed_size"].as_u64().unwrap());
    assert!(whole > 2 * stored, "{b}");
    // A disk that fills up: the object fits in $TMPDIR, the decompressed dump does not fit beside it.
    let limit = (stored + whole) / 2;
    let target = db.dir.path().join("out.sql");
    let mut c = command(&db);
    c.args(["download", "--tenant", "bienestar", "--latest", "--decompress", "-o"])
        .arg(&target);
    // SAFETY: signal and setrlimit are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert_fails(&out, 1, "File too large");
    assert_eq!(entries(&db), Vec::<String>::new(), "left beside the target");
    assert_no_secret(&out);
}

#[test]
fn download_to_a_closed_pipe_exits_0_quietly() {
    let db = TestDb::new();
    db.backup(&["--tenant", "bienestar"]);
    // `download -o - --decompress | head -c 100`
    let mut child = command(&db)
        .args([
            "download",
            "--tenant",
            "bienestar",
            "--latest",
            "--decompress",
            "-o",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
}
