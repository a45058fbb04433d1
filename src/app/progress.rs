//! Progress for a running dump: an indicatif bar on a terminal, a log line every few seconds
//! otherwise, nothing when asked. The core only bumps a counter; this watches it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::app::output::{human_size, ProgressMode};

const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    mode: ProgressMode,
    multi: MultiProgress,
}

pub struct Watch {
    counter: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        Progress {
            mode,
            multi: MultiProgress::new(),
        }
    }

    /// Starts watching one tenant's dump; the returned counter goes to the core.
    pub fn watch(&self, label: &str) -> Watch {
        let counter = Arc::new(AtomicU64::new(0));
        match self.mode {
            ProgressMode::Off => Watch {
                counter,
                bar: None,
                ticker: None,
            },
            ProgressMode::Bar => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:.bold} {bytes} dumped ({bytes_per_sec}) {elapsed}")
                        .expect("valid progress template"),
                );
                bar.set_prefix(label.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                let (c, b) = (counter.clone(), bar.clone());
                let ticker = tokio::spawn(async move {
                    loop {
                        b.set_position(c.load(Ordering::Relaxed));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                Watch {
                    counter,
                    bar: Some(bar),
                    ticker: Some(ticker),
                }
            }
            ProgressMode::Lines => {
                let (c, label) = (counter.clone(), label.to_string());
                let ticker = tokio::spawn(async move {
                    let start = Instant::now();
                    loop {
                        tokio::time::sleep(LINE_EVERY).await;
                        let bytes = c.load(Ordering::Relaxed);
                        let rate = bytes as f64 / start.elapsed().as_secs_f64().max(0.001);
                        tracing::info!("{label}: {} dumped ({}/s)", human_size(bytes), human_size(rate as u64));
                    }
                });
                Watch {
                    counter,
                    bar: None,
                    ticker: Some(ticker),
                }
            }
        }
    }
}

impl Watch {
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
