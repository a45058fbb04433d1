//! Progress on the terminal: an indicatif bar when stderr is a terminal, a log line every few
//! seconds otherwise (cron), nothing when asked. The core only bumps a counter ([`ProgressSink`]);
//! this watches it. Log lines and bars share one [`MultiProgress`], so they never tear each other
//! (see `app::logging`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

use crate::app::output::{human_size, ProgressMode};
use crate::progress::{ProgressSink, Tracker};

const LINE_EVERY: Duration = Duration::from_secs(5);

/// The one set of bars of this process; the log writer draws around it.
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

pub struct Progress {
    mode: ProgressMode,
}

/// What keeps one display going; dropping it stops the ticker and clears the bar.
struct Display {
    bar: Option<ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Display {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        Progress { mode }
    }
}

impl ProgressSink for Progress {
    /// `what` says what the bytes are ("dumped", "restored").
    fn start(&self, label: &str, what: &str, total: Option<u64>) -> Tracker {
        let counter = Arc::new(AtomicU64::new(0));
        let display = match self.mode {
            ProgressMode::Off => None,
            ProgressMode::Bar => {
                // Sizes in the application's units (`245.67 KB`), as in every table and log line.
                let template = match total {
                    Some(_) => format!(
                        "{{spinner}} {{prefix:.bold}} [{{bar:30}}] {{done}} of {{total}} {what} ({{rate}}, {{eta}} left)"
                    ),
                    None => format!("{{spinner}} {{prefix:.bold}} {{done}} {what} ({{rate}}) {{elapsed}}"),
                };
                let bar = match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::new_spinner(),
                };
                let bar = bars().add(bar);
                bar.set_style(
                    ProgressStyle::with_template(&template)
                        .expect("valid progress template")
                        .with_key("done", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = w.write_str(&human_size(s.pos()));
                        })
                        .with_key("total", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = w.write_str(&human_size(s.len().unwrap_or(0)));
                        })
                        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{}/s", human_size(s.per_sec() as u64));
                        })
                        .progress_chars("=> "),
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
                Some(Display { bar: Some(bar), ticker })
            }
            ProgressMode::Lines => {
                let (c, label, what) = (counter.clone(), label.to_string(), what.to_string());
                let ticker = tokio::spawn(async move {
                    let start = Instant::now();
                    loop {
                        tokio::time::sleep(LINE_EVERY).await;
                        let bytes = c.load(Ordering::Relaxed);
                        let rate = bytes as f64 / start.elapsed().as_secs_f64().max(0.001);
                        let of = total.map(|t| format!(" of {}", human_size(t))).unwrap_or_default();
                        tracing::info!(
                            "{label}: {}{of} {what} ({}/s)",
                            human_size(bytes),
                            human_size(rate as u64)
                        );
                    }
                });
                Some(Display { bar: None, ticker })
            }
        };
        Tracker::new(counter, display.map(|d| Box::new(d) as Box<dyn std::any::Any + Send>))
    }
}
