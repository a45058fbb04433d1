//! The spool's two threads. The reader takes the dump stream in 1 MiB reads (pg_dump's pipe is
//! widened to 1 MiB so it can run ahead while we are busy) into 8 MiB pieces, one zstd frame each
//! (compressed straight from the piece, never copied), watches it (the first bytes, the
//! plain-dump scanner, progress) and hands the pieces over a short queue to the compressor thread,
//! which compresses, encrypts, hashes and writes the spool, saying after each write how far the
//! file can be read (a remote upload follows it). Compression, the costly part, so never waits
//! for a read, nor pg_dump for it, while a core is free.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::backup::format::DumpFormat;
use crate::backup::spool::SpoolOptions;
use crate::crypto::stream::Sealing;
use crate::pg::dumpscan::PlainDumpScanner;
use crate::storage::Grower;

const READ_CHUNK: usize = 1024 * 1024;
/// A new buffer's first size; it doubles as it fills, up to a piece.
const FIRST_READ: usize = 64 * 1024;
/// What the reader hands over at once: one zstd frame's worth.
const PIECE: usize = crate::backup::compress::ZSTD_FRAME;
/// Pieces waiting for the compressor: with the one being filled and the one being compressed,
/// three pieces (24 MiB) at most in memory, and as far as pg_dump may run ahead.
const QUEUE: usize = 1;
/// A durable spool starts the kernel's write-back every this many bytes, so the one fsync at the
/// end finds little left to write.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// What one pass over the dump stream produced.
pub struct Pumped {
    pub raw: u64,
    pub head: Vec<u8>,
    pub scanner: Option<PlainDumpScanner>,
    /// The restore guard's verdict on a plain dump, when it was checked.
    pub checked: Option<Result<(), crate::restore::guard::CheckError>>,
    /// Bytes of the stored form, and their checksum.
    pub size: u64,
    pub sha256: String,
    pub grower: Grower,
}

/// Why a pass failed: the input (reading the dump) or the output (compressing, writing the spool).
pub enum PumpError {
    Input(io::Error),
    Output(io::Error),
}

enum Piece {
    /// A buffer and how many of its bytes are the dump's.
    Data(Vec<u8>, usize),
    /// The input ended normally; anything else that closes the queue is a failure.
    End,
}

/// Reads `input` to its end through compressor, encryption and checksum into the spool file. A
/// dump that ends within its first piece (a small tenant's, most of a fleet) is compressed on this
/// thread: a second thread and its hand-offs cost more than compressing a few kilobytes.
pub fn pump(
    input: &mut dyn Read,
    file: &std::fs::File,
    grower: Grower,
    durable: bool,
    opts: &SpoolOptions<'_>,
) -> Result<Pumped, PumpError> {
    let out = file.try_clone().map_err(PumpError::Output)?;
    let written = SpoolWriter {
        file: out,
        grower,
        len: 0,
        synced_to: 0,
        durable,
    };
    let mut reader = ReadSide::new(opts);
    let first = reader.piece(input, Vec::new(), opts).map_err(PumpError::Input)?;
    if reader.ended {
        let (whole, pieces) = mpsc::sync_channel::<Piece>(2);
        let _ = whole.send(Piece::Data(first.0, first.1));
        let _ = whole.send(Piece::End);
        drop(whole);
        let compressed = compress(pieces, mpsc::channel().0, written, opts);
        return finish(Ok(reader.finish()), compressed);
    }
    let (to_compressor, pieces) = mpsc::sync_channel::<Piece>(QUEUE);
    let (recycle, spare) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let compressor = scope.spawn(move || compress(pieces, recycle, written, opts));
        let read = if to_compressor.send(Piece::Data(first.0, first.1)).is_err() {
            Err(io::Error::other("the compressor stopped"))
        } else {
            read_rest(input, reader, &to_compressor, &spare, opts)
        };
        // Closing the queue: after `End` the compressor finishes, otherwise it gives up.
        drop(to_compressor);
        let compressed = compressor
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the compressor thread panicked")));
        finish(read, compressed)
    })
}

