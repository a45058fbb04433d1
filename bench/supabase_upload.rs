//! `cargo bench --bench supabase_upload`: where the time of a backup to Supabase goes. A tenant
//! schema of clinic rows (default ~256 MB, BENCH_SIZE_MB) is backed up to the project's Supabase
//! stub (tests/support/supabase_stub.rs, in this process) through a local proxy that caps the
//! upload at BENCH_UPLOAD_MBPS (default 20 MB/s, one link shared by all connections).
//! Interleaved, BENCH_ROUNDS rounds (default 5), medians, for each of BENCH_COMPRESS (default
//! `zstd,none`):
//!   dump   = `tenant-backup backup` into a local directory (dump, compress, store: no upload),
//!   put    = the same object sent as one plain POST (what `curl` would do: the floor),
//!   chunks = the same object uploaded alone by the tool (resumable, 6 MiB chunks, in this process),
//!   backup = `tenant-backup backup` to Supabase through the proxy,
//! and prints chunks / put (what the chunked protocol costs), backup / max(dump, put) (the issue's
//! target is ≤ 1.2) and backup / (dump + put) (what uploading after the dump would cost).
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::*;

#[allow(unused_imports)]
// The stub is a server of its own, on the wall clock (as in the tests).
#[allow(clippy::disallowed_methods)]
#[path = "../tests/support/supabase_stub.rs"]
mod supabase_stub;

use tenant_backup::storage::{self, StorageOptions};

const KEY: &str = "sb_secret_bench";

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 256);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let mbps: f64 = env_or("BENCH_UPLOAD_MBPS", 20.0);
    let compress: String = env_or("BENCH_COMPRESS", "zstd,none".to_string());
    // Standard uploads of any size, for the single-POST floor.
    let stub = supabase_stub::SupabaseStub::start(KEY, "backups", usize::MAX);
    let stub_port: u16 = stub.url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = throttle(stub_port, mbps * 1e6);
    let url = format!("http://127.0.0.1:{proxy}");
    // Resumable uploads are handed a URL on the proxy too, as a gateway would.
    stub.state.lock().unwrap().tus_location_origin = Some(url.clone());
    // For the in-process upload: the same variables the tool reads.
    std::env::set_var("SUPABASE_URL", &url);
    std::env::set_var("SUPABASE_KEY", KEY);
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    grow_to(&sql, size_mb);
    sql("VACUUM ANALYZE");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();

    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let backup = |storage: &str, extra: &[&str]| {
        let mut c = Command::new(bin);
        // BENCH_VERBOSE: the tool's debug log (each chunk's timing) on stderr.
        let verbosity = if std::env::var_os("BENCH_VERBOSE").is_some() {
            "-v"
        } else {
            "-q"
        };
        c.args(["backup", "--tenant", SCHEMA, "--no-progress", verbosity])
            .args(extra)
            .env("DATABASE_URL", cluster.url("bench"))
            .env("BACKUP_STORAGE", storage)
            .env("PG_DUMP", cluster.bin("pg_dump"))
            .env("SUPABASE_URL", &url)
            .env("SUPABASE_KEY", KEY)
            .stdout(Stdio::null());
        c
    };
    // Between measurements: the stub keeps objects in memory.
    let forget = || {
        let mut st = stub.state.lock().unwrap();
        st.objects.clear();
        st.uploads.clear();
    };

    println!(
        "supabase upload bench: PostgreSQL {}, {} cores, the Supabase stub behind a {mbps} MB/s proxy, median of {rounds}",
        sql("SHOW server_version"),
        num_cpus()
    );
    println!(
        "{:<16} {:>9} {:>8} {:>8} {:>8} {:>8} {:>12} {:>16} {:>13}",
        "settings", "object", "dump", "put", "chunks", "backup", "chunks/put", "backup/max(d,p)", "backup/(d+p)"
    );
    let mut n = 0;
    for setting in compress.split(',') {
        let (label, extra): (&str, &[&str]) = match setting.trim() {
            "none" => ("--compress none", &["--compress", "none"]),
            _ => ("zstd 3 (default)", &[]),
        };
        let local = work.path().join("local");
        let (mut dumps, mut puts, mut chunked, mut backups) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut object_size = 0;
        for _ in 0..rounds {
            let _ = std::fs::remove_dir_all(&local);
            // The tool never creates its storage directory.
            std::fs::create_dir_all(&local).unwrap();
            dumps.push(measure(backup(local.to_str().unwrap(), extra), "backup to a local directory").wall);
            let object = find_object(&local);
            object_size = std::fs::metadata(&object).unwrap().len();
            n += 1;
            puts.push(runtime.block_on(single_post(&http, &url, &object, n)));
            forget();
            let store = storage::open(&format!("supabase://backups/upload-{n}"), &StorageOptions::default())
                .unwrap_or_else(|e| die(&e.to_string()));
            let started = Instant::now();
            runtime
                .block_on(store.put_file("bench/object", &object))
                .unwrap_or_else(|e| die(&format!("uploading alone: {e}")));
            chunked.push(started.elapsed());
            forget();
            n += 1;
            backups.push(
                measure(
                    backup(&format!("supabase://backups/backup-{n}"), extra),
                    "backup to Supabase",
                )
                .wall,
            );
            forget();
        }
        let (d, p, c, b) = (median(dumps), median(puts), median(chunked), median(backups));
        println!(
            "{:<16} {:>6.1} MB {:>7.2}s {:>7.2}s {:>7.2}s {:>7.2}s {:>11.2}x {:>15.2}x {:>12.2}x",
            label,
            object_size as f64 / 1e6,
            d.as_secs_f64(),
            p.as_secs_f64(),
            c.as_secs_f64(),
            b.as_secs_f64(),
            c.as_secs_f64() / p.as_secs_f64(),
            b.as_secs_f64() / d.max(p).as_secs_f64(),
            b.as_secs_f64() / (d + p).as_secs_f64(),
        );
    }
    cluster.stop();
}

/// The whole object in one standard upload, as a plain client would send it.
async fn single_post(http: &reqwest::Client, url: &str, object: &Path, n: usize) -> Duration {
    let bytes = tokio::fs::read(object).await.unwrap();
    let started = Instant::now();
    let r = http
        .post(format!("{url}/storage/v1/object/backups/single-{n}/object"))
        .header("apikey", KEY)
        .header("Content-Type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap_or_else(|e| die(&format!("the single POST: {e}")));
    if !r.status().is_success() {
        die(&format!("the single POST: {}", r.status()));
    }
    started.elapsed()
}
