//! ISO 8601 repeating intervals as Chronos writes them: `R[n]/<start>/<period>`.
//!
//! Fire `k` is `start + k × period`, always computed from the start (so a Jan 31 + `P1M` grid
//! clamps to Feb 28 and returns to Mar 31). Calendar parts of the period (years, months, weeks,
//! days) are added to the start's wall-clock time in the schedule's zone; time parts (`T…`) are
//! absolute durations added after that. `R` repeats forever, `Rn` fires n times, `R0` never.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp};

use super::Fire;

const NANOS_PER_DAY: f64 = 86_400e9;

/// A parsed `R[n]/start/period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IsoSpec {
    /// Fire 0.
    start: Timestamp,
    /// The start as wall-clock time in the schedule's zone, for calendar arithmetic.
    start_wall: DateTime,
    /// Number of fires; `None` repeats forever.
    count: Option<u64>,
    period: Period,
}

/// An ISO 8601 duration: calendar parts plus an absolute time part, none negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    years: i64,
    months: i64,
    weeks: i64,
    days: i64,
    time: SignedDuration,
}

impl Period {
    fn is_calendar(&self) -> bool {
        self.years != 0 || self.months != 0 || self.weeks != 0 || self.days != 0
    }

    /// A rough length in nanoseconds, to guess which fire is near an instant.
    fn approx_nanos(&self) -> f64 {
        let days = self.years as f64 * 365.2425
            + self.months as f64 * 30.436_875
            + self.weeks as f64 * 7.0
            + self.days as f64;
        days * NANOS_PER_DAY + self.time.as_nanos() as f64
    }
}

impl IsoSpec {
    /// Parses `R[n]/start/period`; a start without an offset is wall-clock time in `tz`.
    pub(crate) fn parse(expr: &str, tz: &TimeZone) -> Result<IsoSpec, String> {
        let parts: Vec<&str> = expr.trim().split('/').collect();
        let [repeat, start, period] = parts[..] else {
            return Err(format!(
                "expected R[n]/<start>/<period> with 3 parts separated by '/', found {}; \
                 e.g. R/2026-01-01T00:00:00Z/PT1H",
                parts.len()
            ));
        };
        let count = parse_repeat(repeat)?;
        let start = parse_start(start, tz)?;
        let period = parse_period(period)?;
        Ok(IsoSpec {
            start,
            start_wall: tz.to_datetime(start),
            count,
            period,
        })
    }

    /// Whether the schedule fires a limited number of times.
    pub(crate) fn is_finite(&self) -> bool {
        self.count.is_some()
    }

    /// The next fire strictly after `after`.
    pub(crate) fn next_after(&self, tz: &TimeZone, after: Timestamp) -> Option<Fire> {
        if self.count == Some(0) {
            return None;
        }
        let k = if self.start > after {
            0
        } else if !self.period.is_calendar() {
            // Fixed arithmetic: the first k with start + k·period > after.
            let elapsed = after.as_nanosecond() - self.start.as_nanosecond();
            u64::try_from(elapsed / self.period.time.as_nanos() + 1).ok()?
        } else {
            self.first_calendar_fire_after(tz, after)?
        };
        if self.count.is_some_and(|n| k >= n) {
            return None;
        }
        self.fire(tz, k)
    }

