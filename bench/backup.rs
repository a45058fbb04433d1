//! `cargo bench --bench backup`: builds a tenant schema of realistic rows (default ~1 GB, set
//! BENCH_SIZE_MB), then measures side by side, at half the size and at full size:
//!   pg_dump -n S > /dev/null,   pg_dump -n S | gzip > file,   tenant-backup backup (zstd, local dir)
//! and prints wall time, ratios against raw pg_dump, and peak RSS. Runs are interleaved
//! (BENCH_ROUNDS rounds, default 2) and the best of each is kept, so a noisy moment hurts all alike.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenant_backup::devcluster::DevCluster;

const SCHEMA: &str = "bench";

fn main() {
    let size_mb: u64 = env_or("BENCH_SIZE_MB", 1024);
    let rounds: usize = env_or("BENCH_ROUNDS", 2);
    let cluster = DevCluster::start().unwrap_or_else(|e| die(&e.to_string()));
    cluster
        .create_database("bench", None)
        .unwrap_or_else(|e| die(&e.to_string()));
    let sql = |q: &str| cluster.sql("bench", q).unwrap_or_else(|e| die(&e.to_string()));
    sql(SETUP);
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tenant-backup");
    let pg_dump = cluster.bin("pg_dump");
    let url = cluster.url("bench");
    let version = sql("SHOW server_version");

    println!(
        "tenant-backup backup bench: PostgreSQL {version}, {} cores, best of {rounds}",
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
        let store = work.path().join("store");
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
                    let _ = std::fs::remove_dir_all(&store);
                    let mut c = Command::new(bin);
                    c.args(["backup", "--tenant", SCHEMA, "--no-progress", "-q"])
                        .env("DATABASE_URL", &url)
                        .env("BACKUP_STORAGE", &store)
                        .env("PG_DUMP", &pg_dump)
                        .stdout(Stdio::null());
                    c
                }),
            ),
        ];
        let mut best: Vec<Option<Run>> = vec![None; methods.len()];
        for _ in 0..rounds {
            for (i, (name, make)) in methods.iter().enumerate() {
                let run = measure(make(), name);
                if best[i].as_ref().is_none_or(|b| run.wall < b.wall) {
                    best[i] = Some(run);
                }
            }
        }
        let base = best[0].as_ref().unwrap().wall.as_secs_f64();
        for (i, (name, _)) in methods.iter().enumerate() {
            let r = best[i].as_ref().unwrap();
            println!(
                "{:<9} {:<34} {:>8.2}s {:>6.2}x {:>9.1} MB {:>10.1} MB",
                format!("{actual_mb:.0} MB"),
                name,
                r.wall.as_secs_f64(),
                r.wall.as_secs_f64() / base,
                r.own_rss_kb as f64 / 1024.0,
                r.tree_rss_kb as f64 / 1024.0
            );
        }
        if let Ok(meta) = std::fs::metadata(&gz) {
            let stored: u64 = walk_size(&store);
            println!(
                "{:<9} stored bytes: gzip {:.1} MB, tenant-backup zstd {:.1} MB",
                "",
                meta.len() as f64 / 1048576.0,
                stored as f64 / 1048576.0
            );
        }
        own_rss.push(best[2].as_ref().unwrap().own_rss_kb);
    }
    println!(
        "peak RSS of tenant-backup: {:.1} MB at half size, {:.1} MB at full size ({:.2}x when the schema doubles)",
        own_rss[0] as f64 / 1024.0,
        own_rss[1] as f64 / 1024.0,
        own_rss[1] as f64 / own_rss[0].max(1) as f64
    );
    cluster.stop();
}

type MakeCommand<'a> = Box<dyn Fn() -> Command + 'a>;

#[derive(Clone)]
struct Run {
    wall: Duration,
    /// The measured process's own peak (VmHWM, sampled).
    own_rss_kb: u64,
    /// Peak over the process and every child it waited for (wait4).
    tree_rss_kb: u64,
}

