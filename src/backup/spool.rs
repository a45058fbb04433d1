//! Dump → compress → checksum → temporary file, streaming in fixed-size chunks. pg_dump's output
//! never sits in memory whole, and the spool lets a failed upload be retried without dumping again.
//! The spool is created before the dump starts ([`create`]) so that storage can follow it as it
//! grows ([`GrowingFile`]); it is declared complete only once the dump is known to be whole.
//! Where storage is a local directory the spool is written in the object's own folder and made
//! durable as it goes, and becomes the object by a link (see `storage::fs`).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::backup::compress::Compression;
use crate::backup::format::DumpFormat;
use crate::backup::pump::{pump, widen_pipe, GivenUpMarker, PumpError, Pumped, TooLargeMarker};
use crate::jsonl::ProducerError;
use crate::pg::dumpscan::PlainDumpScanner;
use crate::storage::{Grower, GrowingFile};

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
    #[error("the dump holds what a restore refuses, so it would not restore ({0}); the backup failed and nothing was kept: see \"What a restored dump may and may not do\" in docs/restore.md")]
    Refused(String),
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
    /// Storage refused the object for good while the dump ran: the dump was stopped.
    #[error("the storage refused the backup; the dump was stopped")]
    GivenUp,
    #[error("{0}")]
    Producer(String),
    /// The OS error is part of the message and deliberately not a `source` (thiserror would make
    /// a field named `source` one), so an error chain prints it once.
    #[error("writing the spool file in {dir}: {error}")]
    Write { dir: String, error: io::Error },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

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
    /// A plain dump is checked by the restore guard as it is written (see [`crate::restore::guard`]):
    /// a backup that a restore would refuse is not a backup.
    pub check: Option<crate::restore::guard::Scope>,
}

/// A spool file made before the dump starts, and the handle that reports its growth.
pub struct Spool {
    file: NamedTempFile,
    grower: Grower,
    /// The spool will become the stored object in place: its writes are made durable as they go.
    durable: bool,
}

/// Creates the spool in `dir`, named like the local directory's temporary files
/// (`.<name>.<random>.partial`, hidden, found by `cleanup` if a crash leaves it), and what storage
/// follows it through. `durable`: the spool will be the stored object itself.
pub fn create(dir: &Path, object_name: &str, durable: bool) -> Result<(Spool, GrowingFile), SpoolError> {
    let file = tempfile::Builder::new()
        .prefix(&format!(".{object_name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|error| SpoolError::Write {
            dir: dir.display().to_string(),
            error,
        })?;
    let (grower, growing) = GrowingFile::new(file.path());
    Ok((Spool { file, grower, durable }, growing))
}

fn write_err(opts: &SpoolOptions<'_>, source: io::Error) -> SpoolError {
    if source.get_ref().is_some_and(|inner| inner.is::<GivenUpMarker>()) {
        return SpoolError::GivenUp;
    }
    if source.get_ref().is_some_and(|inner| inner.is::<TooLargeMarker>()) {
        return SpoolError::TooLarge {
            limit: opts.max_size.unwrap_or(0),
        };
    }
    SpoolError::Write {
        dir: opts.spool_dir.display().to_string(),
        error: source,
    }
}

fn pump_err(opts: &SpoolOptions<'_>, e: PumpError) -> SpoolError {
    match e {
        PumpError::Input(e) | PumpError::Output(e) => write_err(opts, e),
    }
}

/// The spool is whole and valid: storage may make it an object.
fn finish(file: NamedTempFile, pumped: Pumped) -> Spooled {
    pumped.grower.complete(pumped.size);
    Spooled {
        file,
        size: pumped.size,
        sha256: pumped.sha256,
        uncompressed_size: pumped.raw,
        row_counts: pumped.scanner.map(PlainDumpScanner::into_counts),
    }
}

