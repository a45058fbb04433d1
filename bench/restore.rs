//! `cargo bench --bench restore`: restore time of a tenant schema (default ~1 GB, BENCH_SIZE_MB)
//! with `tenant-backup restore` (zstd object: download, checksum, decompress, rename aside, load,
//! carry the history over, drop the old schema, one transaction) against `psql -1 -f` of the same
//! plain dump into a fresh database, side by side: the sql backup, the same backup encrypted (age,
//! signed), and the json backup. Runs are interleaved, BENCH_ROUNDS rounds (default 5), medians.
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::process::{Command, Stdio};

#[path = "common.rs"]
mod common;
use common::*;

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 1024);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    grow_to(&sql, size_mb);
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let url = cluster.url("bench");
    let store = work.path().join("store");
    let keys = keys_init(bin);
    let tool = |args: &[&str], encrypted: bool| {
        let mut c = Command::new(bin);
        c.args(args)
            .args(["--no-progress", "-q"])
            .env("DATABASE_URL", &url)
            .env("BACKUP_STORAGE", &store)
            .env("PG_DUMP", cluster.bin("pg_dump"))
            .stdout(Stdio::null());
        if encrypted {
            c.env("BACKUP_AGE_RECIPIENT", &keys.recipient)
                .env("BACKUP_AGE_IDENTITY", &keys.identity)
                .env("BACKUP_SIGNING_KEY", &keys.signing);
        }
        c
    };
    let newest = || sql("SELECT max(id) FROM bench.backups_backuprecord");
    measure(tool(&["backup", "--tenant", SCHEMA], false), "backup");
    let sql_id = newest();
    measure(tool(&["backup", "--tenant", SCHEMA], true), "encrypted backup");
    let age_id = newest();
    measure(
        tool(&["backup", "--tenant", SCHEMA, "--format", "json"], false),
        "json backup",
    );
    let json_id = newest();
    let dump = work.path().join("dump.sql");
    let status = Command::new(cluster.bin("pg_dump"))
        .args(["-n", SCHEMA, "--no-owner", "--no-privileges", "-f"])
        .arg(&dump)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", &cluster.password)
        .env("PGDATABASE", "bench")
        .status()
        .unwrap();
    if !status.success() {
        die("pg_dump failed");
    }
    let dump_mb = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;

    let names = [
        "psql -1 -f dump.sql (fresh database)",
        "tenant-backup restore (sql, --drop-previous)",
        "tenant-backup restore (sql, age, signed)",
        "tenant-backup restore of the json backup",
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        let db = format!("plain_{round}");
        cluster
            .create_database(&db, None)
            .unwrap_or_else(|e| die(&e.to_string()));
        let mut c = cluster.psql_command(&db);
        c.args(["-1", "-f"]).arg(&dump).stdout(Stdio::null());
        runs[0].push(measure(c, names[0]));
        let _ = cluster.sql("postgres", &format!("DROP DATABASE {db}"));
        let restore = ["restore", "--tenant", SCHEMA, "--yes", "--drop-previous", "--id"];
        runs[1].push(measure(
            tool(&[&restore[..], &[sql_id.as_str()]].concat(), false),
            names[1],
        ));
        runs[2].push(measure(
            tool(&[&restore[..], &[age_id.as_str()]].concat(), true),
            names[2],
        ));
        runs[3].push(measure(
            tool(&["restore", "--tenant", SCHEMA, "--id", &json_id, "--yes"], false),
            names[3],
        ));
    }
    let medians: Vec<Run> = runs.into_iter().map(median_run).collect();
    println!(
        "restore bench: {dump_mb:.0} MB plain dump of schema {SCHEMA}, {} cores, median of {rounds}",
        num_cpus()
    );
    let base = medians[0].wall.as_secs_f64();
    for (name, r) in names.iter().zip(&medians) {
        println!(
            "  {name:<46} {:>7.2} s   {:.2}x   peak RSS {:.1} MB",
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / base,
            r.own_rss_kb as f64 / 1024.0
        );
    }
    println!(
        "  encryption overhead on restore: {:.1}%",
        (medians[2].wall.as_secs_f64() / medians[1].wall.as_secs_f64() - 1.0) * 100.0
    );
    cluster.stop();
}