    /// Fire `k`, or `None` past the end of representable time.
    fn fire(&self, tz: &TimeZone, k: u64) -> Option<Fire> {
        if k == 0 {
            return Some(Fire {
                at: self.start,
                dst_adjusted: false,
            });
        }
        let k = i64::try_from(k).ok()?;
        let p = &self.period;
        let (mut at, mut dst_adjusted) = (self.start, false);
        if p.is_calendar() {
            let span = Span::new()
                .try_years(p.years.checked_mul(k)?)
                .ok()?
                .try_months(p.months.checked_mul(k)?)
                .ok()?
                .try_weeks(p.weeks.checked_mul(k)?)
                .ok()?
                .try_days(p.days.checked_mul(k)?)
                .ok()?;
            let wall = self.start_wall.checked_add(span).ok()?;
            let ambiguous = tz.to_ambiguous_timestamp(wall);
            // In a gap the wall time does not exist: run that much later (Joda and Temporal do
            // the same); in a fold take the first occurrence.
            dst_adjusted = matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. });
            at = ambiguous.compatible().ok()?;
        }
        if !p.time.is_zero() {
            let nanos = p.time.as_nanos().checked_mul(i128::from(k))?;
            at = Timestamp::from_nanosecond(at.as_nanosecond().checked_add(nanos)?).ok()?;
        }
        Some(Fire { at, dst_adjusted })
    }

    /// The smallest k ≥ 1 whose fire is after `after` (fire 0 is not): a guess from the
    /// period's average length, then a widening bracket and a bisection. Fires only grow with
    /// k, and the guess is off by at most a step or two, so this is a few fire computations.
    fn first_calendar_fire_after(&self, tz: &TimeZone, after: Timestamp) -> Option<u64> {
        let is_after = |k: u64| self.fire(tz, k).is_none_or(|f| f.at > after);
        let elapsed = (after.as_nanosecond() - self.start.as_nanosecond()) as f64;
        let guess = ((elapsed / self.period.approx_nanos()) as u64).max(1);
        // Invariant: fire(lo) ≤ after < fire(hi), with lo = 0 standing for the start.
        let (mut lo, mut hi);
        if is_after(guess) {
            hi = guess;
            let mut step = 1;
            loop {
                let k = hi.saturating_sub(step);
                if k == 0 || !is_after(k) {
                    lo = k;
                    break;
                }
                hi = k;
                step *= 2;
            }
        } else {
            lo = guess;
            let mut step = 1;
            loop {
                let k = lo.saturating_add(step);
                if is_after(k) {
                    hi = k;
                    break;
                }
                lo = k;
                step = step.saturating_mul(2);
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if is_after(mid) { hi = mid } else { lo = mid }
        }
        Some(hi)
    }
}

/// `R` (forever) or `Rn` (n fires).
fn parse_repeat(text: &str) -> Result<Option<u64>, String> {
    let digits = text.strip_prefix(['R', 'r']).unwrap_or("x");
    if digits.is_empty() {
        return Ok(None);
    }
    match digits.parse::<u64>() {
        Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(format!(
            "repetitions {text:?} must be R (forever) or R followed by a count, e.g. R5"
        )),
    }
}

/// A small cursor over the start text, for precise messages.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek().is_some_and(|b| b.eq_ignore_ascii_case(&byte));
        self.pos += usize::from(hit);
        hit
    }

    /// Exactly `n` digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.text.get(self.pos..self.pos + n)?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.pos += n;
        s.parse().ok()
    }
}

/// `YYYY-MM-DD[Thh:mm[:ss[.fff]]][Z|±hh[:mm]]`. Without an offset the time is wall-clock time
/// in `tz` (in a gap, that much later; in a fold, the first occurrence).
fn parse_start(text: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let malformed = || {
        format!(
            "start {text:?} is not an ISO 8601 date-time; expected \
             YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm], e.g. 2026-01-01T00:00:00Z"
        )
    };
    let range = |what: &str, value: u32, lo: u32, hi: u32| {
        if (lo..=hi).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "start {text:?}: {what} {value} is out of range ({lo}-{hi})"
            ))
        }
    };
    let mut c = Cursor { text, pos: 0 };
    let year = c.digits(4).ok_or_else(malformed)?;
    if !c.eat(b'-') {
        return Err(malformed());
    }
    let month = range("month", c.digits(2).ok_or_else(malformed)?, 1, 12)?;
    if !c.eat(b'-') {
        return Err(malformed());
    }
    let day = c.digits(2).ok_or_else(malformed)?;
    let len = u32::from(super::cron::days_in_month(year as i32, month as u8));
    if !(1..=len).contains(&day) {
        return Err(format!(
            "start {text:?}: day {day} is out of range for {year:04}-{month:02} (1-{len})"
        ));
    }
    let (mut hour, mut minute, mut second, mut nanos) = (0, 0, 0, 0);
    if c.eat(b'T') {
        hour = range("hour", c.digits(2).ok_or_else(malformed)?, 0, 23)?;
        if !c.eat(b':') {
            return Err(malformed());
        }
        minute = range("minute", c.digits(2).ok_or_else(malformed)?, 0, 59)?;
        if c.eat(b':') {
            second = range("second", c.digits(2).ok_or_else(malformed)?, 0, 59)?;
            if c.eat(b'.') || c.eat(b',') {
                let frac: String = text[c.pos..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if frac.is_empty() || frac.len() > 9 {
                    return Err(format!(
                        "start {text:?}: fractional seconds need 1 to 9 digits"
                    ));
                }
                c.pos += frac.len();
                nanos = format!("{frac:0<9}").parse().map_err(|_| malformed())?;
            }
        }
    }
    let offset = if c.eat(b'Z') {
        Some(Offset::UTC)
    } else if let Some(sign @ (b'+' | b'-')) = c.peek() {
        c.pos += 1;
        let hours = range("offset hour", c.digits(2).ok_or_else(malformed)?, 0, 23)?;
        let minutes = if c.eat(b':') {
            c.digits(2).ok_or_else(malformed)?
        } else {
            c.digits(2).unwrap_or(0)
        };
        let minutes = range("offset minute", minutes, 0, 59)?;
        let seconds = (hours * 3600 + minutes * 60) as i32;
        Some(
            Offset::from_seconds(if sign == b'-' { -seconds } else { seconds })
                .map_err(|_| malformed())?,
        )
    } else {
        None
    };
    if c.pos != text.len() {
        return Err(malformed());
    }
    let date = Date::new(year as i16, month as i8, day as i8).map_err(|_| malformed())?;
    let time = Time::new(hour as i8, minute as i8, second as i8, nanos).map_err(|_| malformed())?;
    let wall = date.to_datetime(time);
    match offset {
        Some(offset) => offset.to_timestamp(wall),
        None => tz.to_ambiguous_timestamp(wall).compatible(),
    }
    .map_err(|e| format!("start {text:?} is out of range: {e}"))
}

