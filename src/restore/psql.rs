//! Runs a restore through psql (custom archives through pg_restore first): the dump is fed to a
//! restricted psql between the tool's own prologue and epilogue, each statement checked by
//! [`guard`](super::guard) before psql gets it; the epilogue's COMMIT only after all of it passed.

use super::access::read_plain;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use tempfile::NamedTempFile;

use super::child::Owned;
use super::guard::{self, CheckError, Checked, Scope};
use super::script::Plan;
use super::source::Source;
use crate::backup::compress::Compression;
use crate::backup::format::DumpFormat;
use crate::pg::target::DbTarget;
use crate::pg::tools::{apply_env, base_env};
use crate::progress::{Counting, Shown};

/// Row counts printed by a `Target::Scratch` run.
pub type Counts = std::collections::BTreeMap<String, u64>;

/// Everything one psql run needs.
pub struct PsqlJob {
    pub psql: PathBuf,
    pub pg_restore: PathBuf,
    /// psql and pg_restore know `\restrict` (15.14, 16.10, 17.6 and later).
    pub restrict: bool,
    pub target: DbTarget,
    /// psql's application_name, so that its session can be found (who blocks it).
    pub application_name: String,
    pub dump: PathBuf,
    pub source: Source,
    pub plan: Plan,
    pub scope: Scope,
    /// Where the check and the restore show how far they are.
    pub progress: Shown,
    /// Hold the dump's last part (indexes, keys, what follows them) back from psql, for the
    /// caller to build in parallel once the rows are committed ([`crate::restore::post`]).
    pub defer_post_data: bool,
}

/// How psql ended. Whether anything committed is for the caller to find out when psql failed.
pub struct PsqlRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// Lines the tool sent before the dump (psql's line numbers minus these are the dump's).
    pub prologue_lines: u64,
    /// The whole epilogue (with its COMMIT) was sent.
    pub epilogue_sent: bool,
    pub checked: Checked,
}

impl PsqlRun {
    /// The transaction id the prologue printed.
    pub fn xid(&self, mark: &str) -> Option<i64> {
        let prefix = format!("{mark}|xid|");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|x| x.trim().parse().ok())
    }

    pub fn counts(&self, mark: &str) -> Counts {
        let prefix = format!("{mark}|count|");
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|r| {
                let (t, n) = r.rsplit_once('|')?;
                Some((t.to_string(), n.parse().ok()?))
            })
            .collect()
    }
}

/// The dump as SQL text: a decompressed plain dump, or what pg_restore makes of an archive.
struct Sql {
    reader: Box<dyn Read + Send>,
    pg_restore: Option<(Owned, std::thread::JoinHandle<String>)>,
}

impl Sql {
    /// pg_restore's exit, once its output has been read to the end.
    fn finish(self, key: &str) -> Result<()> {
        let Some((mut child, stderr)) = self.pg_restore else {
            return Ok(());
        };
        drop(self.reader);
        let status = child.wait()?;
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            let first = stderr.lines().next().unwrap_or("").trim();
            anyhow::bail!("pg_restore could not read {key}: {first}; nothing was restored");
        }
        Ok(())
    }
}

struct Dump<'a> {
    job: &'a PsqlJob,
    /// A compressed custom archive, unpacked once for both reads.
    unpacked: Option<NamedTempFile>,
    key: Option<String>,
}

