//! When is a tenant due? Exactly the application's rules, as a pure function of (tenant row, now):
//!
//! * `daily`: due when `last_backup_at` is NULL or its UTC date is before today's.
//! * `weekly`: due on Sundays (UTC) when `last_backup_at` is NULL or its date is before today's.
//! * `scheduled`: due when `next_scheduled_backup <= now`.
//! * `disabled`, anything else, and the `public` row: never.
//!
//! With a local hour (`--daily-at 03:00 --timezone Europe/Madrid`), daily and weekly backups wait for
//! that local time: the tenant is due once its last backup is older than the latest such moment
//! (weekly: the latest one on a local Sunday, and only on that Sunday).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::Serialize;

use crate::error::UsageError;
use crate::pg::catalog::{Schedule, Tenant};

/// An optional local time of day for daily and weekly backups.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScheduleOptions {
    pub daily_at: Option<(NaiveTime, Tz)>,
}

impl ScheduleOptions {
    /// From `--daily-at HH:MM` and `--timezone Area/City` (UTC when no time zone is given).
    pub fn parse(daily_at: Option<&str>, timezone: Option<&str>) -> Result<Self, UsageError> {
        let tz = match timezone {
            Some(name) => Some(name.parse::<Tz>().map_err(|_| {
                UsageError::new(format!(
                    "--timezone / BACKUP_TIMEZONE {name:?} is not a time zone: use an IANA name such as Europe/Madrid or America/Bogota"
                ))
            })?),
            None => None,
        };
        let Some(raw) = daily_at else {
            if tz.is_some() {
                return Err(UsageError::new(
                    "--timezone needs --daily-at HH:MM (or BACKUP_DAILY_AT)",
                ));
            }
            return Ok(ScheduleOptions::default());
        };
        let time = NaiveTime::parse_from_str(raw.trim(), "%H:%M").map_err(|_| {
            UsageError::new(format!(
                "--daily-at / BACKUP_DAILY_AT {raw:?} is not a time: use HH:MM, e.g. 03:00"
            ))
        })?;
        Ok(ScheduleOptions {
            daily_at: Some((time, tz.unwrap_or(Tz::UTC))),
        })
    }
}

impl ScheduleOptions {
    /// The time zone of `--daily-at` (UTC without one).
    pub fn timezone(&self) -> Tz {
        self.daily_at.map(|(_, tz)| tz).unwrap_or(Tz::UTC)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "due", content = "reason")]
pub enum Decision {
    Due(String),
    NotDue(String),
}