/// `P[nY][nM][nW][nD][T[nH][nM][n[.f]S]]`, positive.
fn parse_period(text: &str) -> Result<Period, String> {
    let usage = "write e.g. PT1H, PT30M, P1D, P1W, P1M or P1DT12H";
    if text.starts_with('-') {
        return Err(format!("period {text:?} must be positive"));
    }
    let Some(body) = text.strip_prefix(['P', 'p']) else {
        return Err(format!(
            "period {text:?} is not an ISO 8601 duration; {usage}"
        ));
    };
    let (date_part, time_part) = match body.split_once(['T', 't']) {
        Some((_, "")) => return Err(format!("period {text:?} has nothing after 'T'; {usage}")),
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    if date_part.is_empty() && time_part.is_none() {
        return Err(format!("period {text:?} is empty; {usage}"));
    }
    let mut period = Period {
        years: 0,
        months: 0,
        weeks: 0,
        days: 0,
        time: SignedDuration::ZERO,
    };
    // Each part is a number and a designator, in this order.
    let mut order = 0;
    for (number, designator) in components(text, date_part, usage)? {
        let (rank, limit) = match designator.to_ascii_uppercase() {
            'Y' => (1, 9_999),
            'M' => (2, 120_000),
            'W' => (3, 530_000),
            'D' => (4, 3_700_000),
            other => {
                return Err(format!(
                    "period {text:?}: unknown designator {other:?} before 'T' (use Y, M, W, D); {usage}"
                ));
            }
        };
        if rank <= order {
            return Err(format!(
                "period {text:?}: parts must come in the order Y, M, W, D"
            ));
        }
        order = rank;
        let value = number
            .parse::<i64>()
            .ok()
            .filter(|v| *v <= limit)
            .ok_or_else(|| {
                format!("period {text:?}: {number}{designator} is not a whole number up to {limit}")
            })?;
        match rank {
            1 => period.years = value,
            2 => period.months = value,
            3 => period.weeks = value,
            _ => period.days = value,
        }
    }
    let mut order = 0;
    for (number, designator) in components(text, time_part.unwrap_or(""), usage)? {
        let (rank, nanos_per) = match designator.to_ascii_uppercase() {
            'H' => (1, 3_600_000_000_000),
            'M' => (2, 60_000_000_000),
            'S' => (3, 1_000_000_000),
            other => {
                return Err(format!(
                    "period {text:?}: unknown designator {other:?} after 'T' (use H, M, S); {usage}"
                ));
            }
        };
        if rank <= order {
            return Err(format!(
                "period {text:?}: parts must come in the order H, M, S"
            ));
        }
        order = rank;
        if number.contains(['.', ',']) && rank != 3 {
            return Err(format!("period {text:?}: only seconds may have a fraction"));
        }
        let nanos = duration_nanos(&number.replace(',', "."), nanos_per).ok_or_else(|| {
            format!("period {text:?}: {number}{designator} is not a number of reasonable size")
        })?;
        period.time = period
            .time
            .checked_add(SignedDuration::from_nanos(nanos))
            .ok_or_else(|| format!("period {text:?} is too long"))?;
    }
    if !period.is_calendar() && period.time.is_zero() {
        return Err(format!("period {text:?} must be longer than zero"));
    }
    Ok(period)
}

/// Splits `12Y3M` into `[("12", 'Y'), ("3", 'M')]`.
fn components<'a>(text: &str, part: &'a str, usage: &str) -> Result<Vec<(&'a str, char)>, String> {
    let mut out = Vec::new();
    let mut rest = part;
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b',')
            .count();
        let designator = rest[n..].chars().next();
        match designator {
            Some(d) if n > 0 && d.is_ascii_alphabetic() => {
                out.push((&rest[..n], d));
                rest = &rest[n + 1..];
            }
            _ => return Err(format!("period {text:?} is malformed at {rest:?}; {usage}")),
        }
    }
    Ok(out)
}

