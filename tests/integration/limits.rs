//! No input makes the tool panic: every numeric flag has a range (exit 2, naming it), and the
//! in-memory storage exists only in unit tests.

use crate::support::*;

const HUGE: &str = "18446744073709551615";

#[test]
fn extreme_numbers_exit_2_naming_the_range_and_never_panic() {
    let db = TestDb::new();
    db.backup(&["--tenant", "bienestar"]);
    let ranged: &[(&[&str], &str)] = &[
        (
            &["backup", "--tenant", "bienestar", "--lock-timeout", HUGE],
            "from 0 to 86400",
        ),
        (
            &[
                "restore",
                "--tenant",
                "bienestar",
                "--latest",
                "--yes",
                "--lock-timeout",
                HUGE,
            ],
            "from 0 to 86400",
        ),
        (
            &["verify", "--tenant", "bienestar", "--lock-timeout", HUGE],
            "from 0 to 86400",
        ),
        (&["cleanup", "--days", "30", "--lock-timeout", HUGE], "from 0 to 86400"),
        (&["cleanup", "--days", "100000000"], "from 1 to 36500"),
        (&["cleanup", "--days", "0"], "from 1 to 36500"),
        (&["cleanup", "--pre-restore-days", "100000000"], "from 1 to 36500"),
        (&["cleanup", "--days", "30", "--keep-last", HUGE], "from 0 to 1000000"),
        (
            &["cleanup", "--orphans", "--grace-hours", "4294967295"],
            "from 0 to 876000",
        ),
        (&["backup", "--all", "--concurrency", HUGE], "from 1 to 64"),
        (&["run-scheduled", "--concurrency", "0"], "from 1 to 64"),
        (&["--storage-retries", HUGE, "list"], "from 0 to 100"),
        (
            &["backup", "--tenant", "bienestar", "--level", "2147483647"],
            "from 1 to 19",
        ),
        (&["run-scheduled", "--level", "0"], "from 1 to 19"),
        (
            &["backup", "--tenant", "bienestar", "--max-size", "99999999999999999999"],
            "1 byte to 16 EiB",
        ),
        (
            &["backup", "--tenant", "bienestar", "--max-size", "17179869184G"],
            "1 byte to 16 EiB",
        ),
        (
            &["restore", "--tenant", "bienestar", "--id", HUGE, "--yes"],
            "from 1 to 9223372036854775807",
        ),
        (
            &["restore", "--tenant", "bienestar", "--id", "0", "--yes"],
            "from 1 to 9223372036854775807",
        ),
        (
            &["verify", "--tenant", "bienestar", "--id", "0"],
            "from 1 to 9223372036854775807",
        ),
        (
            &["download", "--tenant", "bienestar", "--id", HUGE],
            "from 1 to 9223372036854775807",
        ),
    ];
    for (args, range) in ranged {
        let out = db.cmd().args(*args).output().unwrap();
        assert_fails(&out, 2, range);
    }
    // In range but extreme: a clean answer (0 done, 1 some work failed, 2 usage), never a panic.
    let extreme: &[(&[&str], Option<i32>)] = &[
        (&["cleanup", "--days", "36500", "--pre-restore-days", "36500", "--keep-last", "1000000"], Some(0)),
        (&["cleanup", "--orphans", "--fix", "--grace-hours", "876000"], Some(0)),
        (&["restore", "--tenant", "bienestar", "--id", "9223372036854775807", "--yes"], Some(2)),
        (&["download", "--tenant", "bienestar", "--id", "9223372036854775807", "-o", "-"], Some(2)),
        (&["backup", "--tenant", "bienestar", "--created-by", HUGE], Some(2)),
        (&["schedule", "--tenant", "bienestar", "at", "+262143-12-31T23:59:59Z"], Some(2)),
        (&["schedule", "--tenant", "bienestar", "at", "9999-12-31T23:59:59Z"], Some(0)),
        (&["status"], None),
        (&["status", "--daily-at", "23:59", "--timezone", "Pacific/Kiritimati"], None),
        (&["status", "--daily-at", "99:99"], Some(2)),
        (&["run-scheduled", "--dry-run", "--daily-at", "00:00", "--timezone", "Etc/GMT+12"], Some(0)),
        (&["backup", "--tenant", "bienestar", "--max-size", HUGE, "--lock-timeout", "86400"], Some(0)),
        (&["-vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv", "list"], Some(0)),
    ];
    for (args, code) in extreme {
        let out = db.cmd().args(*args).output().unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        match code {
            Some(c) => assert_eq!(out.status.code(), Some(*c), "{args:?}: {stderr}"),
            None => assert!(matches!(out.status.code(), Some(0..=2)), "{args:?}: {stderr}"),
        }
    }
}

#[test]
fn memory_storage_is_refused_outside_tests() {
    let db = TestDb::new();
    let before = db.record_count("bienestar");
    let out = db
        .cmd()
        .env("BACKUP_STORAGE", "memory://")
        .args(["backup", "--tenant", "bienestar"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "storage scheme memory:// is not supported");
    assert_eq!(db.record_count("bienestar"), before);
}