impl Dump<'_> {
    /// The dump's SQL, shown as `what` (the stored object's bytes read, of its size).
    fn open(&mut self, what: &str) -> Result<Sql> {
        let job = self.job;
        let source = &job.source;
        let stored = |what: &str| -> io::Result<_> {
            let file = std::fs::File::open(&job.dump)?;
            let size = file.metadata()?.len();
            Ok(Counting::new(file, job.progress.start(what, Some(size))))
        };
        match source.format {
            DumpFormat::Plain => Ok(Sql {
                reader: Box::new(ReadAhead::start(read_plain(
                    stored(what)?,
                    source.compression,
                    source.decrypt.as_ref(),
                )?)),
                pg_restore: None,
            }),
            DumpFormat::Json => anyhow::bail!("json backups are restored through the driver, not psql"),
            DumpFormat::Custom => {
                // pg_restore needs a file: a compressed or encrypted archive is unpacked into a
                // private (0600) temporary file, removed on every exit path.
                let packed = source.compression != Compression::None || source.decrypt.is_some();
                if packed && self.unpacked.is_none() {
                    let mut tmp = tempfile::Builder::new().prefix("tenant-backup-archive-").tempfile()?;
                    io::copy(
                        &mut read_plain(stored("unpacked")?, source.compression, source.decrypt.as_ref())?,
                        tmp.as_file_mut(),
                    )?;
                    self.unpacked = Some(tmp);
                }
                let archive: &Path = self.unpacked.as_ref().map(|t| t.path()).unwrap_or(&job.dump);
                let mut cmd = Command::new(&job.pg_restore);
                cmd.args(["--no-owner", "--no-privileges"]);
                if let Some(k) = &self.key {
                    // The same key both times, so that both reads see the very same text.
                    cmd.arg(format!("--restrict-key={k}"));
                }
                cmd.args(["-f", "-"]).arg(archive);
                base_env(&mut cmd);
                cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
                let mut child =
                    Owned::spawn(&mut cmd).with_context(|| format!("starting {}", job.pg_restore.display()))?;
                let out = child.stdout.take().expect("piped");
                let err = child.stderr.take().expect("piped");
                let stderr = std::thread::spawn(move || read_all(err));
                // The archive's SQL has no known length: its bytes are shown as they come.
                let out = Counting::new(out, job.progress.start(what, None));
                Ok(Sql {
                    reader: Box::new(ReadAhead::start(Box::new(out))),
                    pg_restore: Some((child, stderr)),
                })
            }
        }
    }
}