fn finish(read: io::Result<ReadEnd>, compressed: io::Result<(SpoolWriter, u64, String)>) -> Result<Pumped, PumpError> {
    match (read, compressed) {
        (Ok(read), Ok((written, size, sha256))) => Ok(Pumped {
            raw: read.raw,
            head: read.head,
            scanner: read.scanner,
            checked: read.checked,
            size,
            sha256,
            grower: written.grower,
        }),
        (Err(e), Err(c)) if c.kind() == io::ErrorKind::UnexpectedEof => Err(PumpError::Input(e)),
        // The compressor stopped first (too large, disk full): its error is the cause.
        (_, Err(e)) => Err(PumpError::Output(e)),
        (Err(e), Ok(_)) => Err(PumpError::Input(e)),
    }
}

/// What the reader saw, once the input ended.
struct ReadEnd {
    raw: u64,
    head: Vec<u8>,
    scanner: Option<PlainDumpScanner>,
    checked: Option<Result<(), crate::restore::guard::CheckError>>,
}

/// The reading side: the first bytes, the plain-dump scanner and guard, progress.
struct ReadSide {
    raw: u64,
    head: Vec<u8>,
    scanner: Option<PlainDumpScanner>,
    guard: Option<crate::restore::guard::Beside>,
    ended: bool,
}

impl ReadSide {
    fn new(opts: &SpoolOptions<'_>) -> Self {
        ReadSide {
            raw: 0,
            head: Vec::with_capacity(5),
            scanner: (opts.format == DumpFormat::Plain).then(PlainDumpScanner::default),
            guard: match (&opts.check, opts.format) {
                (Some(scope), DumpFormat::Plain) => Some(crate::restore::guard::Beside::start(scope.clone())),
                _ => None,
            },
            ended: false,
        }
    }

