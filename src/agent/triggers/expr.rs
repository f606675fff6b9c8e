//! EventBridge Scheduler's schedule expressions: `rate(N unit)`, `cron(...)` (six fields) and
//! `at(yyyy-mm-ddThh:mm:ss)`, with their time zone, and the next time each fires. Pure: the
//! scheduler asks for "the first run after this instant".
//!
//! Cron fields: minutes (0-59), hours (0-23), day of month (1-31), month (1-12 or JAN-DEC), day
//! of week (1-7 or SUN-SAT, 1 is Sunday) and year (1970-2199), each `*`, a value, a range
//! `a-b`, a step `*/n` or `a-b/n` or `a/n`, or a comma list of those; exactly one of day of
//! month and day of week is `?`. `L`, `W` and `#` are refused by name.

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// Why an expression was refused (the message is the `ValidationException`'s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid Schedule Expression {expr}: {why}")]
pub struct ExprError {
    expr: String,
    why: String,
}

fn err(expr: &str, why: impl Into<String>) -> ExprError {
    ExprError { expr: expr.to_owned(), why: why.into() }
}

/// A set of values of one cron field, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field(u64);

impl Field {
    fn has(self, v: u32) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }
}

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Field,
    hours: Field,
    /// `None`: `?`.
    days: Option<Field>,
    months: Field,
    /// `None`: `?`. 1 is Sunday.
    weekdays: Option<Field>,
    /// Years as offsets from 1970 (up to 2199), in four masks.
    years: [Field; 4],
}

/// A schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Every so many seconds, from the schedule's start.
    Rate(u64),
    /// At the times the fields match, in the schedule's time zone.
    Cron(Box<Cron>),
    /// Once, at this local time in the schedule's time zone.
    At(NaiveDateTime),
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One value of a field: a number or, for months and weekdays, a name.
fn value(s: &str, names: &[&str], first: u32) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    names.iter().position(|n| n.eq_ignore_ascii_case(s)).map(|i| i as u32 + first)
}

/// Parses one field over `min..=max` into a mask (bit `v - base`).
fn field(expr: &str, text: &str, what: &str, min: u32, max: u32, names: &[&str], base: u32) -> Result<u64, ExprError> {
    let mut mask = 0u64;
    for item in text.split(',') {
        let digits_then = |c: char| item.len() > 1 && item.as_bytes()[0].is_ascii_digit() && item.ends_with(c);
        if item.contains('#') || item == "L" || item == "LW" || digits_then('L') || digits_then('W') {
            return Err(err(expr, format!("the {what} field's {item}: L, W and # are not supported by this host")));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step = s
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| err(expr, format!("bad step in {item}")))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, names, min).ok_or_else(|| err(expr, format!("bad {what} {item}")))?;
            let b = value(b, names, min).ok_or_else(|| err(expr, format!("bad {what} {item}")))?;
            (a, b)
        } else {
            let v = value(range, names, min).ok_or_else(|| err(expr, format!("bad {what} {item}")))?;
            (v, if item.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(err(expr, format!("the {what} field must be within {min}-{max}: {item}")));
        }
        let mut v = lo;
        while v <= hi {
            mask |= 1 << (v - base);
            v += step;
        }
    }
    Ok(mask)
}

fn parse_cron(expr: &str, body: &str) -> Result<Cron, ExprError> {
    let f: Vec<&str> = body.split_whitespace().collect();
    let [min, hour, dom, month, dow, year] = f.as_slice() else {
        return Err(err(expr, "a cron expression has six fields: minutes hours day-of-month month day-of-week year"));
    };
    let days = match *dom {
        "?" => None,
        d => Some(Field(field(expr, d, "day-of-month", 1, 31, &[], 0)?)),
    };
    let weekdays = match *dow {
        "?" => None,
        d => Some(Field(field(expr, d, "day-of-week", 1, 7, &WEEKDAYS, 0)?)),
    };
    if days.is_some() == weekdays.is_some() {
        return Err(err(expr, "exactly one of day-of-month and day-of-week must be ?"));
    }
    // Years 1970..=2199 in four masks of 60.
    let mut years = [Field(0); 4];
    for (i, y) in years.iter_mut().enumerate() {
        let lo = 1970 + 60 * i as u32;
        for item in year.split(',') {
            y.0 |= field_range(expr, item, lo, (lo + 59).min(2199))?;
        }
    }
    Ok(Cron {
        minutes: Field(field(expr, min, "minutes", 0, 59, &[], 0)?),
        hours: Field(field(expr, hour, "hours", 0, 23, &[], 0)?),
        days,
        months: Field(field(expr, month, "month", 1, 12, &MONTHS, 0)?),
        weekdays,
        years,
    })
}