/// A decimal number of units, in whole nanoseconds (at most about 290 years).
fn duration_nanos(number: &str, nanos_per: i64) -> Option<i64> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let per = nanos_per;
    let frac_nanos = if frac.is_empty() {
        0
    } else {
        // Only seconds carry fractions, so `per` is 1e9 and the digits are nanoseconds.
        format!("{frac:0<9}").parse::<i64>().ok()?
    };
    whole.checked_mul(per)?.checked_add(frac_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fires(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        let zone = tz(zone);
        let spec = IsoSpec::parse(expr, &zone).unwrap();
        let mut at = ts(after);
        let mut out = Vec::new();
        while out.len() < n {
            let Some(fire) = spec.next_after(&zone, at) else {
                break;
            };
            out.push(fire.at.to_zoned(zone.clone()).to_string());
            at = fire.at;
        }
        out
    }

    #[test]
    fn hourly_grid_with_past_start_continues_on_the_grid() {
        let spec = IsoSpec::parse("R/2026-01-01T00:00:00Z/PT1H", &TimeZone::UTC).unwrap();
        let next = spec
            .next_after(&TimeZone::UTC, ts("2026-03-05T17:42:10Z"))
            .unwrap();
        assert_eq!(next.at, ts("2026-03-05T18:00:00Z"));
        // Exactly on the grid: strictly after.
        let next = spec
            .next_after(&TimeZone::UTC, ts("2026-03-05T18:00:00Z"))
            .unwrap();
        assert_eq!(next.at, ts("2026-03-05T19:00:00Z"));
        // Before the start: the start.
        let next = spec
            .next_after(&TimeZone::UTC, ts("2025-06-01T00:00:00Z"))
            .unwrap();
        assert_eq!(next.at, ts("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn r5_fires_five_times_then_stops() {
        let got = fires(
            "R5/2026-11-25T08:00:00+08:00/P1D",
            "Asia/Shanghai",
            "2026-01-01T00:00:00Z",
            10,
        );
        assert_eq!(
            got,
            [
                "2026-11-25T08:00:00+08:00[Asia/Shanghai]",
                "2026-11-26T08:00:00+08:00[Asia/Shanghai]",
                "2026-11-27T08:00:00+08:00[Asia/Shanghai]",
                "2026-11-28T08:00:00+08:00[Asia/Shanghai]",
                "2026-11-29T08:00:00+08:00[Asia/Shanghai]",
            ]
        );
        let spec =
            IsoSpec::parse("R5/2026-11-25T08:00:00+08:00/P1D", &tz("Asia/Shanghai")).unwrap();
        assert!(spec.is_finite());
        assert_eq!(
            spec.next_after(&tz("Asia/Shanghai"), ts("2026-11-29T00:00:00Z")),
            None
        );
        let spec = IsoSpec::parse("R3/2026-01-01T00:00:00Z/PT1M", &TimeZone::UTC).unwrap();
        assert!(
            spec.next_after(&TimeZone::UTC, ts("2026-01-01T00:01:59Z"))
                .is_some()
        );
        assert_eq!(
            spec.next_after(&TimeZone::UTC, ts("2026-01-01T00:02:00Z")),
            None
        );
    }

    #[test]
    fn r0_never_fires() {
        let spec = IsoSpec::parse("R0/2026-01-01T00:00:00Z/PT1H", &TimeZone::UTC).unwrap();
        assert_eq!(
            spec.next_after(&TimeZone::UTC, ts("2020-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn monthly_grid_clamps_and_keeps_wall_time_across_dst() {
        let got = fires(
            "R/2026-01-31T09:30:00/P1M",
            "Europe/Berlin",
            "2026-01-01T00:00:00Z",
            5,
        );
        assert_eq!(
            got,
            [
                "2026-01-31T09:30:00+01:00[Europe/Berlin]",
                "2026-02-28T09:30:00+01:00[Europe/Berlin]",
                "2026-03-31T09:30:00+02:00[Europe/Berlin]",
                "2026-04-30T09:30:00+02:00[Europe/Berlin]",
                "2026-05-31T09:30:00+02:00[Europe/Berlin]",
            ]
        );
        // Far ahead, the grid is still computed from the start.
        let spec = IsoSpec::parse("R/2026-01-31T09:30:00/P1M", &tz("Europe/Berlin")).unwrap();
        let next = spec
            .next_after(&tz("Europe/Berlin"), ts("2126-02-10T00:00:00Z"))
            .unwrap();
        assert_eq!(
            next.at.to_zoned(tz("Europe/Berlin")).to_string(),
            "2126-02-28T09:30:00+01:00[Europe/Berlin]"
        );
    }

    #[test]
    fn start_offset_is_converted_to_the_schedule_zone() {
        // 08:00+08:00 is 01:00 in Berlin; days step in Berlin wall time, across the DST change.
        let got = fires(
            "R/2026-03-27T08:00:00+08:00/P1D",
            "Europe/Berlin",
            "2026-03-26T00:00:00Z",
            3,
        );
        assert_eq!(
            got,
            [
                "2026-03-27T01:00:00+01:00[Europe/Berlin]",
                "2026-03-28T01:00:00+01:00[Europe/Berlin]",
                "2026-03-29T01:00:00+01:00[Europe/Berlin]",
            ]
        );
        // PT24H is absolute: the wall time shifts at the DST change.
        let got = fires(
            "R/2026-03-28T12:00:00/PT24H",
            "Europe/Berlin",
            "2026-03-28T00:00:00Z",
            2,
        );
        assert_eq!(got[1], "2026-03-29T13:00:00+02:00[Europe/Berlin]");
    }

    #[test]
    fn calendar_day_in_a_gap_is_moved_and_flagged() {
        let zone = tz("America/New_York");
        let spec = IsoSpec::parse("R/2026-03-07T02:30:00/P1D", &zone).unwrap();
        let fire = spec.next_after(&zone, ts("2026-03-07T12:00:00Z")).unwrap();
        assert_eq!(
            fire.at.to_zoned(zone.clone()).to_string(),
            "2026-03-08T03:30:00-04:00[America/New_York]"
        );
        assert!(fire.dst_adjusted);
        let fire = spec.next_after(&zone, fire.at).unwrap();
        assert_eq!(
            fire.at.to_zoned(zone).to_string(),
            "2026-03-09T02:30:00-04:00[America/New_York]"
        );
        assert!(!fire.dst_adjusted);
    }

    #[test]
    fn fractional_start_spreads_within_the_second() {
        let spec = IsoSpec::parse("R/2026-01-01T00:00:00.250Z/PT1S", &TimeZone::UTC).unwrap();
        let next = spec
            .next_after(&TimeZone::UTC, ts("2026-01-01T00:00:05.250Z"))
            .unwrap();
        assert_eq!(next.at, ts("2026-01-01T00:00:06.250Z"));
        let next = spec
            .next_after(&TimeZone::UTC, ts("2026-01-01T00:00:05.249Z"))
            .unwrap();
        assert_eq!(next.at, ts("2026-01-01T00:00:05.250Z"));
        let spec = IsoSpec::parse("R/2026-01-01T00:00:00Z/PT0.5S", &TimeZone::UTC).unwrap();
        let next = spec
            .next_after(&TimeZone::UTC, ts("2026-01-01T00:00:01.7Z"))
            .unwrap();
        assert_eq!(next.at, ts("2026-01-01T00:00:02Z"));
    }

    #[test]
    fn weeks_years_and_mixed_periods() {
        let got = fires(
            "R/2024-02-29T00:00:00Z/P1Y",
            "UTC",
            "2024-01-01T00:00:00Z",
            3,
        );
        assert_eq!(
            got,
            [
                "2024-02-29T00:00:00+00:00[UTC]",
                "2025-02-28T00:00:00+00:00[UTC]",
                "2026-02-28T00:00:00+00:00[UTC]"
            ]
        );
        let got = fires("R/2026-01-01/P1W", "UTC", "2026-01-02T00:00:00Z", 1);
        assert_eq!(got, ["2026-01-08T00:00:00+00:00[UTC]"]);
        let got = fires(
            "R/2026-01-01T00:00:00Z/P1DT12H",
            "UTC",
            "2026-01-01T00:00:00Z",
            2,
        );
        assert_eq!(
            got,
            [
                "2026-01-02T12:00:00+00:00[UTC]",
                "2026-01-04T00:00:00+00:00[UTC]"
            ]
        );
    }

    #[test]
    fn rejects_malformed_parts() {
        let utc = TimeZone::UTC;
        let err = |e: &str| IsoSpec::parse(e, &utc).unwrap_err();
        assert_eq!(
            err("R/2026-13-01/PT1M"),
            "start \"2026-13-01\": month 13 is out of range (1-12)"
        );
        assert_eq!(
            err("R/2026-02-30T00:00:00Z/PT1M"),
            "start \"2026-02-30T00:00:00Z\": day 30 is out of range for 2026-02 (1-28)"
        );
        assert_eq!(
            err("R/2026-01-01T24:00:00Z/PT1M"),
            "start \"2026-01-01T24:00:00Z\": hour 24 is out of range (0-23)"
        );
        assert!(
            err("R/tomorrow/PT1M").starts_with("start \"tomorrow\" is not an ISO 8601 date-time")
        );
        assert!(
            err("R/2026-01-01T00:00:00Q/PT1M")
                .starts_with("start \"2026-01-01T00:00:00Q\" is not an ISO 8601")
        );
        assert!(err("R//PT1M").starts_with("start \"\" is not an ISO 8601"));
        assert_eq!(
            err("R/2026-01-01T00:00:00Z/PT0S"),
            "period \"PT0S\" must be longer than zero"
        );
        assert_eq!(
            err("R/2026-01-01T00:00:00Z/P0D"),
            "period \"P0D\" must be longer than zero"
        );
        assert_eq!(
            err("R/2026-01-01T00:00:00Z/-PT1H"),
            "period \"-PT1H\" must be positive"
        );
        assert!(
            err("R/2026-01-01T00:00:00Z/P-1D")
                .starts_with("period \"P-1D\" is malformed at \"-1D\"")
        );
        assert!(
            err("R/2026-01-01T00:00:00Z/1H")
                .starts_with("period \"1H\" is not an ISO 8601 duration")
        );
        assert!(
            err("R/2026-01-01T00:00:00Z/P1H")
                .starts_with("period \"P1H\": unknown designator 'H' before 'T'")
        );
        assert!(
            err("R/2026-01-01T00:00:00Z/PT").starts_with("period \"PT\" has nothing after 'T'")
        );
        assert!(err("R/2026-01-01T00:00:00Z/P").starts_with("period \"P\" is empty"));
        assert!(
            err("R/2026-01-01T00:00:00Z/P1D1M")
                .starts_with("period \"P1D1M\": parts must come in the order")
        );
        assert!(
            err("R/2026-01-01T00:00:00Z/PT1.5H")
                .starts_with("period \"PT1.5H\": only seconds may have a fraction")
        );
        assert_eq!(
            err("Rx/2026-01-01T00:00:00Z/PT1H"),
            "repetitions \"Rx\" must be R (forever) or R followed by a count, e.g. R5"
        );
        assert_eq!(
            err("R-1/2026-01-01T00:00:00Z/PT1H"),
            "repetitions \"R-1\" must be R (forever) or R followed by a count, e.g. R5"
        );
        assert!(
            err("R/2026-01-01T00:00:00Z")
                .starts_with("expected R[n]/<start>/<period> with 3 parts")
        );
    }
}
