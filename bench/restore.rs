//! `cargo bench --bench restore`: restore time of a tenant schema (default ~1 GB, BENCH_SIZE_MB)
//! with `tenant-backup restore` (zstd object: download, checksum, decompress, rename aside, load,
//! carry the history over, drop the old schema, one transaction) against `psql -1 -f` of the same
//! plain dump into a fresh database, side by side, best of BENCH_ROUNDS (default 2).

use std::process::{Command, Stdio};

#[path = "common.rs"]
mod common;
use common::*;

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 1024);
    let rounds: usize = env_or("BENCH_ROUNDS", 2);
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    grow_to(&sql, size_mb);
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let url = cluster.url("bench");
    let store = work.path().join("store");
    let tool = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .args(["--no-progress", "-q"])
            .env("DATABASE_URL", &url)
            .env("BACKUP_STORAGE", &store)
            .env("PG_DUMP", cluster.bin("pg_dump"))
            .stdout(Stdio::null());
        c
    };
    measure(tool(&["backup", "--tenant", SCHEMA]), "backup");
    let sql_id = cluster
        .sql("bench", "SELECT max(id) FROM bench.backups_backuprecord")
        .unwrap_or_else(|e| die(&e.to_string()));
    measure(tool(&["backup", "--tenant", SCHEMA, "--format", "json"]), "json backup");
    let json_id = cluster
        .sql("bench", "SELECT max(id) FROM bench.backups_backuprecord")
        .unwrap_or_else(|e| die(&e.to_string()));
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

    let (mut ours, mut theirs, mut json) = (None::<Run>, None::<Run>, None::<Run>);
    for round in 0..rounds {
        let db = format!("plain_{round}");
        cluster
            .create_database(&db, None)
            .unwrap_or_else(|e| die(&e.to_string()));
        let mut c = cluster.psql_command(&db);
        c.args(["-1", "-f"]).arg(&dump).stdout(Stdio::null());
        let r = measure(c, "psql -1 -f");
        if theirs.as_ref().is_none_or(|b| r.wall < b.wall) {
            theirs = Some(r);
        }
        let _ = cluster.sql("postgres", &format!("DROP DATABASE {db}"));

        let r = measure(
            tool(&[
                "restore",
                "--tenant",
                SCHEMA,
                "--id",
                &sql_id,
                "--yes",
                "--drop-previous",
            ]),
            "restore",
        );
        if ours.as_ref().is_none_or(|b| r.wall < b.wall) {
            ours = Some(r);
        }
        let r = measure(
            tool(&["restore", "--tenant", SCHEMA, "--id", &json_id, "--yes"]),
            "json restore",
        );
        if json.as_ref().is_none_or(|b| r.wall < b.wall) {
            json = Some(r);
        }
    }
    let (o, t, j) = (ours.unwrap(), theirs.unwrap(), json.unwrap());
    println!(
        "restore bench: {dump_mb:.0} MB plain dump of schema {SCHEMA}, {} cores, best of {rounds}",
        num_cpus()
    );
    println!(
        "  psql -1 -f dump.sql (fresh database)         {:>7.2} s",
        t.wall.as_secs_f64()
    );
    println!(
        "  tenant-backup restore (sql, --drop-previous)  {:>5.2} s   {:.2}x   peak RSS {:.1} MB",
        o.wall.as_secs_f64(),
        o.wall.as_secs_f64() / t.wall.as_secs_f64(),
        o.own_rss_kb as f64 / 1024.0
    );
    println!(
        "  tenant-backup restore of the json backup      {:>5.2} s   {:.2}x   peak RSS {:.1} MB",
        j.wall.as_secs_f64(),
        j.wall.as_secs_f64() / t.wall.as_secs_f64(),
        j.own_rss_kb as f64 / 1024.0
    );
    cluster.stop();
}
