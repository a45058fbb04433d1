//! `cargo bench --bench guard`: what the worst objects cost restore's guard (issue #22 item 3).
//! An object of the bench tenant is replaced, manifest fixed up as anyone who can write to the
//! bucket could, by each hostile shape in turn; `verify` reads it. Printed: the object's size, the
//! verify's wall time and the tool's peak RSS (VmHWM; psql's is not the question, and a child's
//! rusage here would count the pages it shares with this bench at fork), and how it ended. The
//! bound to hold: under 256 MB and linear time, whatever the object holds. A genuine backup of the
//! same tenant is the baseline.

#![allow(clippy::disallowed_macros)] // a bench prints its table to a terminal

use std::process::{Command, Stdio};

use sha2::Digest;

#[path = "common.rs"]
mod common;
use common::*;

fn main() {
    let cluster = bench_cluster();
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    sql(GROW);
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let url = cluster.url("bench");
    let store = work.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let tool = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .args(["--no-progress", "-q"])
            .env("DATABASE_URL", &url)
            .env("BACKUP_STORAGE", &store)
            .env("PG_DUMP", cluster.bin("pg_dump"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let newest = || sql("SELECT max(id) FROM bench.backups_backuprecord");
    let key_of = |id: &str| {
        sql(&format!(
            "SELECT file_path FROM bench.backups_backuprecord WHERE id = {id}"
        ))
    };
    measure(
        tool(&["backup", "--tenant", SCHEMA, "--compress", "none"]),
        "plain backup",
    );
    let (plain_id, plain_key) = (newest(), key_of(&newest()));
    measure(
        tool(&["backup", "--tenant", SCHEMA, "--compress", "none", "--format", "json"]),
        "json backup",
    );
    let (json_id, json_key) = (newest(), key_of(&newest()));
    let plain = std::fs::read_to_string(store.join(&plain_key)).unwrap();
    let json = std::fs::read_to_string(store.join(&json_key)).unwrap();
    let at = plain.find("\nCOPY ").unwrap() + 1;
    let with = |extra: &str| format!("{}{extra}\n{}", &plain[..at], &plain[at..]);
    let values = |tokens: usize| {
        format!(
            "INSERT INTO bench.users_user (id) VALUES {}(1);",
            "(1),".repeat(tokens / 4)
        )
    };
    let chain = |ops: usize| format!("CREATE VIEW bench.deep AS SELECT {}1 AS s;", "1 + ".repeat(ops));
    let parens = |n: usize| {
        format!(
            "CREATE VIEW bench.deep AS SELECT {}1{} AS s;",
            "(".repeat(n),
            ")".repeat(n)
        )
    };
    let body = |n: usize| {
        format!(
            "CREATE FUNCTION bench.f() RETURNS int LANGUAGE plpgsql AS $$ DECLARE x int := 0; BEGIN {} RETURN x; END $$;",
            "x := x + 1; ".repeat(n)
        )
    };
    let string = |mb: usize| {
        format!(
            "INSERT INTO bench.users_user (id, email) VALUES (1, '{}');",
            "x".repeat(mb << 20)
        )
    };
    let cases: Vec<(&str, &str, String)> = vec![
        ("genuine plain backup", "plain", plain.clone()),
        ("genuine json backup", "json", json.clone()),
        (
            "VALUES, 49,900 tokens (just under the bound)",
            "plain",
            with(&values(49_900)),
        ),
        (
            "VALUES, 8 MiB (2M tokens: refused before parsing)",
            "plain",
            with(&values(8 << 20)),
        ),
        ("VALUES, 60 MiB", "plain", with(&values(60 << 20))),
        ("operator chain, 45", "plain", with(&chain(45))),
        ("operator chain, 700", "plain", with(&chain(700))),
        ("operator chain, 5,000", "plain", with(&chain(5_000))),
        ("operator chain, 49,000", "plain", with(&chain(49_000))),
        ("nested parentheses, 10,000", "plain", with(&parens(10_000))),
        ("PL/pgSQL body, 48,000 tokens", "plain", with(&body(8_000))),
        ("one string literal, 15 MiB", "plain", with(&string(15))),
        ("one string literal, 48 MiB", "plain", with(&string(48))),
        (
            "statement without end, 100 MiB",
            "plain",
            with(&format!("SELECT '{}", "x".repeat(100 << 20))),
        ),
        (
            "json line without end, 100 MiB",
            "json",
            format!("{}{}", json.lines().next().unwrap(), "x".repeat(100 << 20)),
        ),
        ("json row of 31 MiB (just under the bound)", "json", big_row(&json, 31)),
        ("json row of 60 MiB", "json", big_row(&json, 60)),
    ];
    println!("| object | size | verify wall | peak RSS | outcome |");
    println!("|---|---|---|---|---|");
    for (name, format, text) in cases {
        let (id, key) = match format {
            "plain" => (&plain_id, &plain_key),
            _ => (&json_id, &json_key),
        };
        tamper(&store, key, text.as_bytes());
        let (run, ok) = measure_any(tool(&["verify", "--tenant", SCHEMA, "--id", id]), name);
        println!(
            "| {name} | {:.1} MB | {:.2} s | {} MB | {} |",
            text.len() as f64 / 1e6,
            run.wall.as_secs_f64(),
            run.own_rss_kb / 1024,
            if ok { "verified" } else { "refused" }
        );
    }
}

/// The json dump with its first patient row's notes grown to `mb` MiB.
fn big_row(json: &str, mb: usize) -> String {
    let mut lines: Vec<String> = json.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("[\"table\"") && l.contains("\"name\":\"appointments_patient\""))
        .unwrap()
        + 1;
    let mut row: serde_json::Value = serde_json::from_str(&lines[at]).unwrap();
    row["notes"] = "n".repeat(mb << 20).into();
    lines[at] = row.to_string();
    lines.join("\n") + "\n"
}

/// Replaces an object and fixes its manifest's size and checksum.
fn tamper(store: &std::path::Path, key: &str, bytes: &[u8]) {
    std::fs::write(store.join(key), bytes).unwrap();
    let manifest = store.join(format!("{key}.manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["size"] = bytes.len().into();
    m["sha256"] = hex::encode(sha2::Sha256::digest(bytes)).into();
    m["row_counts"] = serde_json::Value::Null;
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}
