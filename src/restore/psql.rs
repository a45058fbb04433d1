//! Runs a restore through psql (custom archives through pg_restore first), fed the script and the dump.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use tempfile::NamedTempFile;

use super::access::open_plain;
use super::script::{Plan, COUNT_MARK};
use super::source::Source;
use crate::backup::compress::Compression;
use crate::backup::format::DumpFormat;
use crate::pg::dumpscan::PlainDumpScanner;
use crate::pg::target::DbTarget;
use crate::pg::tools::apply_env;

/// Row counts printed by a `Target::Scratch` run.
pub type Counts = std::collections::BTreeMap<String, u64>;

/// Runs the restore: psql on the session target, fed prologue, dump, epilogue. Blocking.
pub fn run_psql(
    psql: &Path,
    pg_restore: &Path,
    target: &DbTarget,
    dump: &Path,
    source: &Source,
    plan: &Plan,
) -> Result<Counts> {
    // A custom archive becomes SQL through pg_restore; compressed ones are unpacked first.
    let mut unpacked: Option<NamedTempFile> = None;
    let mut pg_restore_child = None;
    let stream: Box<dyn Read + Send> = match source.format {
        DumpFormat::Plain => open_plain(dump, source.compression, source.decrypt.as_ref())?,
        DumpFormat::Json => anyhow::bail!("json backups are restored through the driver, not psql"),
        DumpFormat::Custom => {
            // pg_restore needs a file: a compressed or encrypted archive is unpacked into a
            // private (0600) temporary file, removed on every exit path.
            let archive: PathBuf = if source.compression == Compression::None && source.decrypt.is_none() {
                dump.to_path_buf()
            } else {
                let mut tmp = tempfile::Builder::new().prefix("tenant-backup-archive-").tempfile()?;
                io::copy(
                    &mut open_plain(dump, source.compression, source.decrypt.as_ref())?,
                    tmp.as_file_mut(),
                )?;
                let path = tmp.path().to_path_buf();
                unpacked = Some(tmp);
                path
            };
            let mut child = crate::stop::spawn(
                Command::new(pg_restore)
                    .args(["--no-owner", "--no-privileges", "-f", "-"])
                    .arg(&archive)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
            .with_context(|| format!("starting {}", pg_restore.display()))?;
            let out = child.stdout.take().expect("piped");
            pg_restore_child = Some(child);
            Box::new(out)
        }
    };

    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    apply_env(&mut cmd, target);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = crate::stop::spawn(&mut cmd).with_context(|| format!("starting {}", psql.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (ready_to_commit, ready) = std::sync::mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let (mut out, mut line, mut stdout) = (String::new(), Vec::new(), BufReader::new(stdout));
        while matches!(stdout.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            if text.trim_end() == READY_MARK {
                let _ = ready_to_commit.send(());
            } else {
                out.push_str(&text);
            }
            line.clear();
        }
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });

    let fed = feed(
        &mut stdin,
        stream,
        source.format == DumpFormat::Plain || pg_restore_child.is_some(),
        plan,
        &ready,
    );
    drop(stdin);
    let status = child.wait()?;
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = target.scrub(&err_reader.join().unwrap_or_default());
    if let Some(mut c) = pg_restore_child {
        let st = c.wait()?;
        let mut e = String::new();
        if let Some(mut s) = c.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        if !st.success() {
            anyhow::bail!(
                "pg_restore could not read {}: {}; nothing was restored",
                source.key,
                e.trim()
            );
        }
    }
    drop(unpacked);
    match fed {
        Err(e) if status.success() => return Err(e.context("nothing was restored (the transaction was not committed)")),
        _ => {}
    }
    if !status.success() {
        let detail = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::bail!("the restore failed and was rolled back; the live schema is unchanged:\n{detail}");
    }
    fed?;
    let counts = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(COUNT_MARK).and_then(|r| r.strip_prefix('|')))
        .filter_map(|r| {
            let (t, n) = r.rsplit_once('|')?;
            Some((t.to_string(), n.parse().ok()?))
        })
        .collect();
    Ok(counts)
}

/// What psql prints once it has run everything but the COMMIT.
const READY_MARK: &str = "tenant-backup-ready-to-commit";
const COMMIT: &str = "COMMIT;\n";

/// Streams prologue, dump and (only if the dump arrived whole) epilogue into psql.
fn feed(
    stdin: &mut impl Write,
    mut stream: Box<dyn Read + Send>,
    check_trailer: bool,
    plan: &Plan,
    ready: &std::sync::mpsc::Receiver<()>,
) -> Result<()> {
    stdin
        .write_all(plan.prologue.as_bytes())
        .context("psql stopped early")?;
    let mut scanner = PlainDumpScanner::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("reading the dump (corrupt or truncated object)")),
        };
        scanner.feed(&buf[..n]);
        if stdin.write_all(&buf[..n]).is_err() {
            // psql stopped on an error; its stderr says which.
            return Ok(());
        }
    }
    if check_trailer && !scanner.is_complete() {
        anyhow::bail!("the dump is truncated (no closing line)");
    }
    // The COMMIT goes alone, once psql has run everything before it: a stop that comes earlier
    // rolls back; one that comes later waits for the COMMIT and its report (stop::commit_point).
    let Some(before_commit) = plan.epilogue.strip_suffix(COMMIT) else {
        stdin
            .write_all(plan.epilogue.as_bytes())
            .context("psql stopped early")?;
        return Ok(());
    };
    stdin
        .write_all(format!("{before_commit}SELECT '{READY_MARK}';\n").as_bytes())
        .context("psql stopped early")?;
    if ready.recv().is_err() {
        // psql stopped on an error; its stderr says which.
        return Ok(());
    }
    crate::stop::commit_point().context("stopped by a signal before COMMIT")?;
    stdin.write_all(COMMIT.as_bytes()).context("psql stopped early")?;
    Ok(())
}

/// The decrypted, decompressed contents of a fetched object, as lines for the json loader.
pub fn open_decompressed(path: &Path, source: &Source) -> Result<Box<dyn io::BufRead + Send>> {
    Ok(open_plain(path, source.compression, source.decrypt.as_ref())?)
}
