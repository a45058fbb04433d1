//! The deploy files (render.yaml, Dockerfile, crontab.example) say what the tool accepts. Neither
//! Docker nor Render runs here: their commands are run against the test database instead (dry
//! runs), and what the build needs is `scripts/build-release.sh check` in .ci/run.

use crate::support::*;

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// Each scheduled command of a deploy file, as the tool's arguments.
fn commands(file: &str) -> Vec<Vec<String>> {
    repo_file(file)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let rest = l.split("tenant-backup ").nth(1)?;
            let rest = rest.split(">>").next().unwrap();
            Some(rest.split_whitespace().map(String::from).collect())
        })
        .filter(|args: &Vec<String>| !args.is_empty())
        .collect()
}

#[test]
fn the_blueprint_and_the_crontab_run_commands_the_tool_accepts() {
    let db = TestDb::new();
    let render = commands("render.yaml");
    let cron = commands("crontab.example");
    assert_eq!(render, cron, "render.yaml and crontab.example schedule the same work");
    assert!(render.iter().any(|c| c[0] == "run-scheduled"), "{render:?}");
    assert!(render.iter().any(|c| c[0] == "cleanup"), "a retention job: {render:?}");
    for args in render {
        let out = db.cmd().args(&args).arg("--dry-run").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn the_blueprint_names_its_storage_and_secrets_and_builds_with_docker() {
    let render = repo_file("render.yaml");
    for needed in [
        "runtime: docker",
        "- key: BACKUP_STORAGE",
        "- key: SUPABASE_SERVICE_ROLE_KEY",
        "- fromGroup: tenant-backup",
        "- key: PG_MAJOR",
    ] {
        assert!(render.contains(needed), "render.yaml lacks {needed:?}");
    }
    let secret = render.split("- key: DATABASE_URL").nth(1).unwrap();
    assert!(
        secret.trim_start().starts_with("sync: false"),
        "DATABASE_URL is a secret"
    );
    assert!(!render.contains("fromDatabase"), "not tied to a Render database");
    assert_eq!(
        render.matches("fromGroup: tenant-backup").count(),
        2,
        "both jobs share one group"
    );

    let dockerfile = repo_file("Dockerfile");
    assert!(dockerfile.contains("RUN scripts/build-release.sh build /out"));
    assert!(dockerfile.contains("ARG PG_MAJOR") && dockerfile.contains("postgresql-client-${PG_MAJOR}"));
    assert!(dockerfile.contains("apt.postgresql.org") && dockerfile.contains("ca-certificates"));
    assert!(repo_file(".ci/run").contains("scripts/build-release.sh check"));
}
