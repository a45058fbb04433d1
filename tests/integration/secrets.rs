//! No password reaches stdout or stderr, whatever form the connection string takes (one host or
//! several, `?password=`, libpq `key=value` with quoted values or spaces around `=`), and a broken
//! `.env` is reported by line number, never by content.

use std::path::Path;
use std::process::Output;

use crate::support::*;

/// The binary in `dir` with nothing but PATH set, pointed at `database_url` (None: unset).
fn run(dir: &Path, database_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = crate::support::tool_cmd();
    cmd.env("HOME", dir)
        .env("BACKUP_STORAGE", dir.join("backups"))
        .current_dir(dir);
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.args(args).output().unwrap()
}

/// Fails if any piece of the password appears on stdout or stderr.
fn assert_hidden(out: &Output, pieces: &[&str], what: &str) {
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = text(stream);
        for piece in pieces {
            assert!(!text.contains(piece), "{what}: {piece:?} leaked on {name}:\n{text}");
        }
    }
}

/// `doctor`, `list` and `backup` against a server that is not there, verbose, as text and JSON:
/// each fails (after retries that log the target), and none shows the password.
fn assert_never_shown(database_url: &str, pieces: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    for output in [&["-v"][..], &["-v", "--json"][..]] {
        for command in [&["doctor"][..], &["list"][..], &["backup", "--tenant", "bienestar"][..]] {
            let args: Vec<&str> = output.iter().chain(command).copied().collect();
            let out = run(dir.path(), Some(database_url), &args);
            let what = format!("{database_url:?} {args:?}");
            assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
            assert!(
                text(&out.stdout).contains("127.0.0.1") || text(&out.stderr).contains("127.0.0.1"),
                "{what}: the target is not named at all:\n{}",
                text(&out.stderr)
            );
            assert_hidden(&out, pieces, &what);
        }
    }
}

#[test]
fn multi_host_url_password_is_never_shown() {
    assert_never_shown("postgres://u:Zq9Xk7@127.0.0.1:1,127.0.0.1:2/db", &["Zq9", "Xk7"]);
}

#[test]
fn multi_host_url_password_parameter_is_never_shown() {
    assert_never_shown(
        "postgresql://u@127.0.0.1:1,127.0.0.1:2/db?sslmode=disable&password=Zq9Xk7",
        &["Zq9", "Xk7"],
    );
}

#[test]
fn multi_host_pooler_url_switches_to_session_mode_without_showing_the_password() {
    let url = "postgres://u:Zq9Xk7@127.0.0.1:6543,127.0.0.1:6543/db";
    assert_never_shown(url, &["Zq9", "Xk7"]);
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), Some(url), &["doctor"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("dumps and locks use postgres://u:***@127.0.0.1:5432,127.0.0.1:5432/db"),
        "{stdout}"
    );
}

#[test]
fn conninfo_quoted_password_is_never_shown() {
    assert_never_shown(
        r"host=127.0.0.1,127.0.0.1 port=1,2 user=u password='Zq9 Xk7 it\'s' dbname=db",
        &["Zq9", "Xk7", "it\\'s", "it's"],
    );
}

#[test]
fn conninfo_password_with_spaces_around_equals_is_never_shown() {
    assert_never_shown(
        "host=127.0.0.1 port=1 user=u password = Zq9Xk7 dbname=db",
        &["Zq9", "Xk7"],
    );
}

#[test]
fn multi_host_url_and_conninfo_reach_a_real_server_and_hide_its_password() {
    let db = TestDb::new();
    let c = cluster();
    for url in [
        format!(
            "postgres://postgres:{}@127.0.0.1:1,127.0.0.1:{}/{}",
            c.password, c.port, db.name
        ),
        format!(
            "host=127.0.0.1 port={} user=postgres password = '{}' dbname={}",
            c.port, c.password, db.name
        ),
    ] {
        let out = db
            .cmd()
            .env("DATABASE_URL", &url)
            .args(["-v", "doctor"])
            .output()
            .unwrap();
        assert_no_secret(&out);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("answers: PostgreSQL"),
            "{url}: {stdout}\n{}",
            text(&out.stderr)
        );
        let out = db
            .cmd()
            .env("DATABASE_URL", &url)
            .args(["-v", "--json", "backup", "--tenant", "bienestar", "--no-progress"])
            .output()
            .unwrap();
        assert_no_secret(&out);
        assert!(out.status.success(), "{url}: {}", text(&out.stderr));
    }
}

#[test]
fn broken_env_file_names_its_line_never_its_content() {
    let dir = tempfile::tempdir().unwrap();
    for (env, line) in [
        (
            "# local settings\nDATABASE_URL=postgres://u:Zq9Xk7@h/db\nthis line is Zq9Xk7\n",
            3,
        ),
        ("BACKUP_STORAGE=/tmp/b\n\nSECRET=Zq9 Xk7\n", 3),
        ("DATABASE_URL='postgres://u:Zq9Xk7@h/db\n", 1),
    ] {
        std::fs::write(dir.path().join(".env"), env).unwrap();
        let out = run(dir.path(), None, &["list"]);
        assert_fails(
            &out,
            2,
            &format!("error: .env line {line} is not KEY=VALUE: fix or remove that line"),
        );
        assert_hidden(&out, &["Zq9", "Xk7"], env);
    }
}