    /// Fills `buf` (a spare one, or new) up to a piece, or to the input's end (`ended`): the
    /// buffer and how many of its bytes are the dump's.
    fn piece(
        &mut self,
        input: &mut dyn Read,
        mut buf: Vec<u8>,
        opts: &SpoolOptions<'_>,
    ) -> io::Result<(Vec<u8>, usize)> {
        let mut filled = 0;
        while filled < PIECE {
            // A new buffer grows with what is read: a small tenant's dump never pays for zeroing
            // a whole piece (8 MiB, once per tenant: about half the tool's own time at 10,000
            // tenants).
            if filled == buf.len() {
                buf.resize((buf.len() * 2).clamp(FIRST_READ, PIECE), 0);
            }
            let end = (filled + READ_CHUNK).min(buf.len());
            let n = match input.read(&mut buf[filled..end]) {
                Ok(0) => {
                    self.ended = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let chunk = &buf[filled..filled + n];
            if self.head.len() < 5 {
                self.head.extend(chunk.iter().take(5 - self.head.len()));
            }
            if let Some(s) = self.scanner.as_mut() {
                s.feed(chunk);
            }
            if let Some(g) = &self.guard {
                g.feed(chunk);
            }
            filled += n;
            self.raw += n as u64;
            if let Some(p) = &opts.progress {
                p.store(self.raw, Ordering::Relaxed);
            }
        }
        Ok((buf, filled))
    }

    fn finish(self) -> ReadEnd {
        ReadEnd {
            raw: self.raw,
            head: self.head,
            scanner: self.scanner,
            checked: self.guard.map(crate::restore::guard::Beside::finish),
        }
    }
}

/// The pieces after the first, handed to the compressor thread, then the end.
fn read_rest(
    input: &mut dyn Read,
    mut reader: ReadSide,
    to_compressor: &mpsc::SyncSender<Piece>,
    spare: &mpsc::Receiver<Vec<u8>>,
    opts: &SpoolOptions<'_>,
) -> io::Result<ReadEnd> {
    while !reader.ended {
        let (buf, filled) = reader.piece(input, spare.try_recv().unwrap_or_default(), opts)?;
        if filled > 0 && to_compressor.send(Piece::Data(buf, filled)).is_err() {
            // The compressor failed; its error says why.
            return Err(io::Error::other("the compressor stopped"));
        }
    }
    let _ = to_compressor.send(Piece::End);
    Ok(reader.finish())
}

/// The compressor thread: the pieces through compression, encryption and checksum into the spool.
/// A failure caused by the size limit or by storage giving the spool up is reported as that
/// (its marker error), whatever the layers above the spool did with the error on its way up (the
/// encryption turns its header's write error into text).
fn compress(
    pieces: mpsc::Receiver<Piece>,
    recycle: mpsc::Sender<Vec<u8>>,
    out: SpoolWriter,
    opts: &SpoolOptions<'_>,
) -> io::Result<(SpoolWriter, u64, String)> {
    let over = Arc::new(AtomicBool::new(false));
    let given_up = out.grower.given_up_flag();
    compress_into(pieces, recycle, out, opts, over.clone()).map_err(|e| {
        if over.load(Ordering::Relaxed) {
            io::Error::other(TooLargeMarker)
        } else if given_up.load(Ordering::Relaxed) {
            io::Error::other(GivenUpMarker)
        } else {
            e
        }
    })
}

fn compress_into(
    pieces: mpsc::Receiver<Piece>,
    recycle: mpsc::Sender<Vec<u8>>,
    out: SpoolWriter,
    opts: &SpoolOptions<'_>,
    over: Arc<AtomicBool>,
) -> io::Result<(SpoolWriter, u64, String)> {
    let hashing = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        written: 0,
        limit: opts.max_size,
        over,
    };
    let sealing = Sealing::new(opts.encrypt.as_ref(), hashing)?;
    let mut encoder = opts.compression.encoder(sealing)?;
    loop {
        match pieces.recv() {
            Ok(Piece::Data(buf, n)) => {
                encoder.write_all(&buf[..n])?;
                let _ = recycle.send(buf);
            }
            Ok(Piece::End) => break,
            // The reader stopped: its error is the cause.
            Err(_) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the dump stream failed")),
        }
    }
    let mut hashing = encoder.finish()?.finish()?;
    hashing.flush()?;
    let HashingWriter {
        inner, hasher, written, ..
    } = hashing;
    inner.grower.grew(inner.len);
    Ok((inner, written, hex::encode(hasher.finalize())))
}

/// Counts and hashes everything written through it; fails once past `limit`.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
    /// Set once past `limit`.
    over: Arc<AtomicBool>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        if self.limit.is_some_and(|l| self.written > l) {
            self.over.store(true, Ordering::Relaxed);
            return Err(io::Error::other(TooLargeMarker));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug)]
pub struct TooLargeMarker;
impl std::fmt::Display for TooLargeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too large")
    }
}
impl std::error::Error for TooLargeMarker {}

/// The spool's reader (the upload) gave it up: storage refused the object for good.
#[derive(Debug)]
pub struct GivenUpMarker;
impl std::fmt::Display for GivenUpMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the storage refused the backup; the dump was stopped")
    }
}
impl std::error::Error for GivenUpMarker {}

/// The spool file itself: unbuffered (every writer before it hands over whole blocks), each
/// write then readable by an upload that follows the file.
struct SpoolWriter {
    file: std::fs::File,
    grower: Grower,
    len: u64,
    synced_to: u64,
    durable: bool,
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.grower.given_up() {
            return Err(io::Error::other(GivenUpMarker));
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        self.grower.grew(self.len);
        if self.durable && self.len - self.synced_to >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.synced_to, self.len - self.synced_to);
            self.synced_to = self.len;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Asks the kernel to start writing a range out now, without waiting for it.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// Widens a pipe to 1 MiB (Linux; the default 64 KiB makes pg_dump wait for every read).
pub fn widen_pipe(pipe: &impl std::os::unix::io::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: fcntl on a descriptor the caller owns; failure leaves the pipe as it was.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, READ_CHUNK as libc::c_int);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pipe;
}