/// The years of one year item that fall in `lo..=hi`, as a mask from `lo`.
fn field_range(expr: &str, item: &str, lo: u32, hi: u32) -> Result<u64, ExprError> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s >= 1).ok_or_else(|| err(expr, "bad year step"))?),
        None => (item, 1),
    };
    let (a, b) = if range == "*" {
        (1970, 2199)
    } else if let Some((a, b)) = range.split_once('-') {
        (a.parse().map_err(|_| err(expr, "bad year"))?, b.parse().map_err(|_| err(expr, "bad year"))?)
    } else {
        let v: u32 = range.parse().map_err(|_| err(expr, "bad year"))?;
        (v, if item.contains('/') { 2199 } else { v })
    };
    if a < 1970 || b > 2199 || a > b {
        return Err(err(expr, format!("the year field must be within 1970-2199: {item}")));
    }
    let mut mask = 0;
    let mut v = a;
    while v <= b {
        if (lo..=hi).contains(&v) {
            mask |= 1 << (v - lo);
        }
        v += step;
    }
    Ok(mask)
}

/// Parses a schedule expression.
pub fn parse(expr: &str) -> Result<Expr, ExprError> {
    let inner = |prefix: &str| expr.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
    if let Some(body) = inner("rate(") {
        let (n, unit) = body.trim().split_once(' ').ok_or_else(|| err(expr, "rate(value unit)"))?;
        let n: u64 =
            n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| err(expr, "the rate must be a whole number, 1 up"))?;
        let secs = match unit.trim() {
            "minute" | "minutes" => 60,
            "hour" | "hours" => 3600,
            "day" | "days" => 86_400,
            other => return Err(err(expr, format!("unit {other}: minutes, hours or days"))),
        };
        return Ok(Expr::Rate(n * secs));
    }
    if let Some(body) = inner("cron(") {
        return Ok(Expr::Cron(Box::new(parse_cron(expr, body)?)));
    }
    if let Some(body) = inner("at(") {
        let at = NaiveDateTime::parse_from_str(body.trim(), "%Y-%m-%dT%H:%M:%S")
            .map_err(|e| err(expr, format!("at(yyyy-mm-ddThh:mm:ss): {e}")))?;
        return Ok(Expr::At(at));
    }
    Err(err(expr, "expected rate(...), cron(...) or at(...)"))
}

/// Parses a time zone (`ScheduleExpressionTimezone`): an IANA name, `UTC` by default.
pub fn time_zone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None | Some("") => Ok(Tz::UTC),
        Some(n) => n.parse::<Tz>().map_err(|_| format!("Invalid ScheduleExpressionTimezone: {n}")),
    }
}

/// A local time in `tz` as Unix ms: the earlier of two at a DST overlap, none in a gap.
fn to_ms(tz: Tz, local: NaiveDateTime) -> Option<u64> {
    tz.from_local_datetime(&local).earliest().and_then(|t| u64::try_from(t.timestamp_millis()).ok())
}

impl Cron {
    fn day_matches(&self, d: NaiveDate) -> bool {
        let y = d.year() as u32;
        if !(1970..=2199).contains(&y) || !self.years[((y - 1970) / 60) as usize].has((y - 1970) % 60) {
            return false;
        }
        if !self.months.has(d.month()) {
            return false;
        }
        match (self.days, self.weekdays) {
            (Some(days), _) => days.has(d.day()),
            (None, Some(w)) => w.has(d.weekday().num_days_from_sunday() + 1),
            (None, None) => true,
        }
    }