/// Reads on a thread of its own, a few chunks ahead, so that decompressing (or pg_restore) runs
/// beside the check and the feed instead of before them.
struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ReadAhead {
    fn start(mut inner: Box<dyn Read + Send>) -> ReadAhead {
        let (tx, chunks) = std::sync::mpsc::sync_channel(4);
        std::thread::spawn(move || loop {
            let mut chunk = vec![0u8; 256 * 1024];
            match inner.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send(Ok(chunk)).is_err() {
                        break; // the reader is gone
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        });
        ReadAhead {
            chunks,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => (self.chunk, self.at) = (chunk, 0),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn read_all(r: impl Read) -> String {
    let mut s = String::new();
    let _ = BufReader::new(r).read_to_string(&mut s);
    s
}

/// A random key of letters and digits (for `\restrict`).
pub fn random_key(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Runs psql on the dump, checking each statement before psql gets it ([`guard::stream`]).
/// Blocking.
pub fn run_psql(job: &PsqlJob) -> Result<PsqlRun> {
    let key = job.restrict.then(|| random_key(32));
    let mut dump = Dump {
        job,
        unpacked: None,
        key: key.clone(),
    };
    let mut cmd = Command::new(&job.psql);
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
        "-f",
        "-",
    ]);
    apply_env(&mut cmd, &job.target);
    cmd.env("PGAPPNAME", &job.application_name).env("LC_MESSAGES", "C");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Owned::spawn(&mut cmd).with_context(|| format!("starting {}", job.psql.display()))?;
    let stdin = child.stdin.take().expect("piped");
    let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));

    let prologue = match &key {
        Some(k) => format!("\\restrict {k}\n{}", job.plan.prologue),
        None => job.plan.prologue.clone(),
    };
    let prologue_lines = prologue.matches('\n').count() as u64;
    let mut stdin = BufWriter::with_capacity(256 * 1024, stdin);
    let (checked, fed) = feed(&mut stdin, &mut dump, &prologue, &job.plan.epilogue);
    if fed.is_err() {
        // Refused, unreadable or stopped: psql's session goes before it could commit anything
        // (the tool never sent COMMIT; killing it also stops a COPY the dump was cut in).
        let _ = child.kill();
    }
    drop(stdin);
    let status = child.wait()?;
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = job.target.scrub(&err_reader.join().unwrap_or_default());
    let epilogue_sent = fed?;
    if checked.skipped > 0 {
        tracing::info!(
            "{} ownership and privilege statements of the dump were left out: the restored objects belong to the owner of the tenant's schema",
            checked.skipped
        );
    }
    Ok(PsqlRun {
        success: status.success(),
        stdout,
        stderr,
        prologue_lines,
        epilogue_sent,
        checked,
    })
}

/// Streams prologue, dump (each statement checked before psql gets it) and, only if the whole
/// dump passed and arrived complete, the epilogue with its COMMIT into psql. `Ok(false)` when
/// psql stopped reading (its stderr says why); an error when the dump was refused or could not be
/// read, and then nothing was committed.
fn feed(stdin: &mut impl Write, dump: &mut Dump, prologue: &str, epilogue: &str) -> (Checked, Result<bool>) {
    if stdin.write_all(prologue.as_bytes()).is_err() {
        return (Checked::default(), Ok(false));
    }
    let job = dump.job;
    let where_ = match job.source.format {
        DumpFormat::Custom => "of the SQL pg_restore makes of the archive",
        _ => "of the dump",
    };
    let sql = match dump.open("restored") {
        Ok(sql) => sql,
        Err(e) => return (Checked::default(), Err(e)),
    };
    let input = BufReader::with_capacity(256 * 1024, sql.reader);
    let (checked, streamed) = match job.defer_post_data {
        true => guard::stream_deferring(input, &job.scope, &mut *stdin),
        false => guard::stream(input, &job.scope, &mut *stdin),
    };
    let nothing = "the transaction was rolled back, nothing was committed";
    let outcome = match streamed {
        Ok(()) => Ok(()),
        Err(CheckError::Write(_)) => return (checked, Ok(false)),
        Err(CheckError::Refused(r)) => Err(anyhow::anyhow!(
            "{} is refused: line {} {where_}: {}; {nothing}",
            job.source.key,
            r.line,
            r.reason
        )),
        Err(CheckError::Read(e)) => {
            Err(anyhow::Error::new(e).context(format!("reading the dump (corrupt or truncated object); {nothing}")))
        }
    };
    // pg_restore's exit, once its output was read to the end (or given up on: then the reason we
    // stopped is the one to tell).
    let finished = Sql {
        reader: Box::new(io::empty()),
        pg_restore: sql.pg_restore,
    }
    .finish(&job.source.key);
    if let Err(e) = outcome.and(finished) {
        return (checked, Err(e));
    }
    if !checked.complete {
        return (
            checked,
            Err(anyhow::anyhow!("the dump is truncated (no closing line); {nothing}")),
        );
    }
    // From here the epilogue (history carry-over, COMMIT) and the report are one step for a stop:
    // one that came earlier rolls back, one that comes later waits for them (stop::commit_point).
    if let Err(e) = crate::stop::commit_point().context("stopped by a signal before COMMIT") {
        return (checked, Err(e));
    }
    let sent = stdin.write_all(epilogue.as_bytes()).and_then(|_| stdin.flush()).is_ok();
    (checked, Ok(sent))
}

/// The decrypted, decompressed contents of a fetched object, as lines for the json loader, shown
/// as restored.
pub fn open_decompressed(path: &Path, source: &Source, progress: &Shown) -> Result<Box<dyn io::BufRead + Send>> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let stored = Counting::new(file, progress.start("restored", Some(size)));
    Ok(read_plain(stored, source.compression, source.decrypt.as_ref())?)
}