impl Decision {
    pub fn is_due(&self) -> bool {
        matches!(self, Decision::Due(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::Due(r) | Decision::NotDue(r) => r,
        }
    }
}

pub fn is_due(tenant: &Tenant, now: DateTime<Utc>, opts: &ScheduleOptions) -> Decision {
    if tenant.schema_name == "public" {
        return Decision::NotDue("public is not a tenant".into());
    }
    match &tenant.backup_schedule {
        Schedule::Daily => periodic(tenant.last_backup_at, now, opts, false),
        Schedule::Weekly => periodic(tenant.last_backup_at, now, opts, true),
        Schedule::Scheduled => match tenant.next_scheduled_backup {
            Some(at) if at <= now => Decision::Due(format!("scheduled for {}", at.format("%Y-%m-%d %H:%M UTC"))),
            Some(at) => Decision::NotDue(format!("scheduled for {}", at.format("%Y-%m-%d %H:%M UTC"))),
            None => Decision::NotDue("scheduled, but no time is set".into()),
        },
        Schedule::Disabled => Decision::NotDue("backups disabled".into()),
        Schedule::Other(other) => Decision::NotDue(format!("unknown schedule {other:?}")),
    }
}

fn periodic(last: Option<DateTime<Utc>>, now: DateTime<Utc>, opts: &ScheduleOptions, weekly: bool) -> Decision {
    let what = if weekly { "weekly" } else { "daily" };
    let Some((time, tz)) = opts.daily_at else {
        // The application's rule: UTC dates.
        let today = now.date_naive();
        if weekly && today.weekday() != Weekday::Sun {
            return Decision::NotDue("weekly, and today is not Sunday (UTC)".into());
        }
        return match last {
            None => Decision::Due(format!("{what}, never backed up")),
            Some(l) if l.date_naive() < today => Decision::Due(format!("{what}, last backup {}", l.format("%Y-%m-%d"))),
            Some(_) => Decision::NotDue(format!("{what}, already backed up today (UTC)")),
        };
    };
    let local_today = now.with_timezone(&tz).date_naive();
    if weekly && local_today.weekday() != Weekday::Sun {
        return Decision::NotDue(format!("weekly, and today is not Sunday ({tz})"));
    }
    let today_slot = slot(local_today, time, tz);
    let slot = if today_slot <= now {
        today_slot
    } else if weekly {
        return Decision::NotDue(format!("weekly, waiting for {} {tz}", time.format("%H:%M")));
    } else {
        slot(local_today - Duration::days(1), time, tz)
    };
    match last {
        None if today_slot > now => Decision::NotDue(format!("{what}, waiting for {} {tz}", time.format("%H:%M"))),
        None => Decision::Due(format!("{what}, never backed up")),
        Some(l) if l < slot => Decision::Due(format!(
            "{what} at {} {tz}, last backup {}",
            time.format("%H:%M"),
            l.format("%Y-%m-%d %H:%M UTC")
        )),
        Some(_) if today_slot > now => Decision::NotDue(format!("{what}, waiting for {} {tz}", time.format("%H:%M"))),
        Some(_) => Decision::NotDue(format!("{what}, already backed up since {} {tz}", time.format("%H:%M"))),
    }
}

/// The instant `time` happens on local `date` in `tz`. On a DST gap (02:30 that never happens) it is
/// the first moment after the gap; on an overlap (01:30 twice) the first of the two.
pub fn slot(date: NaiveDate, time: NaiveTime, tz: Tz) -> DateTime<Utc> {
    let naive = date.and_time(time);
    if let Some(t) = tz.from_local_datetime(&naive).earliest() {
        return t.with_timezone(&Utc);
    }
    // Inside a gap: step forward minute by minute until local time exists again (gaps are < 3 h).
    (1..=180)
        .find_map(|m| tz.from_local_datetime(&(naive + Duration::minutes(m))).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

/// When the tenant will next be due, if ever (for `status`).
pub fn next_due(tenant: &Tenant, now: DateTime<Utc>, opts: &ScheduleOptions) -> Option<DateTime<Utc>> {
    if is_due(tenant, now, opts).is_due() {
        return Some(now);
    }
    match tenant.backup_schedule {
        Schedule::Scheduled => tenant.next_scheduled_backup,
        Schedule::Daily | Schedule::Weekly => {
            // The first later moment at which is_due flips: check each candidate day boundary/slot.
            let weekly = tenant.backup_schedule == Schedule::Weekly;
            (1..=8).find_map(|d| {
                let at = match opts.daily_at {
                    None => (now.date_naive() + Duration::days(d)).and_hms_opt(0, 0, 0)?.and_utc(),
                    Some((time, tz)) => {
                        let local_today = now.with_timezone(&tz).date_naive();
                        // Today's slot may still be ahead.
                        let today = slot(local_today, time, tz);
                        if d == 1 && today > now && (!weekly || local_today.weekday() == Weekday::Sun) {
                            return Some(today);
                        }
                        slot(local_today + Duration::days(d), time, tz)
                    }
                };
                is_due(tenant, at, opts).is_due().then_some(at)
            })
        }
        _ => None,
    }
}

/// How long a due daily or weekly backup may wait for the tick before `status` calls the tenant
/// overdue (a fleet's nightly run takes a while), and a one-shot scheduled backup.
pub const OVERDUE_AFTER: Duration = Duration::hours(3);
pub const SCHEDULED_OVERDUE_AFTER: Duration = Duration::minutes(10);

/// `status`'s verdict, asked with the tick's own rule ([`is_due`]) and the tick's own input
/// (`last_backup_at`): a tenant is overdue when a due period began at least [`OVERDUE_AFTER`] ago
/// and no automatic backup has happened since. A tenant never backed up is overdue only once it has
/// been due that long in its current period: a weekly tenant added on a Wednesday is not overdue
/// before its first Sunday.
pub fn overdue(tenant: &Tenant, now: DateTime<Utc>, opts: &ScheduleOptions) -> bool {
    let weekly = match tenant.backup_schedule {
        Schedule::Daily => false,
        Schedule::Weekly => true,
        Schedule::Scheduled => {
            return tenant
                .next_scheduled_backup
                .is_some_and(|at| now - at > SCHEDULED_OVERDUE_AFTER)
        }
        Schedule::Disabled | Schedule::Other(_) => return false,
    };
    let then = now - OVERDUE_AFTER;
    match tenant.last_backup_at {
        None => {
            is_due(tenant, now, opts).is_due()
                && latest_period_start(now, weekly, opts).is_some_and(|start| start <= then)
        }
        Some(last) => latest_period_start(then, weekly, opts).is_some_and(|start| last < start),
    }
}

/// The latest moment at or before `t` at which a daily (or weekly) period begins: midnight UTC (of a
/// Sunday), or the `--daily-at` local time (on a local Sunday).
fn latest_period_start(t: DateTime<Utc>, weekly: bool, opts: &ScheduleOptions) -> Option<DateTime<Utc>> {
    (0..=7).find_map(|back| match opts.daily_at {
        None => {
            let day = t.date_naive() - Duration::days(back);
            let start = day.and_hms_opt(0, 0, 0)?.and_utc();
            (start <= t && (!weekly || day.weekday() == Weekday::Sun)).then_some(start)
        }
        Some((time, tz)) => {
            let day = t.with_timezone(&tz).date_naive() - Duration::days(back);
            let start = slot(day, time, tz);
            (start <= t && (!weekly || day.weekday() == Weekday::Sun)).then_some(start)
        }
    })
}

/// What `schedule` sets: `daily`, `weekly`, `disabled`, or `at <RFC 3339 time>` (in the future).
pub fn parse_setting(words: &[String], now: DateTime<Utc>) -> Result<(Schedule, Option<DateTime<Utc>>), UsageError> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["daily"] => Ok((Schedule::Daily, None)),
        ["weekly"] => Ok((Schedule::Weekly, None)),
        ["disabled"] => Ok((Schedule::Disabled, None)),
        ["at", when] => {
            let at = DateTime::parse_from_rfc3339(when)
                .map_err(|_| {
                    UsageError::new(format!(
                        "{when:?} is not an RFC 3339 time: use e.g. 2026-12-01T03:00:00Z or 2026-12-01T03:00:00+01:00"
                    ))
                })?
                .with_timezone(&Utc);
            if at <= now {
                return Err(UsageError::new(format!(
                    "{when} is in the past: give a time after {}",
                    now.format("%Y-%m-%dT%H:%M:%SZ")
                )));
            }
            Ok((Schedule::Scheduled, Some(at)))
        }
        ["at"] => Err(UsageError::new(
            "`at` needs a time: schedule --tenant S at 2026-12-01T03:00:00Z",
        )),
        _ => Err(UsageError::new(format!(
            "unknown schedule {:?}: use daily, weekly, disabled, or at <RFC 3339 time>",
            words.join(" ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_schedules() {
        let now = "2026-11-22T12:00:00Z".parse().unwrap();
        assert_eq!(parse_setting(&w("daily"), now).unwrap(), (Schedule::Daily, None));
        let (s, at) = parse_setting(&w("at 2026-11-23T03:00:00+01:00"), now).unwrap();
        assert_eq!(
            (s, at.unwrap().to_rfc3339()),
            (Schedule::Scheduled, "2026-11-23T02:00:00+00:00".into())
        );
        for bad in [
            "hourly",
            "at",
            "at yesterday",
            "at 2026-11-22T11:59:59Z",
            "daily weekly",
        ] {
            assert!(parse_setting(&w(bad), now).is_err(), "{bad}");
        }
    }

    fn t(schedule: &str, last: Option<&str>, next: Option<&str>) -> Tenant {
        Tenant {
            id: 1,
            schema_name: "bienestar".into(),
            name: "B".into(),
            backup_schedule: Schedule::from_db(schedule),
            last_backup_at: last.map(at),
            next_scheduled_backup: next.map(at),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const UTC_RULES: ScheduleOptions = ScheduleOptions { daily_at: None };

    #[test]
    fn daily_uses_utc_dates() {
        let now = at("2026-11-22T00:00:30Z");
        assert!(is_due(&t("daily", None, None), now, &UTC_RULES).is_due());
        // One minute before midnight yesterday: a different date, so due.
        assert!(is_due(&t("daily", Some("2026-11-21T23:59:00Z"), None), now, &UTC_RULES).is_due());
        assert!(!is_due(&t("daily", Some("2026-11-22T00:00:01Z"), None), now, &UTC_RULES).is_due());
        // A backup "from the future" (clock skew) is not a reason to back up again.
        assert!(!is_due(&t("daily", Some("2026-11-23T01:00:00Z"), None), now, &UTC_RULES).is_due());
    }

    #[test]
    fn weekly_only_on_sundays() {
        let sunday = at("2026-11-22T10:00:00Z");
        let saturday = at("2026-11-21T23:59:59Z");
        assert_eq!(sunday.weekday(), Weekday::Sun);
        assert!(is_due(&t("weekly", None, None), sunday, &UTC_RULES).is_due());
        assert!(!is_due(&t("weekly", None, None), saturday, &UTC_RULES).is_due());
        assert!(is_due(&t("weekly", Some("2026-11-15T03:00:00Z"), None), sunday, &UTC_RULES).is_due());
        assert!(!is_due(&t("weekly", Some("2026-11-22T00:10:00Z"), None), sunday, &UTC_RULES).is_due());
    }

    #[test]
    fn scheduled_is_due_when_its_time_has_come() {
        let now = at("2026-11-22T12:00:00Z");
        assert!(is_due(&t("scheduled", None, Some("2026-11-22T12:00:00Z")), now, &UTC_RULES).is_due());
        assert!(!is_due(&t("scheduled", None, Some("2026-11-22T12:00:01Z")), now, &UTC_RULES).is_due());
        assert!(!is_due(&t("scheduled", None, None), now, &UTC_RULES).is_due());
    }

    #[test]
    fn disabled_unknown_and_public_never() {
        let now = at("2026-11-22T12:00:00Z");
        assert!(!is_due(&t("disabled", None, None), now, &UTC_RULES).is_due());
        assert!(!is_due(&t("DAILY", None, None), now, &UTC_RULES).is_due());
        assert!(!is_due(&t("", None, None), now, &UTC_RULES).is_due());
        let mut public = t("daily", None, None);
        public.schema_name = "public".into();
        assert!(!is_due(&public, now, &UTC_RULES).is_due());
    }

    #[test]
    fn daily_at_waits_for_the_local_hour() {
        let opts = ScheduleOptions::parse(Some("03:00"), Some("Europe/Madrid")).unwrap();
        // 03:00 in Madrid (winter, UTC+1) is 02:00 UTC.
        let before = at("2026-11-22T01:59:00Z");
        let after = at("2026-11-22T02:00:00Z");
        let last = Some("2026-11-21T02:00:05Z");
        assert!(!is_due(&t("daily", last, None), before, &opts).is_due());
        assert!(is_due(&t("daily", last, None), after, &opts).is_due());
        assert!(!is_due(&t("daily", Some("2026-11-22T02:00:05Z"), None), after, &opts).is_due());
        // A missed day is caught up at once.
        assert!(is_due(&t("daily", Some("2026-11-19T02:00:05Z"), None), before, &opts).is_due());
        // Never backed up: waits for the hour too.
        assert!(!is_due(&t("daily", None, None), before, &opts).is_due());
        assert!(is_due(&t("daily", None, None), after, &opts).is_due());
    }

    #[test]
    fn daily_at_across_dst_changes() {
        let opts = ScheduleOptions::parse(Some("02:30"), Some("Europe/Madrid")).unwrap();
        // 2026-03-29: clocks jump from 02:00 to 03:00 in Madrid; 02:30 does not exist. The slot is
        // 03:00 local = 01:00 UTC.
        assert_eq!(
            slot(
                NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(),
                NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
                Tz::Europe__Madrid
            ),
            at("2026-03-29T01:00:00Z")
        );
        let last = Some("2026-03-28T01:30:00Z");
        assert!(!is_due(&t("daily", last, None), at("2026-03-29T00:59:00Z"), &opts).is_due());
        assert!(is_due(&t("daily", last, None), at("2026-03-29T01:00:00Z"), &opts).is_due());
        // 2026-10-25: 02:30 happens twice; the first (CEST, UTC+2) counts, and only once.
        let first = at("2026-10-25T00:30:00Z");
        assert!(is_due(&t("daily", Some("2026-10-24T00:30:00Z"), None), first, &opts).is_due());
        assert!(!is_due(
            &t("daily", Some("2026-10-25T00:31:00Z"), None),
            at("2026-10-25T01:30:00Z"),
            &opts
        )
        .is_due());
    }

    #[test]
    fn weekly_with_local_hour_uses_the_local_sunday() {
        let opts = ScheduleOptions::parse(Some("01:00"), Some("America/Bogota")).unwrap();
        // Sunday 01:00 in Bogotá (UTC-5) is Sunday 06:00 UTC; Saturday 23:00 local is Sunday 04:00 UTC.
        let last = Some("2026-11-15T06:10:00Z");
        assert!(!is_due(&t("weekly", last, None), at("2026-11-22T04:00:00Z"), &opts).is_due());
        assert!(is_due(&t("weekly", last, None), at("2026-11-22T06:00:00Z"), &opts).is_due());
        // Monday 00:30 UTC is still Sunday evening in Bogotá: still due if missed.
        assert!(is_due(&t("weekly", last, None), at("2026-11-23T00:30:00Z"), &opts).is_due());
    }

    #[test]
    fn options_reject_bad_values() {
        assert!(ScheduleOptions::parse(Some("3am"), None).is_err());
        assert!(ScheduleOptions::parse(Some("25:00"), None).is_err());
        assert!(ScheduleOptions::parse(Some("03:00"), Some("Mars/Olympus")).is_err());
        assert!(ScheduleOptions::parse(None, Some("Europe/Madrid")).is_err());
        assert_eq!(ScheduleOptions::parse(None, None).unwrap(), ScheduleOptions::default());
    }

    #[test]
    fn next_due_and_overdue() {
        let now = at("2026-11-22T12:00:00Z");
        let daily = t("daily", Some("2026-11-22T00:05:00Z"), None);
        assert_eq!(next_due(&daily, now, &UTC_RULES), Some(at("2026-11-23T00:00:00Z")));
        let weekly = t("weekly", Some("2026-11-22T00:05:00Z"), None);
        assert_eq!(next_due(&weekly, now, &UTC_RULES), Some(at("2026-11-29T00:00:00Z")));
        assert_eq!(next_due(&t("disabled", None, None), now, &UTC_RULES), None);
        assert!(!overdue(
            &t("scheduled", None, Some("2026-11-22T11:55:00Z")),
            now,
            &UTC_RULES
        ));
        assert!(overdue(
            &t("scheduled", None, Some("2026-11-22T11:49:00Z")),
            now,
            &UTC_RULES
        ));
        assert!(!overdue(&t("disabled", None, None), now, &UTC_RULES));
    }

    /// `status` and `run-scheduled` read one rule: overdue means the tick has had a due period to
    /// serve for `OVERDUE_AFTER` and has not.
    #[test]
    fn overdue_agrees_with_the_tick() {
        // 2026-11-22 is a Sunday; 2026-11-25 a Wednesday.
        let sunday_noon = at("2026-11-22T12:00:00Z");
        let wednesday = at("2026-11-25T12:00:00Z");
        let daily = |last: Option<&str>| t("daily", last, None);
        let weekly = |last: Option<&str>| t("weekly", last, None);
        // Daily: due since midnight; the tick has had 12 hours.
        assert!(is_due(&daily(Some("2026-11-21T11:00:00Z")), sunday_noon, &UTC_RULES).is_due());
        assert!(overdue(&daily(Some("2026-11-21T11:00:00Z")), sunday_noon, &UTC_RULES));
        assert!(!overdue(&daily(Some("2026-11-22T00:01:00Z")), sunday_noon, &UTC_RULES));
        // ... but not in the first hours of a period.
        assert!(!overdue(
            &daily(Some("2026-11-21T00:01:00Z")),
            at("2026-11-22T02:00:00Z"),
            &UTC_RULES
        ));
        assert!(overdue(&daily(None), sunday_noon, &UTC_RULES));
        assert!(!overdue(&daily(None), at("2026-11-22T01:00:00Z"), &UTC_RULES));
        // Weekly, never backed up: not overdue before its first Sunday, overdue late on a Sunday.
        assert!(!is_due(&weekly(None), wednesday, &UTC_RULES).is_due());
        assert!(!overdue(&weekly(None), wednesday, &UTC_RULES));
        assert!(overdue(&weekly(None), sunday_noon, &UTC_RULES));
        // Weekly, backed up last Sunday: fine all week; a missed Sunday shows all the next week.
        assert!(!overdue(&weekly(Some("2026-11-22T00:02:00Z")), wednesday, &UTC_RULES));
        assert!(overdue(&weekly(Some("2026-11-15T00:02:00Z")), wednesday, &UTC_RULES));
        assert!(!overdue(
            &weekly(Some("2026-11-15T00:02:00Z")),
            at("2026-11-22T01:00:00Z"),
            &UTC_RULES
        ));
        // With a local hour: 03:00 in Madrid is 02:00 UTC in November.
        let madrid = ScheduleOptions::parse(Some("03:00"), Some("Europe/Madrid")).unwrap();
        let d = daily(Some("2026-11-21T02:30:00Z"));
        assert!(!overdue(&d, at("2026-11-22T04:59:00Z"), &madrid));
        assert!(overdue(&d, at("2026-11-22T05:01:00Z"), &madrid));
        assert!(!is_due(&d, at("2026-11-22T01:59:00Z"), &madrid).is_due());
    }
}