    /// The first time strictly after `after_ms` (looking up to five years ahead).
    fn next(&self, tz: Tz, after_ms: u64) -> Option<u64> {
        let after = tz.timestamp_millis_opt(after_ms as i64).single()?.naive_local();
        let mut day = after.date();
        for _ in 0..(5 * 366) {
            if self.day_matches(day) {
                for h in (0..24).filter(|h| self.hours.has(*h)) {
                    for m in (0..60).filter(|m| self.minutes.has(*m)) {
                        let local = day.and_hms_opt(h, m, 0)?;
                        if let Some(ms) = to_ms(tz, local).filter(|ms| *ms > after_ms) {
                            return Some(ms);
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

/// The first time an expression fires strictly after `after_ms`, for a schedule whose rate is
/// counted from `anchor_ms` (its start date, or its creation); `None` if it never will.
pub fn next_after(expr: &Expr, tz: Tz, anchor_ms: u64, after_ms: u64) -> Option<u64> {
    match expr {
        Expr::Rate(secs) => {
            let period = secs * 1000;
            if after_ms < anchor_ms {
                return Some(anchor_ms);
            }
            Some(anchor_ms + ((after_ms - anchor_ms) / period + 1) * period)
        }
        Expr::Cron(c) => c.next(tz, after_ms),
        Expr::At(local) => to_ms(tz, *local).filter(|ms| *ms > after_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap().and_utc().timestamp_millis() as u64
    }

    fn next(expr: &str, tz: &str, after: &str) -> Option<u64> {
        next_after(&parse(expr).unwrap(), time_zone(Some(tz)).unwrap(), 0, ms(after))
    }

    #[test]
    fn rates_count_from_their_anchor() {
        let r = parse("rate(5 minutes)").unwrap();
        assert_eq!(r, Expr::Rate(300));
        assert_eq!(parse("rate(1 minute)").unwrap(), Expr::Rate(60));
        assert_eq!(parse("rate(2 days)").unwrap(), Expr::Rate(172_800));
        let anchor = ms("2026-12-03T10:00:00");
        assert_eq!(next_after(&r, Tz::UTC, anchor, anchor), Some(anchor + 300_000));
        assert_eq!(next_after(&r, Tz::UTC, anchor, anchor + 299_999), Some(anchor + 300_000));
        assert_eq!(next_after(&r, Tz::UTC, anchor, anchor + 300_000), Some(anchor + 600_000));
        assert_eq!(next_after(&r, Tz::UTC, anchor, anchor - 5), Some(anchor), "a start date ahead");
        for bad in ["rate(0 minutes)", "rate(5 seconds)", "rate(five minutes)", "rate(5)", "every 5 minutes"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_fields_as_eventbridge_reads_them() {
        // 10:15 UTC every day.
        assert_eq!(next("cron(15 10 * * ? *)", "UTC", "2026-12-03T10:15:00"), Some(ms("2026-12-04T10:15:00")));
        assert_eq!(next("cron(15 10 * * ? *)", "UTC", "2026-12-03T10:14:59"), Some(ms("2026-12-03T10:15:00")));
        // Every 15 minutes on weekdays (2-6 is MON-FRI): 2026-12-05 is a Saturday.
        assert_eq!(next("cron(0/15 * ? * MON-FRI *)", "UTC", "2026-12-04T23:50:00"), Some(ms("2026-12-07T00:00:00")));
        assert_eq!(next("cron(0/15 * ? * 2-6 *)", "UTC", "2026-12-03T10:01:00"), Some(ms("2026-12-03T10:15:00")));
        // The first of the month at noon, in a zone: New York is UTC-5 in December.
        assert_eq!(
            next("cron(0 12 1 * ? *)", "America/New_York", "2026-12-03T00:00:00"),
            Some(ms("2027-01-01T17:00:00"))
        );
        // Lists, names and years.
        assert_eq!(next("cron(0 8 ? JAN,JUL SUN 2027)", "UTC", "2026-12-03T00:00:00"), Some(ms("2027-01-03T08:00:00")));
        assert_eq!(next("cron(0 8 1 1 ? 2025)", "UTC", "2026-12-03T00:00:00"), None);
        for bad in [
            "cron(0 8 * * * *)",
            "cron(0 8 ? * ? *)",
            "cron(0 8 L * ? *)",
            "cron(0 8 ? * 6#3 *)",
            "cron(60 8 * * ? *)",
            "cron(0 8 * * ?)",
            "cron(0 8 32 * ? *)",
            "cron(0 8 * 13 ? *)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn at_fires_once_in_its_zone() {
        let at = parse("at(2026-12-03T12:00:00)").unwrap();
        let berlin = time_zone(Some("Europe/Berlin")).unwrap();
        assert_eq!(next_after(&at, berlin, 0, ms("2026-12-03T10:00:00")), Some(ms("2026-12-03T11:00:00")));
        assert_eq!(next_after(&at, berlin, 0, ms("2026-12-03T11:00:00")), None);
        assert!(parse("at(2026-12-03 12:00)").is_err());
        assert!(time_zone(Some("Mars/Olympus")).is_err());
        assert_eq!(time_zone(None).unwrap(), Tz::UTC);
    }
}
