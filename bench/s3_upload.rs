//! `cargo bench --bench s3_upload`: a large backup (default 2 GB stored, BENCH_UPLOAD_MB) uploaded
//! to moto's S3 server, reporting the tool's wall time and peak RSS. Needs moto (`.venv/bin/moto_server`
//! or MOTO_SERVER), as the tests do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "common.rs"]
mod common;
use common::*;

fn main() {
    let mb: u64 = env_or("BENCH_UPLOAD_MB", 2048);
    let moto = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
    if !moto.is_file() {
        die("moto_server not found: python3 -m venv .venv && .venv/bin/pip install 'moto[server]'");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    // Incompressible rows: the stored object is as big as the dump.
    let rows = mb * 1024 * 1024 / 100;
    sql(&format!(
        "CREATE TABLE bench.blob (id bigint PRIMARY KEY, body text); \
         INSERT INTO bench.blob SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, {rows}) g"
    ));
    // Create the bucket (moto accepts an unsigned PUT).
    for _ in 0..100 {
        let ok = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'PUT /bench HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q 200"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let mut c = Command::new(bin);
    c.args([
        "backup",
        "--tenant",
        SCHEMA,
        "--compress",
        "none",
        "--no-progress",
        "-q",
        "--json",
    ])
    .env("DATABASE_URL", cluster.url("bench"))
    .env("BACKUP_STORAGE", "s3://bench/backups")
    .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
    .env("AWS_ACCESS_KEY_ID", "bench")
    .env("AWS_SECRET_ACCESS_KEY", "bench")
    .env("AWS_REGION", "us-east-1")
    .env("PG_DUMP", cluster.bin("pg_dump"))
    .stdout(Stdio::piped());
    let out_path = std::env::temp_dir().join("s3_upload_bench.json");
    c.stdout(std::fs::File::create(&out_path).unwrap());
    let run = measure(c, "backup to S3");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap_or_default();
    let size = json[0]["backup"]["size"].as_u64().unwrap_or(0);
    println!(
        "s3 upload bench: {:.0} MB object (no compression) to moto on 127.0.0.1",
        size as f64 / 1048576.0
    );
    println!(
        "  tenant-backup backup → s3   {:>7.1} s   peak RSS {:.1} MB (own), {:.1} MB (with pg_dump)",
        run.wall.as_secs_f64(),
        run.own_rss_kb as f64 / 1024.0,
        run.tree_rss_kb as f64 / 1024.0
    );
    let _ = moto.kill();
    let _ = moto.wait();
    cluster.stop();
}
