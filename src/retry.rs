//! The one retry policy for every transient failure (a dropped connection, a restarting server, a
//! storage API's 429 or 5xx): capped exponential backoff with jitter, from `backon`.

use std::time::Duration;

use backon::ExponentialBuilder;

/// 0.5 s, 1 s, 2 s, … capped at 10 s, each stretched by up to 100 % of jitter; `retries` attempts
/// after the first.
pub fn backoff(retries: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
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
