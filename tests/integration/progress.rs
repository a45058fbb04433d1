//! What an operator in a shell sees while a restore or a verify runs: a bar per step that knows
//! the object's size (so it has an ETA), instead of silence until the end.

use std::process::{Command, Stdio};

use crate::support::*;

/// Runs the binary on a pseudo-terminal (util-linux `script`), as in a Render Shell; returns
/// whether it succeeded and everything the terminal showed.
fn on_a_terminal(db: &TestDb, args: &[&str]) -> (bool, String) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = std::iter::once(env!("CARGO_BIN_EXE_tenant-backup"))
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", db.dir.path())
        .env("TERM", "xterm")
        .env(crate::support::FAST_RETRIES.0, crate::support::FAST_RETRIES.1)
        .env("DATABASE_URL", db.url())
        .env("BACKUP_STORAGE", db.storage())
        .current_dir(db.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs the tool on a pseudo-terminal");
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn restore_and_verify_show_each_step_of_the_objects_size_with_an_eta() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .args(["backup", "--tenant", "bienestar", "--format", "sql", "--no-progress"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    for (args, steps) in [
        (
            &["verify", "--tenant", "bienestar"][..],
            &["checksummed", "restored"][..],
        ),
        (
            &["restore", "--tenant", "bienestar", "--latest", "--yes"][..],
            &["checksummed", "restored"][..],
        ),
    ] {
        let (ok, shown) = on_a_terminal(&db, args);
        assert!(ok, "{args:?} failed:\n{shown}");
        for step in steps {
            // `bienestar [====>   ] 1.20 MB of 1.76 MB checked (3.10 MB/s, 0s left)`
            let bar = shown
                .split(['\r', '\n'])
                .find(|l| l.contains(&format!(" {step} (")) && l.contains(" of ") && l.contains(" left)"));
            assert!(
                bar.is_some(),
                "{args:?}: no bar for {step} with a total and an ETA:\n{shown}"
            );
            assert!(
                bar.unwrap().contains("bienestar"),
                "{args:?}: the bar names the tenant:\n{shown}"
            );
        }
    }
}
