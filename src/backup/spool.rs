//! Dump → compress → checksum → temporary file, streaming in fixed-size chunks. pg_dump's output
//! never sits in memory whole, and the spool lets a failed upload be retried without dumping again.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::backup::compress::Compression;
use crate::backup::format::DumpFormat;
use crate::crypto::stream::Sealing;
use crate::jsonl::ProducerError;
use crate::pg::dumpscan::PlainDumpScanner;

const CHUNK: usize = 256 * 1024;
const STDERR_KEEP: usize = 16 * 1024;

#[derive(Debug)]
pub struct Spooled {
    pub file: NamedTempFile,
    /// Bytes of the compressed (stored) form.
    pub size: u64,
    pub sha256: String,
    pub uncompressed_size: u64,
    pub row_counts: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("pg_dump failed ({status}){}", stderr_suffix(.stderr))]
    DumpFailed { status: String, stderr: String },
    #[error("pg_dump produced no output{}", stderr_suffix(.stderr))]
    Empty { stderr: String },
    #[error("the dump is truncated: pg_dump exited without its closing line{}", stderr_suffix(.stderr))]
    Truncated { stderr: String },
    #[error("the dump is not a pg_dump custom-format archive")]
    NotAnArchive,
    #[error("the backup is larger than --max-size ({limit} bytes); nothing was stored")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Producer(String),
    #[error("writing the spool file in {dir}: {source}")]
    Write { dir: String, source: io::Error },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// Counts and hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        if self.limit.is_some_and(|l| self.written > l) {
            return Err(io::Error::other(TooLargeMarker));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug)]
struct TooLargeMarker;
impl std::fmt::Display for TooLargeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too large")
    }
}
impl std::error::Error for TooLargeMarker {}

pub struct SpoolOptions<'a> {
    pub format: DumpFormat,
    pub compression: Compression,
    pub max_size: Option<u64>,
    pub spool_dir: &'a Path,
    /// Raw bytes read from pg_dump so far, for progress display.
    pub progress: Option<Arc<AtomicU64>>,
    /// Removes secrets from pg_dump's stderr before it is shown.
    pub scrub: &'a (dyn Fn(&str) -> String + Sync),
    /// Encrypt (after compressing) to this tenant recipient.
    pub encrypt: Option<age::x25519::Recipient>,
}

/// What one pass over the dump stream produced.
struct Pumped {
    hashing: HashingWriter<BufWriter<std::fs::File>>,
    raw: u64,
    head: Vec<u8>,
    scanner: Option<PlainDumpScanner>,
}

fn new_spool(opts: &SpoolOptions<'_>) -> Result<NamedTempFile, SpoolError> {
    tempfile::Builder::new()
        .prefix("tenant-backup-")
        .suffix(".spool")
        .tempfile_in(opts.spool_dir)
        .map_err(|e| write_err(opts, e))
}

fn write_err(opts: &SpoolOptions<'_>, source: io::Error) -> SpoolError {
    if source.get_ref().is_some_and(|inner| inner.is::<TooLargeMarker>()) {
        return SpoolError::TooLarge {
            limit: opts.max_size.unwrap_or(0),
        };
    }
    SpoolError::Write {
        dir: opts.spool_dir.display().to_string(),
        source,
    }
}

/// Reads `input` to its end through compressor and checksum into `file`.
fn pump(input: &mut dyn Read, file: &NamedTempFile, opts: &SpoolOptions<'_>) -> io::Result<Pumped> {
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(CHUNK, file.as_file().try_clone()?),
        hasher: Sha256::new(),
        written: 0,
        limit: opts.max_size,
    };
    let sealing = Sealing::new(opts.encrypt.as_ref(), hashing)?;
    let mut encoder = opts.compression.encoder(sealing)?;
    let mut scanner = (opts.format == DumpFormat::Plain).then(PlainDumpScanner::default);
    let mut head: Vec<u8> = Vec::with_capacity(5);
    let mut raw: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        if head.len() < 5 {
            head.extend(chunk.iter().take(5 - head.len()));
        }
        if let Some(s) = scanner.as_mut() {
            s.feed(chunk);
        }
        encoder.write_all(chunk)?;
        raw += n as u64;
        if let Some(p) = &opts.progress {
            p.store(raw, Ordering::Relaxed);
        }
    }
    let mut hashing = encoder.finish()?.finish()?;
    hashing.flush()?;
    Ok(Pumped {
        hashing,
        raw,
        head,
        scanner,
    })
}

