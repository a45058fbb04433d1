//! Finding and running PostgreSQL's client programs (pg_dump, and psql / pg_restore beside it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pg::sql::quote_ident;
use crate::pg::target::DbTarget;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgDump {
    pub path: PathBuf,
    pub major: u32,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(
        "no pg_dump found{}: install the PostgreSQL client (Debian/Ubuntu: apt-get install postgresql-client-{server_major}; macOS: brew install postgresql@{server_major}) or point --pg-dump / PG_DUMP at one",
        if .tried.is_empty() { String::new() } else { format!(" (tried {})", .tried.join(", ")) }
    )]
    NotFound { server_major: u32, tried: Vec<String> },
    #[error(
        "the server runs PostgreSQL {server_major} but the newest pg_dump found is older ({}); pg_dump refuses to dump a newer server. Install postgresql-client-{server_major} or set --pg-dump / PG_DUMP",
        .found.iter().map(|d| format!("{} = {}", d.path.display(), d.version)).collect::<Vec<_>>().join(", ")
    )]
    TooOld { server_major: u32, found: Vec<PgDump> },
}

impl PgDump {
    /// Runs `pg_dump --version` and reads `pg_dump (PostgreSQL) 15.18 (Debian …)`.
    pub fn probe(path: &Path) -> Option<PgDump> {
        let mut cmd = Command::new(path);
        base_env(&mut cmd);
        let out = cmd.arg("--version").stdin(Stdio::null()).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
        let major = version.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
        Some(PgDump {
            path: path.to_path_buf(),
            major,
            version: version.to_string(),
        })
    }

    /// The lowest major version that is at least the server's, among the explicit one (if given,
    /// the only candidate) or the usual install places, then PATH.
    /// Each distinct program runs `--version` once, and the search stops at the first one of the
    /// server's own major: nothing can beat it.
    pub fn find(explicit: Option<&Path>, server_major: u32) -> Result<PgDump, FindError> {
        let paths = match explicit {
            Some(p) => vec![p.to_path_buf()],
            None => candidate_paths(Path::new("/"), std::env::var_os("PATH")),
        };
        PgDump::choose(probe_until(paths, Some(server_major)), server_major)
    }

    fn choose((tried, found): (Vec<String>, Vec<PgDump>), server_major: u32) -> Result<PgDump, FindError> {
        if found.is_empty() {
            return Err(FindError::NotFound { server_major, tried });
        }
        match found.iter().find(|d| d.major >= server_major) {
            Some(d) => Ok(d.clone()),
            None => Err(FindError::TooOld { server_major, found }),
        }
    }

    /// Every pg_dump that answers `--version`, lowest major first, and every place looked at.
    pub fn candidates(explicit: Option<&Path>) -> (Vec<String>, Vec<PgDump>) {
        match explicit {
            Some(p) => probe_all(vec![p.to_path_buf()]),
            None => probe_all(candidate_paths(Path::new("/"), std::env::var_os("PATH"))),
        }
    }

    /// A sibling program (`psql`, `pg_restore`) from the same installation, falling back to PATH.
    pub fn sibling(&self, name: &str) -> PathBuf {
        let beside = self.path.with_file_name(name);
        if beside.is_file() {
            beside
        } else {
            PathBuf::from(name)
        }
    }
}

/// Probes `paths` in order: what was tried, and what answered, lowest major first (the earlier
/// place wins a tie).
fn probe_all(paths: Vec<PathBuf>) -> (Vec<String>, Vec<PgDump>) {
    probe_until(paths, None)
}

/// [`probe_all`], stopping early at a pg_dump of major `exact`.
fn probe_until(paths: Vec<PathBuf>, exact: Option<u32>) -> (Vec<String>, Vec<PgDump>) {
    let tried = paths.iter().map(|p| p.display().to_string()).collect();
    let mut found: Vec<PgDump> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for p in &paths {
        // The same program reached twice (a symlink on PATH) is run once; a wrapper that reports
        // a version already found (Debian's pg_wrapper in /usr/bin) is the same pg_dump to us.
        let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        if let Some(d) = PgDump::probe(p).filter(|d| !found.iter().any(|f| f.version == d.version)) {
            let done = Some(d.major) == exact;
            found.push(d);
            if done {
                break;
            }
        }
    }
    found.sort_by_key(|d| d.major);
    (tried, found)
}

