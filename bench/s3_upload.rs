//! `cargo bench --bench s3_upload`: does the upload overlap the dump? A tenant schema of clinic
//! rows (default ~512 MB, BENCH_SIZE_MB) is backed up to moto's S3 server through a local proxy
//! that caps the upload at BENCH_UPLOAD_MBPS (default 20 MB/s, one link shared by all
//! connections), so the upload takes real time. Interleaved, BENCH_ROUNDS rounds (default 5),
//! medians, for the default settings (zstd 3) and for `--compress none`:
//!   dump   = `tenant-backup backup` into a local directory (dump, compress, store: no upload),
//!   upload = the same object uploaded alone (the tool's own S3 upload, in this process),
//!   backup = `tenant-backup backup` to S3 through the proxy,
//! and prints backup / max(dump, upload) (1.00 is perfect overlap, the target is ≤ 1.10) and
//! backup / (dump + upload) (what uploading after the dump would cost). Needs moto
//! (`.venv/bin/moto_server` or MOTO_SERVER), as the tests do.
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::*;

use tenant_backup::storage::{self, StorageOptions};

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 512);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let mbps: f64 = env_or("BENCH_UPLOAD_MBPS", 20.0);
    let moto = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
    if !moto.is_file() {
        die(
            "moto_server not found: python3 -m venv .venv && .venv/bin/pip install 'moto[server]' (or set MOTO_SERVER)",
        );
    }
    let port = free_port();
    let mut moto = Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    grow_to(&sql, size_mb);
    sql("VACUUM ANALYZE");
    create_bucket(port);
    let proxy = throttle(port, mbps * 1e6);
    let endpoint = format!("http://127.0.0.1:{proxy}");
    // For the in-process upload: the same variables the tool reads.
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
    std::env::set_var("AWS_REGION", "us-east-1");
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let backup = |storage: &str, extra: &[&str]| {
        let mut c = Command::new(bin);
        c.args(["backup", "--tenant", SCHEMA, "--no-progress", "-q"])
            .args(extra)
            .env("DATABASE_URL", cluster.url("bench"))
            .env("BACKUP_STORAGE", storage)
            .env("PG_DUMP", cluster.bin("pg_dump"))
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .stdout(Stdio::null());
        c
    };

    println!(
        "s3 upload overlap bench: PostgreSQL {}, {} cores, moto on 127.0.0.1 behind a {mbps} MB/s proxy, median of {rounds}",
        sql("SHOW server_version"),
        num_cpus()
    );
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>16} {:>16} {:>11}",
        "settings", "object", "dump", "upload", "backup", "backup/max(d,u)", "backup/(d+u)", "RSS (own)"
    );
    let mut n = 0;
    for (label, extra) in [
        ("zstd 3 (default)", &[][..]),
        ("--compress none", &["--compress", "none"][..]),
    ] {
        let local = work.path().join("local");
        let (mut dumps, mut uploads, mut backups) = (Vec::new(), Vec::new(), Vec::new());
        let mut object_size = 0;
        for _ in 0..rounds {
            let _ = std::fs::remove_dir_all(&local);
            // The tool never creates its storage directory.
            std::fs::create_dir_all(&local).unwrap();
            dumps.push(measure(
                backup(local.to_str().unwrap(), extra),
                "backup to a local directory",
            ));
            let object = find_object(&local);
            object_size = std::fs::metadata(&object).unwrap().len();
            n += 1;
            let store = storage::open(&format!("s3://bench/upload-{n}"), &StorageOptions::default())
                .unwrap_or_else(|e| die(&e.to_string()));
            let started = Instant::now();
            runtime
                .block_on(store.put_file("bench/object", &object))
                .unwrap_or_else(|e| die(&format!("uploading alone: {e}")));
            uploads.push(started.elapsed());
            n += 1;
            backups.push(measure(
                backup(&format!("s3://bench/backup-{n}"), extra),
                "backup to S3",
            ));
        }
        let d = median(dumps.iter().map(|r| r.wall).collect());
        let u = median(uploads);
        let rss = median_run(backups.clone()).own_rss_kb;
        let b = median(backups.iter().map(|r| r.wall).collect());
        println!(
            "{:<16} {:>6.1} MB {:>8.2}s {:>8.2}s {:>8.2}s {:>15.2}x {:>15.2}x {:>8.1} MB",
            label,
            object_size as f64 / 1e6,
            d.as_secs_f64(),
            u.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / d.max(u).as_secs_f64(),
            b.as_secs_f64() / (d + u).as_secs_f64(),
            rss as f64 / 1024.0
        );
    }
    let _ = moto.kill();
    let _ = moto.wait();
    cluster.stop();
}

/// Creates the bucket (moto accepts an unsigned PUT), waiting for moto to listen.
fn create_bucket(port: u16) {
    for _ in 0..150 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"PUT /bench HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    die("moto did not start");
}
