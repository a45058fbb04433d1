//! `cargo bench --bench fleet`: what tenants cost as a database grows from 10 tenants to
//! BENCH_TENANTS (default 1,000; `BENCH_TENANTS=10000` for the big one). The tenants are the
//! fixture's three plus copies of its `mindcare` schema (15 tables, a few dozen rows), built from
//! its structure with one generated script per psql session. At each size it prints, side by side,
//! wall time (medians of interleaved runs) and the server's CPU time (means):
//!
//! 1. one tenant's backup: `pg_dump -n S > /dev/null` against `tenant-backup backup --tenant S`
//!    with `--format sql`, `--format json` and the default `auto` (BENCH_REPEAT runs, default 5);
//! 2. the whole fleet: `backup --all` and a `run-scheduled` tick with every tenant due, against one
//!    whole-database `pg_dump | zstd` (BENCH_FLEET_REPEAT runs, default 3), with the peak RSS;
//! 3. `list`, `status` and `cleanup --dry-run --days 30 --orphans` against
//!    `psql -c 'select count(*) from public.tenants_clinic'` and against the floor for reading
//!    every tenant's history, `psql` running `UNION ALL`s of 1,000 of their tables each in one
//!    session (BENCH_REPEAT runs).
//!
//! Before them at the big size, one whole-database pg_dump at the server's default
//! `max_locks_per_transaction`: when it fails ("out of shared memory"), its error is printed and
//! the setting raised to 2048 for the comparison only (tenant-backup runs at the default).
//!
//! BENCH_BIN runs another build of the tool (an earlier commit's) on the same fleet, BENCH_BEFORE
//! one beside this one.
//!
//! Then the growth: each figure at the big size over the same at 10 tenants. BENCH_SQL_ALL=1 adds
//! `backup --all --format sql` to the fleet runs (pg_dump per tenant: slow at 1,000 tenants).
// A report for the terminal that runs it, not results for a pipe (clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devcluster::DevCluster;

#[path = "common.rs"]
mod common;
use common::{die, env_or, measure, num_cpus};

const DB: &str = "fleet";
/// The tenant measured alone: a copy, the same at every size.
const ONE: &str = "clinic_00001";
const SMALL: usize = 10;

/// Wall time and server CPU of one run.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    server: Duration,
    rss_kb: u64,
    /// The tool's own CPU (user + system), where measured.
    own: Duration,
}

struct Bench<'a> {
    cluster: DevCluster,
    bin: &'a str,
    url: String,
    work: &'a Path,
    postmaster: i32,
    /// The bucket of the last fleet run, kept for `cleanup --orphans` to list.
    bucket: PathBuf,
    /// Tenants now.
    size: usize,
    /// BENCH_BEFORE: an earlier build of the tool, run beside this one on the same fleet.
    before: Option<String>,
}