/// Where pg_dump is looked for, in order: `/usr/lib/postgresql/*/bin`, `/usr/pgsql-*/bin`, Homebrew's
/// `postgresql@*` (both prefixes), then each PATH entry. `root` is `/` except in tests.
fn candidate_paths(root: &Path, path_var: Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, prefix) in [
        ("usr/lib/postgresql", ""),
        ("usr", "pgsql-"),
        ("opt/homebrew/opt", "postgresql@"),
        ("usr/local/opt", "postgresql@"),
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        dirs.sort();
        out.extend(dirs.into_iter().map(|d| d.join("bin/pg_dump")).filter(|p| p.is_file()));
    }
    if let Some(path) = path_var {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("pg_dump");
            if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// What pg_dump writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgDumpFormat {
    Plain,
    Custom,
}

/// The pg_dump command for one schema. The connection travels in the environment, so no password
/// is ever on a command line.
pub fn dump_command(pg_dump: &PgDump, target: &DbTarget, schema: &str, format: PgDumpFormat, inserts: bool) -> Command {
    let mut cmd = Command::new(&pg_dump.path);
    // A pg_dump pattern: the double quotes make the name literal (no wildcards, case kept).
    cmd.arg(format!("--schema={}", quote_ident(schema)))
        .args(["--strict-names", "--no-owner", "--no-privileges"]);
    cmd.arg(match format {
        PgDumpFormat::Plain => "--format=plain",
        PgDumpFormat::Custom => "--format=custom",
    });
    if inserts {
        cmd.arg("--inserts");
    }
    apply_env(&mut cmd, target);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// A minimal environment for pg_dump, psql and pg_restore: nothing of ours (no `DATABASE_URL`,
/// `AWS_*`, `SUPABASE_*`, `BACKUP_*`, no inherited `PG*` that could redirect the program), only
/// what a program needs to run (`PATH`, `HOME`, locale, time zone) and the libpq settings of
/// `target`.
pub fn apply_env(cmd: &mut Command, target: &DbTarget) {
    base_env(cmd);
    cmd.envs(target.libpq_env());
}

/// [`apply_env`] without any connection settings, for a program that does not connect
/// (`pg_restore -f -`).
pub fn base_env(cmd: &mut Command) {
    cmd.env_clear();
    for (name, value) in std::env::vars_os() {
        let keep = name
            .to_str()
            .is_some_and(|n| matches!(n, "PATH" | "HOME" | "LANG" | "LANGUAGE" | "TZ") || n.starts_with("LC_"));
        if keep {
            cmd.env(name, value);
        }
    }
}

/// psql's `\restrict` and pg_restore's `--restrict-key` came with 13.22, 14.19, 15.14, 16.10, 17.6
/// and 18.
pub fn knows_restrict(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match major {
        0..=12 => false,
        13 => minor >= 22,
        14 => minor >= 19,
        15 => minor >= 14,
        16 => minor >= 10,
        17 => minor >= 6,
        _ => true,
    }
}

/// The pg_dump (and so the psql and pg_restore beside it) for the server `client` is connected to,
/// and the server's version. None found is a configuration error.
pub async fn for_server(client: &tokio_postgres::Client, explicit: Option<&Path>) -> anyhow::Result<(PgDump, String)> {
    let (version, major) = server_version(client).await?;
    let pg_dump = PgDump::find(explicit, major).map_err(|e| crate::error::UsageError::new(e.to_string()))?;
    tracing::debug!(
        "using {} ({}) for PostgreSQL {version}",
        pg_dump.path.display(),
        pg_dump.version
    );
    Ok((pg_dump, version))
}

/// The server's version (`15.18`) and major (`15`).
pub async fn server_version(client: &tokio_postgres::Client) -> anyhow::Result<(String, u32)> {
    use anyhow::Context as _;
    let rows = client
        .simple_query("SELECT current_setting('server_version'), current_setting('server_version_num')")
        .await
        .context("reading the server version")?;
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .context("the server did not report its version")?;
    let version = row
        .get(0)
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let num: u32 = row.get(1).unwrap_or("0").parse().unwrap_or(0);
    Ok((version, num / 10000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake(dir: &Path, name: &str, version: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho 'pg_dump (PostgreSQL) {version} (Fake)'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn explicit_pg_dump_is_the_only_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let old = fake(dir.path(), "pg_dump14", "14.9");
        let new = fake(dir.path(), "pg_dump17", "17.2");
        assert_eq!(PgDump::find(Some(&new), 15).unwrap().major, 17);
        assert!(matches!(PgDump::find(Some(&old), 15), Err(FindError::TooOld { .. })));
        let err = PgDump::find(Some(&dir.path().join("missing")), 15).unwrap_err();
        assert!(err.to_string().contains("postgresql-client-15"), "{err}");
    }

    #[test]
    fn the_lowest_major_at_least_the_servers_wins_across_install_places_and_path() {
        let root = tempfile::tempdir().unwrap();
        let mkdir = |rel: &str| {
            let d = root.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        fake(&mkdir("usr/lib/postgresql/13/bin"), "pg_dump", "13.16");
        fake(&mkdir("usr/pgsql-16/bin"), "pg_dump", "16.4");
        fake(&mkdir("usr/local/opt/postgresql@18/bin"), "pg_dump", "18.1");
        mkdir("usr/lib/postgresql/12/bin"); // a client directory without pg_dump
        let (a, b, broken) = (mkdir("path/a"), mkdir("path/b"), mkdir("path/broken"));
        fake(&a, "pg_dump", "14.13");
        fake(&b, "pg_dump", "17.0");
        std::fs::write(
            broken.join("pg_dump"),
            "#!/bin/sh
exit 1
",
        )
        .unwrap();
        std::fs::set_permissions(broken.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&broken, &b, &a]).unwrap();
        let search = || probe_all(candidate_paths(root.path(), Some(path.clone())));

        let (tried, found) = search();
        let tried: Vec<String> = tried
            .iter()
            .map(|t| t.trim_start_matches(&*root.path().to_string_lossy()).to_string())
            .collect();
        assert_eq!(
            tried,
            [
                "/usr/lib/postgresql/13/bin/pg_dump",
                "/usr/pgsql-16/bin/pg_dump",
                "/usr/local/opt/postgresql@18/bin/pg_dump",
                "/path/broken/pg_dump",
                "/path/b/pg_dump",
                "/path/a/pg_dump",
            ]
        );
        let majors: Vec<u32> = found.iter().map(|d| d.major).collect();
        assert_eq!(majors, [13, 14, 16, 17, 18], "the broken one is left out");

        let chosen = |server| PgDump::choose(search(), server).map(|d| d.version);
        assert_eq!(chosen(13).unwrap(), "13.16");
        assert_eq!(chosen(14).unwrap(), "14.13", "older PATH entry beats a newer install");
        assert_eq!(chosen(15).unwrap(), "16.4", "the lowest newer one, not the newest");
        assert_eq!(chosen(17).unwrap(), "17.0");
        assert_eq!(chosen(18).unwrap(), "18.1");
        let err = chosen(19).unwrap_err().to_string();
        assert!(
            err.contains("PostgreSQL 19")
                && err.contains("18.1")
                && err.contains("13.16")
                && err.contains("postgresql-client-19"),
            "{err}"
        );
        let none = PgDump::choose(probe_all(candidate_paths(&root.path().join("nothing"), None)), 15);
        assert!(matches!(none, Err(FindError::NotFound { .. })));
    }

    #[test]
    fn the_search_runs_each_program_once_and_stops_at_the_servers_major() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ran");
        let mut paths = Vec::new();
        for v in ["15.4", "16.2"] {
            let dir = root.path().join(format!("usr/lib/postgresql/{}/bin", &v[..2]));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("pg_dump");
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho {v} >> '{}'\necho 'pg_dump (PostgreSQL) {v}'\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            paths.push(p);
        }
        // The same program twice (as a symlink would be): run once.
        let (_, found) = probe_until(vec![paths[0].clone(), paths[0].clone(), paths[1].clone()], None);
        assert_eq!(found.len(), 2);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "15.4\n16.2\n");
        std::fs::remove_file(&log).unwrap();
        let chosen = PgDump::choose(probe_until(paths.clone(), Some(15)), 15).unwrap();
        assert_eq!(chosen.version, "15.4");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "15.4\n", "16 is never run");
    }

    #[test]
    fn restrict_arrived_in_these_minor_releases() {
        for (v, yes) in [
            ("15.18", true),
            ("15.13", false),
            ("17.6", true),
            ("16.9", false),
            ("18beta1", true),
            ("12.22", false),
        ] {
            assert_eq!(knows_restrict(v), yes, "{v}");
        }
    }

    #[test]
    fn dump_command_has_no_password() {
        let target = DbTarget::parse("postgres://u:s3cret@h:5432/d", "x").unwrap();
        let pg = PgDump {
            path: "pg_dump".into(),
            major: 15,
            version: "15.1".into(),
        };
        let cmd = dump_command(&pg, &target, "bien\"estar", PgDumpFormat::Plain, false);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.contains(&"--schema=\"bien\"\"estar\"".to_string()), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("s3cret")));
    }
}
