//! Value parsers: every number and size a flag takes has a range, checked at parse time (exit 2).

/// Every number a flag takes has a range, checked here (exit 2, naming the range), so nothing
/// downstream ever sees a value it could overflow on: a whole number from `lo` to `hi`.
pub(crate) fn in_range<T: TryFrom<i128>>(
    lo: i128,
    hi: i128,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |raw| {
        raw.trim()
            .parse::<i128>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{raw:?} is not a whole number from {lo} to {hi}"))
    }
}

/// Seconds of --lock-timeout: up to a day.
pub(crate) fn lock_timeout() -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    in_range(0, 86_400)
}

/// Days of --days and --pre-restore-days: up to a hundred years.
pub(crate) fn days() -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    in_range(1, 36_500)
}

/// BackupRecord ids are positive.
pub(crate) fn record_id() -> impl Fn(&str) -> Result<i64, String> + Clone + Send + Sync + 'static {
    in_range(1, i64::MAX as i128)
}

/// Tenants at once.
pub(crate) fn concurrency() -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    in_range(1, 64)
}

const SIZE_RANGE: &str = "1 byte to 16 EiB";

/// `500000`, `64K`, `100M`, `2G` (binary multiples).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (num, mult) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?}: use K, M, G or T ({SIZE_RANGE})")),
            };
            (&raw[..i], mult)
        }
        _ => (raw, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a size: use e.g. 500M or 2G ({SIZE_RANGE})"))?;
    if n == 0 {
        return Err(format!("the size must be positive ({SIZE_RANGE})"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("{raw} is too large ({SIZE_RANGE})"))
}
