//! Help that teaches, and input errors that come before configuration errors.

use crate::support::*;

fn bin() -> assert_cmd::Command {
    crate::support::tool_cmd()
}

#[test]
fn every_command_shows_its_own_options_first_then_the_global_ones_and_examples() {
    for cmd in [
        "backup",
        "run-scheduled",
        "restore",
        "cleanup",
        "list",
        "schedule",
        "status",
        "download",
        "verify",
        "doctor",
    ] {
        let out = bin().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let help = text(&out.stdout);
        let own = help.find("Options:").unwrap_or_else(|| panic!("{cmd}: {help}"));
        let global = help.find("(every command):").unwrap_or_else(|| panic!("{cmd}: {help}"));
        assert!(own < global, "{cmd}: own options come first\n{help}");
        assert!(
            help.find("--database-url").unwrap() > global,
            "{cmd}: --database-url is under the global heading"
        );
        let examples = help.find("Examples:").unwrap_or_else(|| panic!("{cmd}: {help}"));
        assert!(
            examples < global,
            "{cmd}: the examples come before the global options\n{help}"
        );
        assert!(help.contains(&format!("tenant-backup {cmd}")), "{cmd}");
        if cmd != "schedule" && cmd != "status" {
            // Every command that reads or writes the bucket names the credential variables.
            for var in ["AWS_ACCESS_KEY_ID", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_URL"] {
                let at = help.find(var).unwrap_or_else(|| panic!("{cmd} names {var}: {help}"));
                assert!(at < global, "{cmd}: {var} before the global options");
            }
        }
    }
}

#[test]
fn top_level_help_names_every_environment_variable_that_matters() {
    let out = bin().arg("--help").output().unwrap();
    let help = text(&out.stdout);
    for needle in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_BUCKET_NAME",
        ".env",
        "TMPDIR",
        "RUST_LOG",
        "BACKUP_PING_URL",
    ] {
        assert!(help.contains(needle), "{needle} missing from --help:\n{help}");
    }
}

#[test]
fn backup_without_a_tenant_mentions_all_and_schedule_explains_rfc_3339() {
    let out = bin().arg("backup").output().unwrap();
    assert_fails(&out, 2, "--all");
    let out = bin().args(["schedule", "--help"]).output().unwrap();
    let help = text(&out.stdout);
    assert!(
        help.contains("RFC 3339") && help.contains("2026-12-24T03:00:00+01:00"),
        "{help}"
    );
}

#[test]
fn input_errors_come_before_a_missing_database_url() {
    for (args, needle) in [
        (
            vec!["cleanup", "--days", "soon"],
            "for '--days <N>': \"soon\" is not a whole number from 1 to 36500",
        ),
        (vec!["cleanup", "--pre-restore-days", "-1"], "--pre-restore-days"),
        (
            vec!["backup", "--all", "--level", "40"],
            "\"40\" is not a whole number from 1 to 19",
        ),
        (vec!["run-scheduled", "--daily-at", "3am"], "--daily-at"),
        (
            vec!["run-scheduled", "--daily-at", "03:00", "--timezone", "Mars/Olympus"],
            "time zone",
        ),
        (
            vec!["status", "--daily-at", "03:00", "--timezone", "Mars/Olympus"],
            "time zone",
        ),
        (vec!["schedule", "--tenant", "x", "hourly"], "unknown schedule"),
        (vec!["schedule", "--tenant", "x", "at", "tomorrow"], "RFC 3339"),
    ] {
        let out = bin().args(&args).output().unwrap();
        assert_fails(&out, 2, needle);
        assert!(
            !text(&out.stderr).contains("DATABASE_URL"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// ARCHITECTURE.md: `app/` is what commands share and knows nothing of clap; `cli/` turns the
/// command line into its `Settings`. An import the other way would be a loop again.
#[test]
fn the_app_room_never_imports_cli() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/app");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            !text.contains("crate::cli") && !text.contains("clap::"),
            "{} imports the command line",
            entry.path().display()
        );
    }
}
