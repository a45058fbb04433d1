//! A throwaway PostgreSQL cluster on a free port and a private socket directory, for the tests, the
//! quickstart and the bench. As root it runs as the `postgres` OS user (PostgreSQL refuses root).
//! A small watcher shell stops the server and removes its files when the owning process goes away,
//! even if that process is killed.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DevClusterError {
    #[error(
        "PostgreSQL server programs (initdb, postgres) were not found in /usr/lib/postgresql/*/bin or on PATH. \
         Install them: `sudo apt-get install postgresql` (Debian/Ubuntu), `brew install postgresql@16` (macOS), \
         or set PG_BIN_DIR to the directory holding initdb"
    )]
    NotInstalled,
    #[error("running as root, but there is no `postgres` OS user to run the server as: create one (useradd postgres) or install the postgresql package")]
    NoPostgresUser,
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
}

fn failed(what: impl Into<String>, detail: impl ToString) -> DevClusterError {
    DevClusterError::Failed {
        what: what.into(),
        detail: detail.to_string(),
    }
}

pub struct DevCluster {
    pub port: u16,
    pub password: String,
    pub bin_dir: PathBuf,
    base: PathBuf,
    watcher: Option<Child>,
}

/// `(uid, gid)` to run the server as, when we are root.
fn server_user() -> Result<Option<(u32, u32)>, DevClusterError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(DevClusterError::NoPostgresUser);
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// The directory holding `initdb`: `PG_BIN_DIR`, the newest `/usr/lib/postgresql/*/bin`, or PATH.
pub fn find_bin_dir() -> Result<PathBuf, DevClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(failed(
            format!("PG_BIN_DIR is {}", dir.display()),
            "it holds no initdb: point it at PostgreSQL's bin directory (e.g. /usr/lib/postgresql/16/bin) or unset it",
        ));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("postgres").is_file()))
        .ok_or(DevClusterError::NotInstalled)
}

