//! `cargo run --example quickstart`: starts a throwaway PostgreSQL, loads the fixture clinic
//! (public + three tenants), backs every tenant up into ./backups, lists the history, verifies and
//! restores one tenant, and stops.
//! Nothing outside ./backups and a temporary directory is touched.
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use devcluster::DevCluster;
use tenant_backup::cli::Cli;
use tenant_backup::cmd::{self, Outcome};

fn main() -> ExitCode {
    println!("==> starting a throwaway PostgreSQL cluster");
    let cluster = match DevCluster::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "    listening on 127.0.0.1:{} (data in a temporary directory)",
        cluster.port
    );

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/django_tenants.sql");
    println!(
        "==> loading {} (public + bienestar, mindcare, clinica_demo)",
        fixture.display()
    );
    if let Err(e) = cluster
        .create_database("clinic", None)
        .and_then(|()| cluster.load_file("clinic", &fixture))
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }

    let url = cluster.url("clinic");
    let quiet = ["--no-progress"];
    let steps: [(&str, Vec<&str>); 4] = [
        ("backing up every tenant into ./backups", vec!["backup", "--all"]),
        ("listing the backup history", vec!["list"]),
        (
            "checking the newest backup of bienestar: checksum, then a rolled-back restore",
            vec!["verify", "--tenant", "bienestar"],
        ),
        (
            "restoring bienestar from it, atomically",
            vec!["restore", "--tenant", "bienestar", "--latest", "--yes"],
        ),
    ];
    // The tool never creates its storage directory (a mistyped path must not quietly collect the
    // backups): the quickstart makes its own.
    if let Err(e) = std::fs::create_dir_all("./backups") {
        eprintln!("error: creating ./backups: {e}");
        return ExitCode::from(1);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let mut logging_ready = false;
    for (what, args) in steps {
        println!("\n==> tenant-backup {}    # {what}", args.join(" "));
        let argv = ["tenant-backup", "--database-url", &url, "--storage", "./backups"]
            .into_iter()
            .chain(quiet)
            .chain(args.iter().copied());
        let cli = Cli::parse_from(argv);
        if !logging_ready {
            tenant_backup::app::logging::init(cli.output.verbose, cli.output.quiet);
            logging_ready = true;
        }
        match runtime.block_on(cmd::run(cli)) {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Failed) => {
                eprintln!("error: some backups failed (see above)");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(1);
            }
        }
    }

    println!("\n==> stopping the cluster");
    cluster.stop();
    println!(
        "done. The dumps and their manifests are in ./backups; each is a zstd-compressed plain SQL dump:\n    zstd -dc backups/bienestar/backup-sql-bienestar-*.sql.zst | head"
    );
    ExitCode::SUCCESS
}