/// Runs the dump command to completion and returns the finished spool file. Blocking: call it from
/// `spawn_blocking`. On any failure the spool is abandoned (and removed).
pub fn dump_to_spool(mut cmd: Command, spool: Spool, opts: &SpoolOptions<'_>) -> Result<Spooled, SpoolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = crate::stop::spawn(&mut cmd).map_err(|source| SpoolError::Spawn { program, source })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    widen_pipe(&stdout);
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || keep_tail(stderr, STDERR_KEEP));
    let Spool { file, grower, durable } = spool;
    // Storage may give the spool up for good while pg_dump is quiet (a big table's rows take a
    // while to come): it is ended then, not when it next writes.
    let given_up = grower.given_up_flag();
    let pumping = AtomicBool::new(true);
    let pumped = std::thread::scope(|scope| {
        scope.spawn(|| {
            while pumping.load(Ordering::Relaxed) {
                if given_up.load(Ordering::Relaxed) {
                    child.kill_group();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let pumped = pump(&mut stdout, file.as_file(), grower, durable, opts);
        pumping.store(false, Ordering::Relaxed);
        pumped
    });
    if given_up.load(Ordering::Relaxed) {
        drop(stdout);
        let _ = child.kill();
        let _ = child.wait();
        let _ = stderr_reader.join();
        return Err(SpoolError::GivenUp);
    }
    let pumped = match pumped {
        Ok(p) => p,
        Err(e) => {
            // Closing our end of the pipe too, so anything the dumper started dies of SIGPIPE.
            drop(stdout);
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr_reader.join();
            return Err(pump_err(opts, e));
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
    if let Some(Err(e)) = pumped.checked {
        return Err(SpoolError::Refused(e.to_string()));
    }
    match &pumped.scanner {
        Some(s) if !s.is_complete() => return Err(SpoolError::Truncated { stderr }),
        None if pumped.head != b"PGDMP" => return Err(SpoolError::NotAnArchive),
        _ => {}
    }
    Ok(finish(file, pumped))
}
/// Spools a stream our own dumper produces (the native JSON format). An error the producer puts
/// into the stream fails the spool.
pub fn spool_stream(mut input: impl Read, spool: Spool, opts: &SpoolOptions<'_>) -> Result<Spooled, SpoolError> {
    let Spool { file, grower, durable } = spool;
    let pumped = pump(&mut input, file.as_file(), grower, durable, opts).map_err(|e| match e {
        PumpError::Input(e) if e.get_ref().is_some_and(|i| i.is::<ProducerError>()) => {
            SpoolError::Producer(e.into_inner().map(|i| i.to_string()).unwrap_or_default())
        }
        other => pump_err(opts, other),
    })?;
    if pumped.raw == 0 {
        return Err(SpoolError::Empty { stderr: String::new() });
    }
    Ok(finish(file, pumped))
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
/// The sha256 of everything `f` reads, in hex.
pub fn sha256_of(mut f: impl Read) -> io::Result<String> {
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
            check: None,
            format: DumpFormat::Plain,
            compression: Compression::Zstd { level: 3 },
            max_size: None,
            spool_dir: dir,
            progress: None,
            scrub: &|s: &str| s.replace("hunter2", "***"),
            encrypt: None,
        }
    }

    fn dump(script: &str, opts: &SpoolOptions<'_>) -> Result<Spooled, SpoolError> {
        let (spool, _) = create(opts.spool_dir, "x.sql", false).unwrap();
        dump_to_spool(sh(script), spool, opts)
    }

    #[test]
    fn spools_a_complete_dump_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut growing) = create(dir.path(), "x.sql", false).unwrap();
        let s = dump_to_spool(
            sh("printf 'COPY s.t (a) FROM stdin;\\n1\\n2\\n\\\\.\\n-- PostgreSQL database dump complete\\n'"),
            spool,
            &opts(dir.path()),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(growing.complete()).unwrap(), s.size, "declared complete");
        assert_eq!(
            s.sha256,
            sha256_of(std::fs::File::open(s.file.path()).unwrap()).unwrap()
        );
        assert_eq!(s.size, std::fs::metadata(s.file.path()).unwrap().len());
        assert_eq!(s.row_counts.unwrap()["t"], 2);
    }

    #[test]
    fn failures_are_errors_with_scrubbed_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut growing) = create(dir.path(), "x.sql", false).unwrap();
        let err = dump_to_spool(
            sh("echo partial; echo 'password hunter2 rejected' >&2; exit 1"),
            spool,
            &opts(dir.path()),
        )
        .unwrap_err();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(growing.complete()).is_err(), "a failed dump is abandoned");
        let msg = err.to_string();
        assert!(
            msg.contains("exit code 1") && msg.contains("***") && !msg.contains("hunter2"),
            "{msg}"
        );
        assert!(matches!(dump("true", &opts(dir.path())), Err(SpoolError::Empty { .. })));
        assert!(matches!(
            dump("echo 'SET x;'", &opts(dir.path())),
            Err(SpoolError::Truncated { .. })
        ));
        assert!(matches!(
            dump("kill -9 $$", &opts(dir.path())),
            Err(SpoolError::DumpFailed { .. })
        ));
        // Nothing left behind in the spool directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A stream longer than two pieces, read in odd sizes: the buffers grow from small to a
    /// whole piece and are reused, and every byte arrives once, in order.
    #[test]
    fn a_stream_of_several_pieces_read_in_odd_sizes_is_spooled_whole() {
        struct Odd {
            left: usize,
            next: u8,
            step: usize,
        }
        impl Read for Odd {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.step = self.step % 70_001 + 12_345;
                let n = buf.len().min(self.left).min(self.step);
                for b in &mut buf[..n] {
                    *b = self.next;
                    self.next = self.next.wrapping_mul(31).wrapping_add(7);
                }
                self.left -= n;
                Ok(n)
            }
        }
        let total = 2 * crate::backup::compress::ZSTD_FRAME + 333_333;
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.format = DumpFormat::Json;
        o.compression = Compression::None;
        let (spool, _) = create(dir.path(), "x.jsonl", false).unwrap();
        let input = Odd {
            left: total,
            next: 1,
            step: 0,
        };
        let s = spool_stream(input, spool, &o).unwrap();
        let mut expected = Vec::new();
        Odd {
            left: total,
            next: 1,
            step: 0,
        }
        .read_to_end(&mut expected)
        .unwrap();
        assert_eq!(std::fs::read(s.file.path()).unwrap(), expected);
        assert_eq!(s.uncompressed_size, total as u64);
    }

    #[test]
    fn max_size_stops_the_dump() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.compression = Compression::None;
        o.max_size = Some(1000);
        let err = dump("head -c 100000 /dev/zero", &o).unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { limit: 1000 }), "{err}");
    }
}
