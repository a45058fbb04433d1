//! `cargo bench --bench dumpdata`: restore of an application dumpdata backup (the bench clinic
//! schema, default ~200 MB, BENCH_SIZE_MB, written as dumpdata's one-line JSON array) against the
//! tool's own json backup of the same rows, side by side: wall time and the tool's peak RSS (the
//! dumpdata path reads the file twice, one object at a time, so its memory must not grow with the
//! file). BENCH_ROUNDS rounds (default 3), medians.
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Command, Stdio};

#[path = "common.rs"]
mod common;
use common::*;

/// One object per row, as `manage.py dumpdata` writes them (fields by column name; binary-free
/// tables, so to_jsonb's spellings are Django's).
const OBJECTS: &str = "SELECT json_build_object('model', 'appointments.patient', 'pk', id, 'fields', to_jsonb(p) - 'id')::text FROM bench.appointments_patient p \
     UNION ALL SELECT json_build_object('model', 'appointments.appointment', 'pk', id, 'fields', to_jsonb(a) - 'id')::text FROM bench.appointments_appointment a";

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 200);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    grow_to(&sql, size_mb);
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let url = cluster.url("bench");
    let store = work.path().join("store");
    std::fs::create_dir_all(store.join(SCHEMA)).unwrap();
    let tool = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .args(["--no-progress", "-q"])
            .env("DATABASE_URL", &url)
            .env("BACKUP_STORAGE", &store)
            .stdout(Stdio::null());
        c
    };
    measure(tool(&["backup", "--tenant", SCHEMA, "--format", "json"]), "json backup");
    let json_id = sql("SELECT max(id) FROM bench.backups_backuprecord");

    // The dumpdata file: `[` objects joined by `, ` `]`, one line.
    let name = format!("backup-json-{SCHEMA}-2025-01-01-000000.json");
    let path = store.join(SCHEMA).join(&name);
    let mut psql = cluster.psql_command("bench");
    psql.args(["-At", "-c", OBJECTS]).stdout(Stdio::piped());
    let mut child = psql.spawn().unwrap();
    let mut out = BufWriter::new(std::fs::File::create(&path).unwrap());
    out.write_all(b"[").unwrap();
    for (i, line) in BufReader::new(child.stdout.take().unwrap()).lines().enumerate() {
        if i > 0 {
            out.write_all(b", ").unwrap();
        }
        out.write_all(line.unwrap().as_bytes()).unwrap();
    }
    out.write_all(b"]").unwrap();
    out.flush().unwrap();
    if !child.wait().unwrap().success() {
        die("psql failed");
    }
    let file_mb = std::fs::metadata(&path).unwrap().len() as f64 / 1048576.0;
    let dumpdata_id = sql(&format!(
        "INSERT INTO bench.backups_backuprecord (file_name, file_path, file_size, backup_type, created_at) \
         VALUES ('{name}', '{SCHEMA}/{name}', 0, 'manual', now()) RETURNING id"
    ));

    let names = [
        "tenant-backup restore of the json backup",
        "tenant-backup restore of the dumpdata backup",
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (i, id) in [&json_id, &dumpdata_id].into_iter().enumerate() {
            runs[i].push(measure(
                tool(&["restore", "--tenant", SCHEMA, "--yes", "--drop-previous", "--id", id]),
                names[i],
            ));
        }
    }
    let medians: Vec<Run> = runs.into_iter().map(median_run).collect();
    println!(
        "dumpdata bench: {file_mb:.0} MB dumpdata file of schema {SCHEMA}, {} cores, median of {rounds}",
        num_cpus()
    );
    for (name, r) in names.iter().zip(&medians) {
        println!(
            "  {name:<46} {:>7.2} s   peak RSS {:.1} MB",
            r.wall.as_secs_f64(),
            r.own_rss_kb as f64 / 1024.0
        );
    }
    cluster.stop();
}
