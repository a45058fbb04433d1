//! What the core tells whoever watches it work. The core bumps a byte counter; the command-line face
//! (`app::progress`) decides whether that becomes a bar, a periodic log line or nothing.

use std::any::Any;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub trait ProgressSink: Send + Sync {
    /// Starts showing one piece of work (`label`, e.g. a tenant) of `total` bytes when known.
    /// The display ends when the returned tracker is dropped.
    fn start(&self, label: &str, what: &str, total: Option<u64>) -> Tracker;
}

/// One piece of work being shown: the worker adds the bytes it has done to [`Tracker::counter`].
pub struct Tracker {
    counter: Arc<AtomicU64>,
    _display: Option<Box<dyn Any + Send>>,
}

impl Tracker {
    /// `display` is whatever keeps the display alive (dropped with the tracker).
    pub fn new(counter: Arc<AtomicU64>, display: Option<Box<dyn Any + Send>>) -> Self {
        Tracker {
            counter,
            _display: display,
        }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }
}

/// Where one piece of work is shown: a sink, and the label its displays carry (the tenant).
#[derive(Clone)]
pub struct Shown {
    sink: Arc<dyn ProgressSink>,
    label: String,
}

impl Shown {
    pub fn new(sink: Arc<dyn ProgressSink>, label: impl Into<String>) -> Self {
        Shown {
            sink,
            label: label.into(),
        }
    }

    pub fn silent() -> Self {
        Shown::new(Arc::new(Silent), "")
    }

    /// A display of `what` is done with the bytes (`total` when known); see [`ProgressSink::start`].
    pub fn start(&self, what: &str, total: Option<u64>) -> Tracker {
        self.sink.start(&self.label, what, total)
    }
}

/// A reader that adds the bytes it reads to a [`Tracker`]'s counter; the display lasts as long
/// as the reader.
pub struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
    _tracker: Tracker,
}

impl<R> Counting<R> {
    pub fn new(inner: R, tracker: Tracker) -> Self {
        Counting {
            inner,
            counter: tracker.counter(),
            _tracker: tracker,
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Shows nothing.
pub struct Silent;

impl ProgressSink for Silent {
    fn start(&self, _label: &str, _what: &str, _total: Option<u64>) -> Tracker {
        Tracker::new(Arc::new(AtomicU64::new(0)), None)
    }
}

/// The application's format: `245.67 KB` (binary multiples, two decimals).
pub fn human_size(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KB", "MB", "GB"] {
        if value < 1024.0 {
            return format!("{value:.2} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.2} TB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_counts_what_was_read() {
        let tracker = Silent.start("t", "read", None);
        let counter = tracker.counter();
        let mut r = Counting::new(&b"hello world"[..], tracker);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn sizes_read_like_the_application() {
        assert_eq!(human_size(251_566), "245.67 KB");
        assert_eq!(human_size(512), "512.00 B");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.00 GB");
    }
}
