//! What the core tells whoever watches it work. The core bumps a byte counter; the command-line face
//! (`app::progress`) decides whether that becomes a bar, a periodic log line or nothing.

use std::any::Any;
use std::sync::atomic::AtomicU64;
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
    fn sizes_read_like_the_application() {
        assert_eq!(human_size(251_566), "245.67 KB");
        assert_eq!(human_size(512), "512.00 B");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.00 GB");
    }
}