fn measure(mut cmd: Command, name: &str) -> Run {
    let start = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| die(&format!("{name}: {e}")));
    let pid = child.id() as i32;
    let status_path = format!("/proc/{pid}/status");
    let mut own = 0u64;
    let mut status = 0i32;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        if let Some(hwm) = read_hwm(&status_path) {
            own = own.max(hwm);
        }
        // SAFETY: waiting for our own child with valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = start.elapsed();
    std::mem::forget(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        die(&format!("{name} failed (status {status})"));
    }
    Run {
        wall,
        own_rss_kb: own,
        tree_rss_kb: usage.ru_maxrss as u64,
    }
}

fn read_hwm(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn grow_to(sql: &dyn Fn(&str) -> String, target_mb: u64) {
    loop {
        let size: u64 = sql(&format!(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{SCHEMA}' AND c.relkind = 'r'"
        ))
        .parse()
        .unwrap_or(0);
        if size >= target_mb * 1048576 {
            return;
        }
        sql(GROW);
    }
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

/// A clinic's tables, as Django would make them, plus the tenant row.
const SETUP: &str = r#"
CREATE TABLE public.tenants_clinic (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, schema_name varchar(63) NOT NULL UNIQUE,
  name varchar(100) NOT NULL, backup_schedule varchar(10) NOT NULL, last_backup_at timestamptz, next_scheduled_backup timestamptz);
INSERT INTO public.tenants_clinic (schema_name, name, backup_schedule) VALUES ('bench', 'Bench Clinic', 'daily');
CREATE SCHEMA bench;
CREATE TABLE bench.backups_backuprecord (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, file_name varchar(255) NOT NULL,
  file_path text NOT NULL, file_size bigint NOT NULL, backup_type varchar(10) NOT NULL, created_at timestamptz NOT NULL, created_by_id bigint);
CREATE TABLE bench.appointments_patient (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, first_name varchar(100) NOT NULL,
  last_name varchar(100) NOT NULL, email varchar(254) NOT NULL, phone varchar(30) NOT NULL, birth_date date, notes text NOT NULL,
  created_at timestamptz NOT NULL, extra jsonb);
CREATE TABLE bench.appointments_appointment (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, patient_id bigint NOT NULL
  REFERENCES bench.appointments_patient(id) DEFERRABLE INITIALLY DEFERRED, scheduled_at timestamptz NOT NULL, duration_minutes smallint NOT NULL,
  status varchar(10) NOT NULL, fee numeric(8,2) NOT NULL, notes text NOT NULL, extra jsonb);
CREATE INDEX ON bench.appointments_appointment (patient_id);
"#;

/// ~40 MB more of patients and appointments with varied, realistic text.
const GROW: &str = r#"
WITH words AS (SELECT ARRAY['dolor','consulta','seguimiento','ansiedad','sesión','paciente','tratamiento','evaluación','mejoría',
  'revisión','terapia','cita','control','síntomas','medicación','respuesta','familia','trabajo','sueño','estrés']::text[] w),
p AS (
  INSERT INTO bench.appointments_patient (first_name, last_name, email, phone, birth_date, notes, created_at, extra)
  SELECT 'Nombre' || g, 'Apellido ' || md5(g::text), 'p' || g || '@clinic.example', '+34 6' || lpad((g * 7919 % 100000000)::text, 8, '0'),
         date '1950-01-01' + (g * 37 % 20000), (SELECT string_agg(w[1 + (g * k * 13 % 20)], ' ') FROM words, generate_series(1, 30) k),
         now() - (g % 1000) * interval '1 hour', jsonb_build_object('source', 'web', 'score', g % 97, 'tags', jsonb_build_array('a', g % 5))
  FROM generate_series(1, 20000) g RETURNING id)
INSERT INTO bench.appointments_appointment (patient_id, scheduled_at, duration_minutes, status, fee, notes, extra)
SELECT p.id, now() + (p.id % 5000 + k) * interval '37 minutes', 50, (ARRAY['booked','done','cancelled'])[1 + (p.id + k) % 3],
       ((p.id * k) % 20000) / 100.0, (SELECT string_agg(w[1 + ((p.id + k) * j * 7 % 20)], ' ') FROM words, generate_series(1, 60) j),
       CASE WHEN k % 3 = 0 THEN NULL ELSE jsonb_build_object('room', k, 'note', md5(p.id::text || k)) END
FROM p, generate_series(1, 5) k;
"#;
