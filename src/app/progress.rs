//! Progress on the terminal: an indicatif bar when stderr is a terminal, a log line every few
//! seconds otherwise (cron), nothing when asked. The core only bumps a counter ([`ProgressSink`]);
//! this watches it. Log lines and bars share one [`MultiProgress`], so they never tear each other
//! (see `app::logging`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

use crate::app::output::human_size;
use crate::progress::{ProgressSink, Tracker};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif bar (stderr is a terminal).
    Bar,
    /// A plain line every few seconds (cron, logs).
    Lines,
    #[default]
    Off,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, periodic lines otherwise, nothing when `off`.
    pub fn for_stderr(off: bool) -> Self {
        use std::io::IsTerminal;
        if off {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        }
    }
}

const LINE_EVERY: Duration = Duration::from_secs(5);

/// The one set of bars of this process; the log writer draws around it.
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

pub struct Progress {
    mode: ProgressMode,
}

/// What keeps one display going; dropping it stops the ticker and clears the bar. The ticker is a
/// thread of its own, so a display can be started anywhere (a blocking restore, a task).
struct Display {
    bar: Option<ProgressBar>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    /// Calls `tick` every `every` until the display is dropped.
    fn ticking(bar: Option<ProgressBar>, every: Duration, mut tick: impl FnMut() + Send + 'static) -> Display {
        let (stop, stopped) = mpsc::channel::<()>();
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    tick();
                }
            })
            .ok();
        Display {
            bar,
            stop: Some(stop),
            ticker,
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
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
                Some(Display::ticking(Some(bar), Duration::from_millis(200), move || {
                    b.set_position(c.load(Ordering::Relaxed))
                }))
            }
            ProgressMode::Lines => {
                let (c, label, what) = (counter.clone(), label.to_string(), what.to_string());
                let start = Instant::now();
                Some(Display::ticking(None, LINE_EVERY, move || {
                    let bytes = c.load(Ordering::Relaxed);
                    let rate = bytes as f64 / start.elapsed().as_secs_f64().max(0.001);
                    let of = total.map(|t| format!(" of {}", human_size(t))).unwrap_or_default();
                    let eta = match total {
                        Some(t) if rate >= 1.0 && t > bytes => {
                            format!(", about {} s left", ((t - bytes) as f64 / rate).ceil() as u64)
                        }
                        _ => String::new(),
                    };
                    tracing::info!(
                        "{label}: {}{of} {what} ({}/s{eta})",
                        human_size(bytes),
                        human_size(rate as u64)
                    );
                }))
            }
        };
        Tracker::new(counter, display.map(|d| Box::new(d) as Box<dyn std::any::Any + Send>))
    }
}