fn main() {
    let big: usize = env_or("BENCH_TENANTS", 1000);
    let repeat: usize = env_or("BENCH_REPEAT", 5);
    let fleet_repeat: usize = env_or("BENCH_FLEET_REPEAT", 3);
    let sql_all = std::env::var("BENCH_SQL_ALL").is_ok_and(|v| v == "1");
    if big <= SMALL {
        die(&format!("BENCH_TENANTS must be above {SMALL}"));
    }
    // Autovacuum, busy with the new tables, would add its own work to the measurements. The server
    // starts at the default max_locks_per_transaction: see `Bench::locks`.
    let cluster = DevCluster::start_with(&[("autovacuum", "off")]).unwrap_or_else(|e| die(&e.to_string()));
    cluster
        .create_database(DB, None)
        .unwrap_or_else(|e| die(&e.to_string()));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/django_tenants.sql");
    cluster.load_file(DB, &fixture).unwrap_or_else(|e| die(&e.to_string()));
    let work = tempfile::tempdir().unwrap();
    let postmaster = postmaster_pid(&cluster);
    // BENCH_BIN: another build of the tool (an earlier commit's), to compare on the same fleet.
    let bin = std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tenant-backup").to_string());
    let url = cluster.url(DB);
    let bench = Bench {
        cluster,
        bin: &bin,
        url,
        work: work.path(),
        postmaster,
        bucket: work.path().join("none"),
        size: 0,
        before: std::env::var("BENCH_BEFORE").ok(),
    };
    let template = bench.template();
    let version = bench.sql("SHOW server_version");
    println!(
        "fleet bench: PostgreSQL {version}, {} cores; tenants = the fixture's 3 + copies of mindcare (15 tables each)",
        num_cpus()
    );
    println!("medians of {repeat} interleaved runs ({fleet_repeat} for whole fleets); the machine may be shared, so look at ratios within one size");

    let mut bench = bench;
    let mut results: Vec<(usize, Vec<(&'static str, Cost)>)> = Vec::new();
    for n in [SMALL, big] {
        let built = bench.grow(&template, n);
        bench.size = n;
        println!(
            "\n== {n} tenants ({} relations; built in {:.0} s)",
            bench.sql("SELECT count(*) FROM pg_class"),
            built.as_secs_f64()
        );
        let mut r = Vec::new();
        if n == big {
            bench.locks();
        }
        bench.single(repeat, &mut r);
        bench.fleet(fleet_repeat, sql_all, &mut r);
        bench.listings(repeat, &mut r);
        results.push((n, r));
    }

    let (small, big_r) = (&results[0].1, &results[1].1);
    println!("\n== growth from {SMALL} to {big} tenants (the big size's median over the small size's)");
    println!(
        "{:<52} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}",
        "", "wall", "", "", "server CPU", "", ""
    );
    println!(
        "{:<52} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}",
        "measure", SMALL, big, "growth", SMALL, big, "growth"
    );
    for (name, b) in big_r {
        let Some((_, s)) = small.iter().find(|(n, _)| n == name) else {
            continue;
        };
        println!(
            "{:<52} {:>10} {:>10} {:>7.2}x {:>12} {:>12} {:>7.2}x",
            name,
            secs(s.wall),
            secs(b.wall),
            b.wall.as_secs_f64() / s.wall.as_secs_f64().max(1e-6),
            secs(s.server),
            secs(b.server),
            b.server.as_secs_f64() / s.server.as_secs_f64().max(1e-6),
        );
    }
    bench.cluster.stop();
}

/// The postmaster's pid, from its pid file.
fn postmaster_pid(cluster: &DevCluster) -> i32 {
    let data_dir = cluster
        .sql(DB, "SELECT current_setting('data_directory')")
        .unwrap_or_else(|e| die(&e.to_string()));
    std::fs::read_to_string(Path::new(&data_dir).join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or_else(|| die("cannot read the server's pid"))
}

fn secs(d: Duration) -> String {
    if d.as_secs_f64() < 10.0 {
        format!("{:.3} s", d.as_secs_f64())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The median wall time; the server's CPU as a mean (the kernel counts it in 10 ms ticks, so a
/// median of short runs would be mostly rounding).
fn median(mut v: Vec<Cost>) -> Cost {
    v.sort_by_key(|c| c.wall);
    let server = v.iter().map(|c| c.server).sum::<Duration>() / v.len().max(1) as u32;
    let mid = v[v.len() / 2];
    Cost {
        server,
        rss_kb: v.iter().map(|c| c.rss_kb).max().unwrap_or(0),
        own: v.iter().map(|c| c.own).sum::<Duration>() / v.len().max(1) as u32,
        ..mid
    }
}

impl Bench<'_> {
    fn sql(&self, q: &str) -> String {
        self.cluster.sql(DB, q).unwrap_or_else(|e| die(&e.to_string()))
    }

    fn libpq(&self, c: &mut Command) {
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.cluster.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", &self.cluster.password)
            .env("PGDATABASE", DB);
    }

    /// mindcare's structure as pg_dump prints it, to be copied under other names.
    fn template(&self) -> String {
        let mut c = Command::new(self.cluster.bin("pg_dump"));
        c.args(["-n", "mindcare", "--schema-only", "--no-owner", "--no-privileges"]);
        self.libpq(&mut c);
        let out = c.output().unwrap_or_else(|e| die(&e.to_string()));
        if !out.status.success() {
            die(&String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with('\\')
                    && !l.starts_with("--")
                    && !l.starts_with("SET ")
                    && !l.starts_with("SELECT pg_catalog.set_config")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Copies of mindcare (structure, rows, sequence values, a tenant row) until there are `n`
    /// tenants, two psql sessions at once; then the catalogs are analyzed, as autovacuum would.
    fn grow(&self, template: &str, n: usize) -> Duration {
        let start = Instant::now();
        let have: usize = self
            .sql("SELECT count(*) FROM public.tenants_clinic WHERE schema_name <> 'public'")
            .parse()
            .unwrap();
        let tables: Vec<String> = self
            .sql("SELECT tablename FROM pg_tables WHERE schemaname = 'mindcare' ORDER BY 1")
            .lines()
            .map(str::to_string)
            .collect();
        // The sequences' values, set by name in each copy: `pg_sequences` filtered by schema is a
        // scan of all of pg_class, which made building 10,000 tenants quadratic (1,697 s).
        let setvals: String = self
            .sql("SELECT format('SELECT pg_catalog.setval(%L, %s);', sequencename, last_value) FROM pg_sequences WHERE schemaname = 'mindcare' AND last_value IS NOT NULL ORDER BY 1")
            .lines()
            .collect::<Vec<_>>()
            .join("\n");
        let clones: Vec<usize> = (have - 2..=n - 3).collect();
        // Fresh sessions every 1,000 tenants: a backend that created thousands of tables carries
        // them all in its caches, and each session's DDL invalidates the other's.
        for batch in clones.chunks(1000) {
            self.grow_batch(template, &tables, &setvals, batch);
        }
        self.sql("ANALYZE pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_depend, pg_catalog.pg_constraint, pg_catalog.pg_index, pg_catalog.pg_type, pg_catalog.pg_namespace, pg_catalog.pg_attrdef, pg_catalog.pg_sequence, pg_catalog.pg_description, public.tenants_clinic");
        start.elapsed()
    }

    fn grow_batch(&self, template: &str, tables: &[String], setvals: &str, clones: &[usize]) {
        let sessions: Vec<_> = clones
            .chunks(clones.len().div_ceil(2).max(1))
            .map(|part| {
                let mut script = String::from("SET client_min_messages = warning;\n");
                for i in part {
                    let s = format!("clinic_{i:05}");
                    script.push_str("BEGIN;\n");
                    script.push_str(&template.replace("mindcare.", &format!("{s}.")).replace("SCHEMA mindcare;", &format!("SCHEMA {s};")));
                    script.push('\n');
                    for t in tables {
                        script.push_str(&format!("INSERT INTO {s}.{t} OVERRIDING SYSTEM VALUE SELECT * FROM mindcare.{t};\n"));
                    }
                    // setval('name') resolves the name on the search path: the copy's schema first.
                    script.push_str(&format!("SET LOCAL search_path = {s};\n{setvals}\n"));
                    script.push_str(&format!(
                        "INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('{s}', 'Clinic {i}', 'daily');\nCOMMIT;\n"
                    ));
                }
                let mut c = self.cluster.psql_command(DB);
                c.stdin(Stdio::piped()).stdout(Stdio::null());
                let mut child = c.spawn().unwrap_or_else(|e| die(&e.to_string()));
                let mut stdin = child.stdin.take().unwrap();
                let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
                (child, writer)
            })
            .collect();
        for (mut child, writer) in sessions {
            writer.join().unwrap().unwrap_or_else(|e| die(&e.to_string()));
            if !child.wait().unwrap().success() {
                die("building the tenants failed");
            }
        }
    }

    /// The server's CPU time so far: the postmaster's, its finished children's, its live ones'.
    fn server_cpu(&self) -> Duration {
        let ticks = |fields: &[&str], from: usize, n: usize| -> u64 {
            fields[from..from + n]
                .iter()
                .filter_map(|f| f.parse::<u64>().ok())
                .sum()
        };
        let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let fields = |s: &str| -> Vec<String> {
            // After the command name, which may hold spaces: state is field 3.
            let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            rest.split_whitespace().map(str::to_string).collect()
        };
        let mut total = 0u64;
        if let Some(s) = stat(&self.postmaster.to_string()) {
            let f = fields(&s);
            let f: Vec<&str> = f.iter().map(String::as_str).collect();
            // utime stime cutime cstime are fields 14-17, i.e. 11-14 after the name.
            total += ticks(&f, 11, 4);
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Some(s) = stat(&name) else { continue };
            let f = fields(&s);
            if f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(self.postmaster) {
                let f: Vec<&str> = f.iter().map(String::as_str).collect();
                total += ticks(&f, 11, 2);
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(total * 1_000_000 / hz)
    }

    fn tool(&self, args: &[&str], store: &Path) -> Command {
        self.tool_of(self.bin, args, store)
    }

    fn tool_of(&self, bin: &str, args: &[&str], store: &Path) -> Command {
        // The tool never creates its storage directory (a missing one is a mistake to fix).
        std::fs::create_dir_all(store).unwrap_or_else(|e| die(&format!("{}: {e}", store.display())));
        let mut c = Command::new(bin);
        c.args(["-q", "--no-progress"])
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("BACKUP_STORAGE", store)
            .env("TMPDIR", self.work)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a command to its end (exit codes up to `ok_up_to` count as success).
    fn run(&mut self, mut c: Command, ok_up_to: i32) -> Cost {
        let before = self.server_cpu();
        let start = Instant::now();
        let out = c.output().unwrap_or_else(|e| die(&e.to_string()));
        let wall = start.elapsed();
        let server = self.server_cpu().saturating_sub(before);
        if out.status.code().is_none_or(|code| code > ok_up_to) {
            die(&format!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Cost {
            wall,
            server,
            rss_kb: 0,
            own: Duration::ZERO,
        }
    }

    /// Like `run`, with the peak RSS of the process (and its children).
    fn run_measured(&mut self, mut c: Command, name: &str) -> Cost {
        c.stderr(Stdio::null());
        let before = self.server_cpu();
        let r = measure(c, name);
        Cost {
            wall: r.wall,
            server: self.server_cpu().saturating_sub(before),
            rss_kb: r.own_rss_kb,
            own: r.cpu,
        }
    }

    fn single(&mut self, repeat: usize, out: &mut Vec<(&'static str, Cost)>) {
        let store = self.work.join("single");
        let names: [&'static str; 4] = [
            "one tenant: pg_dump -n S > /dev/null",
            "one tenant: backup --format sql",
            "one tenant: backup --format json",
            "one tenant: backup (auto)",
        ];
        let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); names.len()];
        for _ in 0..repeat {
            let mut c = Command::new(self.cluster.bin("pg_dump"));
            c.args(["-n", ONE, "--no-owner", "--no-privileges"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            self.libpq(&mut c);
            costs[0].push(self.run(c, 0));
            costs[1].push(self.run(self.tool(&["backup", "--tenant", ONE, "--format", "sql"], &store), 0));
            costs[2].push(self.run(self.tool(&["backup", "--tenant", ONE, "--format", "json"], &store), 0));
            costs[3].push(self.run(self.tool(&["backup", "--tenant", ONE], &store), 0));
        }
        let base = median(costs[0].clone());
        println!(
            "{:<52} {:>10} {:>8} {:>12}",
            "one tenant's backup", "wall", "ratio", "server CPU"
        );
        for (name, c) in names.iter().zip(costs) {
            let m = median(c);
            println!(
                "{:<52} {:>10} {:>7.2}x {:>12}",
                name,
                secs(m.wall),
                m.wall.as_secs_f64() / base.wall.as_secs_f64(),
                secs(m.server)
            );
            out.push((name, m));
        }
        let _ = std::fs::remove_dir_all(&store);
    }

    /// A whole-database pg_dump takes a lock on every table in one transaction: at the server's
    /// default `max_locks_per_transaction` a big fleet is more than its lock table holds. Tried
    /// once at the default; when it fails, its error is printed and the setting raised to 2048
    /// (`ALTER SYSTEM`, a restart) for the comparison only. tenant-backup needs no such setting:
    /// it holds one tenant's locks at a time.
    fn locks(&mut self) {
        let default = self.sql("SHOW max_locks_per_transaction");
        match self.try_whole_dump() {
            Ok(c) => println!(
                "whole-database pg_dump at the default max_locks_per_transaction ({default}): succeeded in {}",
                secs(c.wall)
            ),
            Err(why) => {
                println!("whole-database pg_dump at the default max_locks_per_transaction ({default}): FAILED");
                for line in why.lines().filter(|l| !l.trim().is_empty()).take(4) {
                    println!("  {line}");
                }
                println!("  raising max_locks_per_transaction to 2048 (ALTER SYSTEM, restart) for the comparison only; tenant-backup runs with the default");
                self.sql("ALTER SYSTEM SET max_locks_per_transaction = 2048");
                self.cluster.restart().unwrap_or_else(|e| die(&e.to_string()));
                self.postmaster = postmaster_pid(&self.cluster);
            }
        }
    }

    /// One whole-database `pg_dump | zstd -3` into a file: the floor for backing everyone up.
    fn whole_dump(&mut self) -> Cost {
        self.try_whole_dump()
            .unwrap_or_else(|why| die(&format!("the whole-database pg_dump failed: {why}")))
    }

    /// [`Bench::whole_dump`], or pg_dump's error.
    fn try_whole_dump(&mut self) -> Result<Cost, String> {
        let file = self.work.join("whole.sql.zst");
        let before = self.server_cpu();
        let start = Instant::now();
        let mut c = Command::new(self.cluster.bin("pg_dump"));
        c.args(["--no-owner", "--no-privileges"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.libpq(&mut c);
        let mut child = c.spawn().unwrap_or_else(|e| die(&e.to_string()));
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let dest = std::fs::File::create(&file).unwrap();
        zstd::stream::copy_encode(&mut stdout, dest, 3).unwrap_or_else(|e| die(&e.to_string()));
        let ok = child.wait().unwrap().success();
        let wall = start.elapsed();
        let _ = std::fs::remove_file(&file);
        let errors = errors.join().unwrap_or_default();
        if !ok {
            return Err(errors);
        }
        eprint!("{errors}");
        Ok(Cost {
            wall,
            server: self.server_cpu().saturating_sub(before),
            rss_kb: 0,
            own: Duration::ZERO,
        })
    }

    fn fleet(&mut self, repeat: usize, sql_all: bool, out: &mut Vec<(&'static str, Cost)>) {
        let mut names: Vec<&'static str> = vec![
            "fleet: pg_dump (whole database) | zstd",
            "fleet: backup --all (auto)",
            "fleet: run-scheduled, every tenant due",
        ];
        if sql_all {
            names.push("fleet: backup --all --format sql");
        }
        let before = self.before.clone();
        let first_before = names.len();
        if before.is_some() {
            names.push("fleet: backup --all (auto), BENCH_BEFORE");
            names.push("fleet: run-scheduled, every tenant due, BENCH_BEFORE");
        }
        let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); names.len()];
        for round in 0..repeat {
            if let Some(bin) = &before {
                let store = self.work.join(format!("before-all-{}-{round}", self.size));
                let c = self.tool_of(bin, &["backup", "--all"], &store);
                costs[first_before].push(self.run_measured(c, "backup --all (before)"));
                let _ = std::fs::remove_dir_all(&store);
                self.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
                let store = self.work.join(format!("before-tick-{}-{round}", self.size));
                let c = self.tool_of(bin, &["run-scheduled"], &store);
                costs[first_before + 1].push(self.run_measured(c, "run-scheduled (before)"));
                let _ = std::fs::remove_dir_all(&store);
                self.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
            }
            costs[0].push(self.whole_dump());
            let store = self.work.join(format!("all-{}-{round}", self.size));
            costs[1].push(self.run_measured(self.tool(&["backup", "--all"], &store), "backup --all"));
            let _ = std::fs::remove_dir_all(&store);
            self.sql("UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = NULL");
            let store = self.work.join(format!("tick-{}-{round}", self.size));
            costs[2].push(self.run_measured(self.tool(&["run-scheduled"], &store), "run-scheduled"));
            let due = self.sql(
                "SELECT count(*) FROM public.tenants_clinic WHERE last_backup_at IS NULL AND schema_name <> 'public'",
            );
            if due != "0" {
                die(&format!("{due} tenants were not backed up by the tick"));
            }
            // The last tick's objects stay for cleanup --orphans to list.
            let _ = std::fs::remove_dir_all(&self.bucket);
            self.bucket = store;
            if sql_all {
                let store = self.work.join(format!("sql-{}-{round}", self.size));
                costs[3].push(self.run_measured(
                    self.tool(&["backup", "--all", "--format", "sql"], &store),
                    "backup --all sql",
                ));
                let _ = std::fs::remove_dir_all(&store);
            }
        }
        let base = median(costs[0].clone());
        // Each round's ratio to the whole dump of the same round: the spread of the medians below.
        let spread: Vec<String> = costs
            .iter()
            .map(|c| {
                let range = |f: &dyn Fn(&Cost) -> Duration| {
                    let r: Vec<f64> = c
                        .iter()
                        .zip(&costs[0])
                        .map(|(x, b)| f(x).as_secs_f64() / f(b).as_secs_f64().max(1e-3))
                        .collect();
                    let (lo, hi) = r.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                    format!("{lo:.2}-{hi:.2}x")
                };
                format!("wall {}, server CPU {}", range(&|c| c.wall), range(&|c| c.server))
            })
            .collect();
        println!(
            "{:<52} {:>10} {:>8} {:>12} {:>8} {:>12} {:>10}",
            "every tenant", "wall", "ratio", "server CPU", "ratio", "tool CPU", "peak RSS"
        );
        for (name, c) in names.iter().zip(costs) {
            let m = median(c);
            println!(
                "{:<52} {:>10} {:>7.2}x {:>12} {:>7.2}x {:>12} {:>10}",
                name,
                secs(m.wall),
                m.wall.as_secs_f64() / base.wall.as_secs_f64(),
                secs(m.server),
                m.server.as_secs_f64() / base.server.as_secs_f64().max(1e-3),
                if m.own > Duration::ZERO {
                    secs(m.own)
                } else {
                    "-".into()
                },
                if m.rss_kb > 0 {
                    format!("{:.1} MB", m.rss_kb as f64 / 1024.0)
                } else {
                    "-".into()
                }
            );
            out.push((name, m));
        }
        println!("  each round's ratios to that round's whole dump:");
        for (name, spread) in names.iter().zip(&spread).skip(1) {
            println!("  {name:<50} {spread}");
        }
    }

    fn listings(&mut self, repeat: usize, out: &mut Vec<(&'static str, Cost)>) {
        let store = self.bucket.clone();
        let names: [&'static str; 5] = [
            "all tenants: psql -c 'select count(*) …'",
            "all tenants: psql, every history, UNION ALLs of 1,000",
            "all tenants: list",
            "all tenants: status",
            "all tenants: cleanup --dry-run --days 30 --orphans",
        ];
        // The honest floor for reading every tenant's history table: statements naming them all.
        let union = self.work.join("union.sql");
        let arms: Vec<String> = self
            .sql("SELECT schema_name FROM public.tenants_clinic WHERE schema_name <> 'public' ORDER BY 1")
            .lines()
            .map(|s| format!("SELECT id, created_at, backup_type FROM \"{s}\".backups_backuprecord"))
            .collect();
        // 1,000 arms a statement: a 10,000-arm UNION ALL took the server minutes and 7 GB to plan
        // (the planner's work grows faster than its arms), far from what reading the tables costs.
        let statements: String = arms
            .chunks(1000)
            .map(|arms| {
                format!(
                    "SELECT count(*), max(created_at) FROM (\n{}\n) x;\n",
                    arms.join("\nUNION ALL\n")
                )
            })
            .collect();
        std::fs::write(&union, statements).unwrap_or_else(|e| die(&e.to_string()));
        let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); names.len()];
        for _ in 0..repeat {
            let mut c = self.cluster.psql_command(DB);
            c.args(["-c", "select count(*) from public.tenants_clinic"])
                .stdout(Stdio::null());
            costs[0].push(self.run(c, 0));
            let mut c = self.cluster.psql_command(DB);
            c.arg("-f").arg(&union).stdout(Stdio::null());
            costs[1].push(self.run(c, 0));
            costs[2].push(self.run(self.tool(&["list"], &store), 0));
            costs[3].push(self.run(self.tool(&["status"], &store), 1));
            costs[4].push(self.run(
                self.tool(&["cleanup", "--dry-run", "--days", "30", "--orphans"], &store),
                1,
            ));
        }
        let base = median(costs[0].clone());
        let floor = median(costs[1].clone());
        println!(
            "{:<52} {:>10} {:>8} {:>12} {:>14} {:>12}",
            "over all tenants", "wall", "ratio", "server CPU", "wall / floor", "CPU / floor"
        );
        for (name, c) in names.iter().zip(costs) {
            let m = median(c);
            println!(
                "{:<52} {:>10} {:>7.2}x {:>12} {:>13.2}x {:>11.2}x",
                name,
                secs(m.wall),
                m.wall.as_secs_f64() / base.wall.as_secs_f64(),
                secs(m.server),
                m.wall.as_secs_f64() / floor.wall.as_secs_f64().max(1e-6),
                m.server.as_secs_f64() / floor.server.as_secs_f64().max(1e-3),
            );
            out.push((name, m));
        }
        let objects = walk_count(&store);
        println!("  (the bucket: a local directory holding {objects} objects)");
    }
}

fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += walk_count(&p);
        } else {
            n += 1;
        }
    }
    n
}