fn finish(file: NamedTempFile, pumped: Pumped, opts: &SpoolOptions<'_>) -> Result<Spooled, SpoolError> {
    let Pumped {
        hashing, raw, scanner, ..
    } = pumped;
    let HashingWriter {
        inner, hasher, written, ..
    } = hashing;
    inner
        .into_inner()
        .map_err(|e| write_err(opts, e.into_error()))?
        .sync_all()
        .map_err(|e| write_err(opts, e))?;
    Ok(Spooled {
        file,
        size: written,
        sha256: hex::encode(hasher.finalize()),
        uncompressed_size: raw,
        row_counts: scanner.map(PlainDumpScanner::into_counts),
    })
}

/// Runs the dump command to completion and returns the finished spool file. Blocking: call it from
/// `spawn_blocking`.
pub fn dump_to_spool(mut cmd: Command, opts: &SpoolOptions<'_>) -> Result<Spooled, SpoolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = crate::stop::spawn(&mut cmd).map_err(|source| SpoolError::Spawn { program, source })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || keep_tail(stderr, STDERR_KEEP));
    let file = new_spool(opts)?;
    let pumped = match pump(&mut stdout, &file, opts) {
        Ok(p) => p,
        Err(e) => {
            // Closing our end of the pipe too, so anything the dumper started dies of SIGPIPE.
            drop(stdout);
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr_reader.join();
            return Err(write_err(opts, e));
        }
    };
    let status = child.wait().map_err(|e| write_err(opts, e))?;
    let stderr = (opts.scrub)(&stderr_reader.join().unwrap_or_default());
    if !status.success() {
        let status = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => format!(
                "killed by signal {}",
                std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            ),
        };
        return Err(SpoolError::DumpFailed { status, stderr });
    }
    if pumped.raw == 0 {
        return Err(SpoolError::Empty { stderr });
    }
    match &pumped.scanner {
        Some(s) if !s.is_complete() => return Err(SpoolError::Truncated { stderr }),
        None if pumped.head != b"PGDMP" => return Err(SpoolError::NotAnArchive),
        _ => {}
    }
    finish(file, pumped, opts)
}

/// Spools a stream our own dumper produces (the native JSON format). An error the producer puts
/// into the stream fails the spool.
pub fn spool_stream(mut input: impl Read, opts: &SpoolOptions<'_>) -> Result<Spooled, SpoolError> {
    let file = new_spool(opts)?;
    let pumped = pump(&mut input, &file, opts).map_err(|e| match e.kind() {
        io::ErrorKind::Other if e.get_ref().is_some_and(|i| i.is::<ProducerError>()) => {
            SpoolError::Producer(e.into_inner().map(|i| i.to_string()).unwrap_or_default())
        }
        _ => write_err(opts, e),
    })?;
    if pumped.raw == 0 {
        return Err(SpoolError::Empty { stderr: String::new() });
    }
    finish(file, pumped, opts)
}

/// Reads a stream to its end, keeping only its last `keep` bytes (pg_dump's last words matter).
fn keep_tail(mut r: impl Read, keep: usize) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep * 2 {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        c
    }

    fn opts(dir: &Path) -> SpoolOptions<'_> {
        SpoolOptions {
            format: DumpFormat::Plain,
            compression: Compression::Zstd { level: 3 },
            max_size: None,
            spool_dir: dir,
            progress: None,
            scrub: &|s: &str| s.replace("hunter2", "***"),
            encrypt: None,
        }
    }

    #[test]
    fn spools_a_complete_dump_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let s = dump_to_spool(
            sh("printf 'COPY s.t (a) FROM stdin;\\n1\\n2\\n\\\\.\\n-- PostgreSQL database dump complete\\n'"),
            &opts(dir.path()),
        )
        .unwrap();
        assert_eq!(s.sha256, sha256_file(s.file.path()).unwrap());
        assert_eq!(s.size, std::fs::metadata(s.file.path()).unwrap().len());
        assert_eq!(s.row_counts.unwrap()["t"], 2);
    }

    #[test]
    fn failures_are_errors_with_scrubbed_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let err = dump_to_spool(
            sh("echo partial; echo 'password hunter2 rejected' >&2; exit 1"),
            &opts(dir.path()),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("exit code 1") && msg.contains("***") && !msg.contains("hunter2"),
            "{msg}"
        );
        assert!(matches!(
            dump_to_spool(sh("true"), &opts(dir.path())),
            Err(SpoolError::Empty { .. })
        ));
        assert!(matches!(
            dump_to_spool(sh("echo 'SET x;'"), &opts(dir.path())),
            Err(SpoolError::Truncated { .. })
        ));
        assert!(matches!(
            dump_to_spool(sh("kill -9 $$"), &opts(dir.path())),
            Err(SpoolError::DumpFailed { .. })
        ));
        // Nothing left behind in the spool directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn max_size_stops_the_dump() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.compression = Compression::None;
        o.max_size = Some(1000);
        let err = dump_to_spool(sh("head -c 100000 /dev/zero"), &o).unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { limit: 1000 }), "{err}");
    }
}