fn free_port() -> Result<u16, DevClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| failed("finding a free port", e))?;
    Ok(l.local_addr().map_err(|e| failed("finding a free port", e))?.port())
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> Result<(), DevClusterError> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| failed(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

impl DevCluster {
    /// initdb + postgres, waiting until it accepts connections (password auth over TCP on 127.0.0.1).
    pub fn start() -> Result<DevCluster, DevClusterError> {
        DevCluster::start_with(&[])
    }

    /// [`DevCluster::start`] with more server settings (`-c name=value`), e.g. a bench's
    /// `max_locks_per_transaction` for a pg_dump of 100,000 tables, or `autovacuum=off`.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<DevCluster, DevClusterError> {
        let bin_dir = find_bin_dir()?;
        let user = server_user()?;
        let base = tempfile::Builder::new()
            .prefix("tenant-backup-pg-")
            .tempdir()
            .map_err(|e| failed("creating a temporary directory", e))?
            .keep();
        chown(&base, user)?;
        let password = format!("pw-{:x}-S3cr3t", std::process::id() as u64 * 2654435761 % 0xffff_ffff);
        let pwfile = base.join("pwfile");
        std::fs::File::create(&pwfile)
            .and_then(|mut f| writeln!(f, "{password}"))
            .map_err(|e| failed("writing the password file", e))?;
        chown(&pwfile, user)?;
        let data = base.join("data");

        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(&base)
            .stdin(Stdio::null());
        as_user(&mut initdb, user);
        let out = initdb.output().map_err(|e| failed("running initdb", e))?;
        if !out.status.success() {
            return Err(failed("initdb failed", String::from_utf8_lossy(&out.stderr)));
        }
        let _ = std::fs::remove_file(&pwfile);

        let port = free_port()?;
        let log = base.join("postgres.log");
        // The server runs again when it stops with a `restart` file beside it (DevCluster::restart).
        let script = format!(
            r#"while :; do
{postgres} -D {data} -p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off \
-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB{extra} >>{log} 2>&1 &
pg=$!
while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 0.3; done
kill -0 $pg 2>/dev/null || wait $pg
if [ -d /proc/{parent} ] && [ -f {base}/restart ]; then rm -f {base}/restart; continue; fi
break
done
kill -INT $pg 2>/dev/null; wait $pg; rm -rf {base}"#,
            postgres = sh_quote(&bin_dir.join("postgres")),
            data = sh_quote(&data),
            base = sh_quote(&base),
            log = sh_quote(&log),
            parent = std::process::id(),
            extra = settings
                .iter()
                .map(|(k, v)| format!(" -c {}", sh_quote(Path::new(&format!("{k}={v}")))))
                .collect::<String>(),
        );
        let mut watcher = Command::new("sh");
        watcher
            .arg("-c")
            .arg(script)
            .current_dir(&base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut watcher, user);
        // Its own process group, so Ctrl-C in a terminal reaches us, and we stop it in order.
        watcher.process_group(0);
        let watcher = watcher.spawn().map_err(|e| failed("starting postgres", e))?;
        let mut cluster = DevCluster {
            port,
            password,
            bin_dir,
            base,
            watcher: Some(watcher),
        };
        cluster.wait_ready(&log)?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<(), DevClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin_dir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            let exited = self
                .watcher
                .as_mut()
                .and_then(|w| w.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                return Err(failed("postgres did not start", text));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A psql command connected to `db`, password in the environment.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .env("PGPASSWORD", &self.password)
        .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// Runs SQL and returns psql's unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, DevClusterError> {
        let out = self
            .psql_command(db)
            .args(["-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("running psql", e))?;
        if !out.status.success() {
            return Err(failed(format!("psql -c {sql:?}"), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Runs a SQL file with psql (needed for dumps holding `\restrict`).
    pub fn load_file(&self, db: &str, file: &Path) -> Result<(), DevClusterError> {
        let out = self
            .psql_command(db)
            .arg("-f")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("running psql", e))?;
        if !out.status.success() {
            return Err(failed(
                format!("loading {}", file.display()),
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(())
    }

    pub fn create_database(&self, name: &str, template: Option<&str>) -> Result<(), DevClusterError> {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {} TEMPLATE {}", q(name), q(t)),
            None => format!("CREATE DATABASE {}", q(name)),
        };
        // Two copies of one template at the same moment can collide; a retry settles it.
        let mut last = None;
        for _ in 0..20 {
            match self.sql("postgres", &sql) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Stops the server (fast shutdown) and starts it again on the same data, with what
    /// `ALTER SYSTEM` set since (settings given to [`DevCluster::start_with`] still win), e.g. a
    /// bench that shows a failure at a default setting, then raises it.
    pub fn restart(&mut self) -> Result<(), DevClusterError> {
        let pid_file = self.base.join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .ok_or_else(|| failed("restarting postgres", "no postmaster.pid"))?;
        let flag = self.base.join("restart");
        std::fs::write(&flag, b"").map_err(|e| failed("restarting postgres", e))?;
        chown(&flag, server_user()?)?;
        // SAFETY: sending a signal to a pid we read from the server's own pid file.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The old server is gone when its pid no longer answers; then the new one gets ready.
        // SAFETY: signal 0 only asks whether the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            if Instant::now() > deadline {
                return Err(failed("restarting postgres", "the server did not stop"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ready(&self.base.join("postgres.log"))
    }

    /// Stops the server (fast shutdown) and removes its files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut watcher) = self.watcher.take() {
            if let Ok(pid) = std::fs::read_to_string(self.base.join("data/postmaster.pid")) {
                if let Some(pid) = pid.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: sending a signal to a pid we read from the server's own pid file.
                    unsafe { libc::kill(pid, libc::SIGINT) };
                }
            }
            let _ = watcher.wait();
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_the_data_and_takes_what_alter_system_set() {
        let mut cluster = DevCluster::start_with(&[("autovacuum", "off")]).unwrap();
        cluster.sql("postgres", "CREATE TABLE kept (x int)").unwrap();
        assert_eq!(cluster.sql("postgres", "SHOW max_locks_per_transaction").unwrap(), "64");
        cluster
            .sql("postgres", "ALTER SYSTEM SET max_locks_per_transaction = 128")
            .unwrap();
        cluster.restart().unwrap();
        assert_eq!(
            cluster.sql("postgres", "SHOW max_locks_per_transaction").unwrap(),
            "128"
        );
        assert_eq!(cluster.sql("postgres", "SHOW autovacuum").unwrap(), "off");
        assert_eq!(cluster.sql("postgres", "SELECT count(*) FROM kept").unwrap(), "0");
        cluster.stop();
    }
}
