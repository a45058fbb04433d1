//! `cargo bench --bench backup`: builds a tenant schema of realistic rows (default ~1 GB, set
//! BENCH_SIZE_MB), then measures side by side, at half the size and at full size:
//!   pg_dump -n S > /dev/null,   pg_dump -n S | zstd -3 > file,   pg_dump -n S | gzip > file,
//!   tenant-backup backup (default settings: zstd 3, local directory), encrypted, and --format json
//! and prints wall time, ratios against raw pg_dump, and peak RSS, then the stored sizes against
//! zstd -3's and the two targets of issue #17 (backup ≤ 1.05× pg_dump, stored ≤ 1.05× zstd -3).
//! Runs are interleaved (BENCH_ROUNDS rounds, default 5) and the median of each is printed, so a
//! noisy moment hurts all alike, with each round's ratio to that round's `pg_dump` and
//! `pg_dump | zstd -3` (the spread) and the load average the rounds ran under.
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::path::Path;
use std::process::{Command, Stdio};

#[path = "common.rs"]
mod common;
use common::*;

type MakeCommand<'a> = Box<dyn Fn() -> Command + 'a>;

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 1024);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let pg_dump = cluster.bin("pg_dump");
    let url = cluster.url("bench");
    let version = sql("SHOW server_version");

    println!(
        "tenant-backup backup bench: PostgreSQL {version}, {} cores, median of {rounds}",
        num_cpus()
    );
    println!(
        "{:<9} {:<34} {:>9} {:>7} {:>12} {:>13}",
        "schema", "method", "wall", "ratio", "RSS (own)", "RSS (+pg_dump)"
    );
    let mut own_rss = Vec::new();
    for target_mb in [size_mb / 2, size_mb] {
        grow_to(&sql, target_mb);
        sql("VACUUM ANALYZE");
        let actual = sql(&format!(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{SCHEMA}' AND c.relkind = 'r'"
        ));
        let actual_mb = actual.parse::<f64>().unwrap_or(0.0) / 1048576.0;
        let libpq = |c: &mut Command| {
            c.env("PGHOST", "127.0.0.1")
                .env("PGPORT", cluster.port.to_string())
                .env("PGUSER", "postgres")
                .env("PGPASSWORD", &cluster.password)
                .env("PGDATABASE", "bench");
        };
        let gz = work.path().join("dump.sql.gz");
        let zst = work.path().join("dump.sql.zst");
        let (store, store_age, store_json) = (
            work.path().join("store"),
            work.path().join("store-age"),
            work.path().join("store-json"),
        );
        let keys = keys_init(bin);
        let methods: Vec<(&str, MakeCommand)> = vec![
            (
                "pg_dump -n S > /dev/null",
                Box::new(|| {
                    let mut c = Command::new(&pg_dump);
                    c.args(["-n", SCHEMA, "--no-owner", "--no-privileges"])
                        .stdout(Stdio::null());
                    libpq(&mut c);
                    c
                }),
            ),
            (
                "pg_dump -n S | zstd -3 > file",
                Box::new(|| {
                    let mut c = Command::new("sh");
                    c.arg("-c").arg(format!(
                        "'{}' -n {SCHEMA} --no-owner --no-privileges | zstd -q -3 -f -o '{}'",
                        pg_dump.display(),
                        zst.display()
                    ));
                    libpq(&mut c);
                    c
                }),
            ),
            (
                "pg_dump -n S | gzip > file",
                Box::new(|| {
                    let mut c = Command::new("sh");
                    c.arg("-c").arg(format!(
                        "'{}' -n {SCHEMA} --no-owner --no-privileges | gzip > '{}'",
                        pg_dump.display(),
                        gz.display()
                    ));
                    libpq(&mut c);
                    c
                }),
            ),
            (
                "tenant-backup backup (zstd, dir)",
                Box::new(|| {
                    fresh(&store);
                    let mut c = Command::new(bin);
                    c.args(["backup", "--tenant", SCHEMA, "--no-progress", "-q"])
                        .env("DATABASE_URL", &url)
                        .env("BACKUP_STORAGE", &store)
                        .env("PG_DUMP", &pg_dump)
                        .stdout(Stdio::null());
                    c
                }),
            ),
            (
                "tenant-backup backup (zstd, age)",
                Box::new(|| {
                    fresh(&store_age);
                    let mut c = Command::new(bin);
                    c.args(["backup", "--tenant", SCHEMA, "--no-progress", "-q"])
                        .env("DATABASE_URL", &url)
                        .env("BACKUP_STORAGE", &store_age)
                        .env("PG_DUMP", &pg_dump)
                        .env("BACKUP_AGE_RECIPIENT", &keys.recipient)
                        .env("BACKUP_SIGNING_KEY", &keys.signing)
                        .stdout(Stdio::null());
                    c
                }),
            ),
            (
                "tenant-backup --format json (zstd)",
                Box::new(|| {
                    fresh(&store_json);
                    let mut c = Command::new(bin);
                    c.args(["backup", "--tenant", SCHEMA, "--format", "json", "--no-progress", "-q"])
                        .env("DATABASE_URL", &url)
                        .env("BACKUP_STORAGE", &store_json)
                        .env("PG_DUMP", &pg_dump)
                        .stdout(Stdio::null());
                    c
                }),
            ),
        ];
        let load_before = load_average();
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); methods.len()];
        for _ in 0..rounds {
            for (i, (name, make)) in methods.iter().enumerate() {
                runs[i].push(measure(make(), name));
            }
        }
        // Each round's ratio to that round's pg_dump runs: the spread a single figure hides.
        let spread = |i: usize, base: usize| -> (f64, f64) {
            let ratios = runs[i]
                .iter()
                .zip(&runs[base])
                .map(|(r, b)| r.wall.as_secs_f64() / b.wall.as_secs_f64().max(1e-9));
            ratios.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)))
        };
        let spreads: Vec<String> = (0..methods.len())
            .map(|i| {
                let ((lo, hi), (zlo, zhi)) = (spread(i, 0), spread(i, 1));
                format!("{lo:.2}-{hi:.2}x raw, {zlo:.2}-{zhi:.2}x | zstd -3")
            })
            .collect();
        let best: Vec<Run> = runs.into_iter().map(median_run).collect();
        let base = best[0].wall.as_secs_f64();
        for (i, (name, _)) in methods.iter().enumerate() {
            let r = &best[i];
            println!(
                "{:<9} {:<34} {:>8.2}s {:>6.2}x {:>9.1} MB {:>10.1} MB   rounds: {}",
                format!("{actual_mb:.0} MB"),
                name,
                r.wall.as_secs_f64(),
                r.wall.as_secs_f64() / base,
                r.own_rss_kb as f64 / 1024.0,
                r.tree_rss_kb as f64 / 1024.0,
                spreads[i]
            );
        }
        println!(
            "{:<9} load average (1 min) {load_before} before these rounds, {} after: on a shared machine, quote the spread with the load",
            "",
            load_average()
        );
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
        let stored = |dir: &Path| object_size(dir) as f64 / 1048576.0;
        let zstd3 = size(&zst);
        println!(
            "{:<9} stored: zstd -3 {zstd3:.1} MB, gzip {:.1} MB, tenant-backup sql.zst {:.1} MB ({:.3}x zstd -3), encrypted {:.1} MB, json.zst {:.1} MB",
            "",
            size(&gz),
            stored(&store),
            stored(&store) / zstd3,
            stored(&store_age),
            stored(&store_json)
        );
        println!(
            "{:<9} targets: backup / pg_dump {:.3} (≤ 1.05), backup / pg_dump | zstd -3 {:.3}, stored / zstd -3 {:.3} (≤ 1.05)",
            "",
            best[3].wall.as_secs_f64() / base,
            best[3].wall.as_secs_f64() / best[1].wall.as_secs_f64().max(1e-9),
            stored(&store) / zstd3
        );
        own_rss.push(best[3].own_rss_kb);
    }
    println!(
        "peak RSS of tenant-backup: {:.1} MB at half size, {:.1} MB at full size ({:.2}x when the schema doubles)",
        own_rss[0] as f64 / 1024.0,
        own_rss[1] as f64 / 1024.0,
        own_rss[1] as f64 / own_rss[0].max(1) as f64
    );
    cluster.stop();
}

/// The one-minute load average, as /proc/loadavg says it ("?" elsewhere).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// An empty storage directory for the next run: the tool never creates its storage root (a missing
/// one is a mistake to fix), so the directory is made again after the last run's objects go.
fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| die(&format!("{}: {e}", dir.display())));
}

/// Bytes of the one backup object (not its manifest) under a local storage directory.
fn object_size(dir: &Path) -> u64 {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".manifest.json"))
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}
