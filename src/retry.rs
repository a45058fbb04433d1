//! The one retry policy for every transient failure (a dropped connection, a restarting server, a
//! storage API's 429 or 5xx): capped exponential backoff with jitter, from `backon`.
//!
//! Its pace is one setting, `BACKUP_RETRY_DELAY_MS` (the first delay; default 500 ms): every delay
//! of every backoff scales with it, the number of attempts never does. The tests set it to a few
//! milliseconds so that the ones that wait out real retries (a server that is not there, a stub
//! answering 503) check the same attempts without sleeping for seconds.

use std::sync::OnceLock;
use std::time::Duration;

use backon::ExponentialBuilder;

use crate::error::UsageError;

/// The environment variable that sets the first retry delay, in milliseconds.
pub const DELAY_ENV: &str = "BACKUP_RETRY_DELAY_MS";

const DEFAULT_FIRST_DELAY: Duration = Duration::from_millis(500);

static FIRST_DELAY: OnceLock<Duration> = OnceLock::new();

/// Reads `BACKUP_RETRY_DELAY_MS` once, at start-up: a value that is not a whole number from 1 to
/// 60000 is a usage error (exit 2) rather than silently the default.
pub fn configure_from_env() -> Result<(), UsageError> {
    let Some(raw) = std::env::var_os(DELAY_ENV) else {
        return Ok(());
    };
    let raw = raw.to_string_lossy();
    let ms: u64 = raw
        .trim()
        .parse()
        .ok()
        .filter(|ms| (1..=60_000).contains(ms))
        .ok_or_else(|| {
            UsageError::new(format!(
                "{DELAY_ENV}={raw:?} is not a whole number of milliseconds from 1 to 60000: fix or unset it (default 500)"
            ))
        })?;
    let _ = FIRST_DELAY.set(Duration::from_millis(ms));
    Ok(())
}

/// A delay written for the default pace (a first retry after 500 ms), at the configured pace.
pub fn scaled(nominal: Duration) -> Duration {
    let first = *FIRST_DELAY.get().unwrap_or(&DEFAULT_FIRST_DELAY);
    nominal.mul_f64(first.as_secs_f64() / DEFAULT_FIRST_DELAY.as_secs_f64())
}

/// 0.5 s, 1 s, 2 s, … capped at 10 s (at the default pace), each stretched by up to 100 % of
/// jitter; `retries` attempts after the first.
pub fn backoff(retries: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(scaled(Duration::from_millis(500)))
        .with_max_delay(scaled(Duration::from_secs(10)))
        .with_factor(2.0)
        .with_max_times(retries as usize)
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn delays_grow_are_capped_and_stop() {
        let delays: Vec<Duration> = backoff(8).build().collect();
        assert_eq!(delays.len(), 8);
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(20)), "{delays:?}");
        assert!(delays[7] >= Duration::from_secs(10));
    }
}
