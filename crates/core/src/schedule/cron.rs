//! Cron expressions: five fields (or six with leading seconds) and the `@` macros, parsed into a
//! compact set of allowed wall-clock values, and the search for the next matching wall-clock time.
//! Turning wall-clock matches into instants (time zones, DST) is [`super::dst`]'s job.
//!
//! Parsing runs in two passes. Our own pass checks every field and list item so that an error can
//! name the field and the value at fault (croner's own messages are terse), and rewrites names and
//! Quartz `a/n` steps to plain numbers. croner then parses the rewritten expression and its field
//! sets become a [`CronSpec`]: a few bit masks, a few dozen bytes, where croner's `Cron` holds a
//! 5,000-entry year table per expression.

use croner::CronComponent;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::{DateTime, Time};

/// croner's per-value flag bits (its `component` module is private; the `flag_bits_match_croner`
/// test pins them): the n-th weekday of the month for `#1`..`#5`, the last one for `L`, and the
/// nearest weekday for `W`.
const NTH_BITS: [u8; 5] = [1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5];
const LAST_BIT: u8 = 1 << 6;
const CLOSEST_WEEKDAY_BIT: u8 = 1 << 7;

/// How a day-of-month `L` is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastDay {
    /// No `L`.
    None,
    /// `L`: the last day of the month.
    Day,
    /// `LW`: the last weekday (Monday to Friday) of the month.
    Weekday,
}

/// A parsed cron expression: which seconds, minutes, hours, days and months match, plus the DST
/// class. Wall-clock only; knows nothing of time zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CronSpec {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bit `d` for day of month `d` (1-31).
    days: u32,
    /// Bit `d` for `dW`: the weekday nearest day `d`.
    nearest_weekdays: u32,
    last_day: LastDay,
    /// Bit `m` for month `m` (1-12).
    months: u16,
    /// Bit `w` for weekday `w`, 0 = Sunday.
    weekdays: u8,
    /// `nth_weekdays[i]` has bit `w` for `w#(i+1)`.
    nth_weekdays: [u8; 5],
    /// Bit `w` for `wL`: the last such weekday of the month.
    last_weekdays: u8,
    /// Vixie cron: a day runs when it matches either day field, unless one of them is a
    /// wildcard (starts with `*`, or is `?`), in which case it must match both.
    either_day: bool,
    /// Debian cron's DST class: neither the minute nor the hour field starts with `*`.
    fixed_time: bool,
}

/// The six cron fields, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Field {
    const ALL: [Field; 6] = [
        Field::Second,
        Field::Minute,
        Field::Hour,
        Field::DayOfMonth,
        Field::Month,
        Field::DayOfWeek,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// Smallest and largest value; day of week accepts 7 for Sunday.
    fn range(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    fn is_day(self) -> bool {
        matches!(self, Field::DayOfMonth | Field::DayOfWeek)
    }
}

/// Expands a macro (`@daily`, ...) to its five fields. `@every` is handled by the caller.
fn expand_macro(expr: &str) -> Result<&'static str, String> {
    let fields = match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        // Hour `*`: Debian cron treats @hourly as a wildcard job for DST, and so do we.
        "@hourly" => "0 * * * *",
        "@reboot" => {
            return Err("@reboot is not supported: schedules here are time-based".to_string());
        }
        _ => {
            return Err(format!(
                "unknown macro {expr:?}; use @yearly, @annually, @monthly, @weekly, @daily, \
                 @midnight, @hourly or @every <duration>"
            ));
        }
    };
    Ok(fields)
}

/// Parses a cron expression or macro (not `@every`). Returns the message of a rejection.
pub(crate) fn parse(expr: &str) -> Result<CronSpec, String> {
    let expr = expr.trim();
    let text = if expr.starts_with('@') {
        expand_macro(expr)?
    } else {
        expr
    };
    let given: Vec<&str> = text.split_whitespace().collect();
    let fields: Vec<&str> = match given.len() {
        5 => std::iter::once("0").chain(given.iter().copied()).collect(),
        6 => given.clone(),
        n => {
            let hint = if n == 7 {
                " (a year field is not supported)"
            } else {
                ""
            };
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with a \
                 leading seconds field, found {n}{hint}"
            ));
        }
    };

    let mut normalized = Vec::with_capacity(6);
    for (field, text) in Field::ALL.into_iter().zip(&fields) {
        normalized.push(normalize_field(field, text)?);
    }
    let is_wild =
        |i: usize| fields[i].starts_with('*') || (Field::ALL[i].is_day() && fields[i] == "?");

    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Disallowed)
        .build()
        .parse(&normalized.join(" "))
        .map_err(|e| format!("{e} (in {:?})", normalized.join(" ")))?;
    let p = &cron.pattern;
    let spec = CronSpec {
        seconds: mask(&p.seconds.values()) as u64,
        minutes: mask(&p.minutes.values()) as u64,
        hours: mask(&p.hours.values()) as u32,
        days: mask(&p.days.values()) as u32,
        nearest_weekdays: mask(&p.days.get_set_values(CLOSEST_WEEKDAY_BIT)) as u32,
        last_day: match (
            p.days.is_feature_enabled(LAST_BIT),
            p.days.is_feature_enabled(CLOSEST_WEEKDAY_BIT),
        ) {
            (true, true) => LastDay::Weekday,
            (true, false) => LastDay::Day,
            _ => LastDay::None,
        },
        months: mask(&p.months.values()) as u16,
        weekdays: (mask(&p.days_of_week.values()) & 0x7f) as u8,
        nth_weekdays: NTH_BITS.map(|bit| weekday_mask(&p.days_of_week, bit)),
        last_weekdays: weekday_mask(&p.days_of_week, LAST_BIT),
        either_day: !is_wild(3) && !is_wild(5),
        fixed_time: !fields[1].starts_with('*') && !fields[2].starts_with('*'),
    };
    if !spec.matches_some_day() {
        return Err(format!(
            "no day ever matches day-of-month {:?}, month {:?} and day-of-week {:?}, so the \
             schedule would never fire",
            fields[3], fields[4], fields[5]
        ));
    }
    Ok(spec)
}

/// A bit mask with bit `v` set for each value.
fn mask(values: &[u16]) -> u128 {
    values
        .iter()
        .filter(|&&v| v < 128)
        .fold(0, |m, &v| m | 1 << v)
}

/// Weekdays (0 = Sunday) carrying croner's flag `bit`; croner already folded 7 into 0.
fn weekday_mask(component: &CronComponent, bit: u8) -> u8 {
    (mask(&component.get_set_values(bit)) & 0x7f) as u8
}

/// Checks one field and rewrites it for croner: names become numbers, `?` becomes `*`, and
/// Quartz's `a/n` becomes `a-max/n`. Errors name the field and the offending value.
fn normalize_field(field: Field, text: &str) -> Result<String, String> {
    let ctx = FieldCtx { field, text };
    if text == "?" {
        return if field.is_day() {
            Ok("*".to_string())
        } else {
            Err(ctx.err("\"?\" is only allowed in the day-of-month and day-of-week fields"))
        };
    }
    if let Some(c) = text
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !"*/,-#".contains(*c))
    {
        return Err(ctx.err(&format!("unexpected character {c:?}")));
    }
    let upper = text.to_ascii_uppercase();
    let mut items = Vec::new();
    for item in upper.split(',') {
        if item.is_empty() {
            return Err(ctx.err("has an empty list item"));
        }
        items.push(ctx.normalize_item(item)?);
    }
    Ok(items.join(","))
}

/// One field being checked, for error messages.
struct FieldCtx<'a> {
    field: Field,
    text: &'a str,
}

impl FieldCtx<'_> {
    /// `<field> field "<text>": <what>`, or `<field> field "<text>" <what>` when `what` starts
    /// with a verb that reads on (e.g. "is out of range").
    fn err(&self, what: &str) -> String {
        let sep = if what.starts_with("is ") || what.starts_with("has ") {
            " "
        } else {
            ": "
        };
        format!("{} field {:?}{sep}{what}", self.field.name(), self.text)
    }

    /// An error about `token` inside the field (shown as `shown`): phrased on the field itself
    /// when the token is the whole field.
    fn token_err(&self, token: &str, shown: &str, what: &str) -> String {
        if token.eq_ignore_ascii_case(self.text) {
            self.err(&format!("is {what}"))
        } else {
            self.err(&format!("{shown} is {what}"))
        }
    }

    fn out_of_range(&self, token: &str) -> String {
        let (lo, hi) = self.field.range();
        self.token_err(token, token, &format!("out of range ({lo}-{hi})"))
    }

    fn normalize_item(&self, item: &str) -> Result<String, String> {
        let field = self.field;
        let (_, hi) = field.range();
        // Quartz day-of-month forms: L, LW, nW.
        if item == "L" || item == "LW" {
            return if field == Field::DayOfMonth {
                Ok(item.to_string())
            } else if field == Field::DayOfWeek && item == "L" {
                Err(self
                    .err("\"L\" alone is not supported here; write e.g. 5L for the last Friday"))
            } else {
                Err(self.err(&format!(
                    "{item:?} is only allowed in the day-of-month field"
                )))
            };
        }
        if let Some(day) = item.strip_suffix('W') {
            if field != Field::DayOfMonth {
                return Err(self.err("\"W\" is only allowed in the day-of-month field"));
            }
            let n = self.value(day, false)?;
            return Ok(format!("{n}W"));
        }
        // Quartz day-of-week forms: n#k and nL.
        if let Some((day, nth)) = item.split_once('#') {
            if field != Field::DayOfWeek {
                return Err(self.err("\"#\" is only allowed in the day-of-week field"));
            }
            let n = self.value(day, false)?;
            return match nth.parse::<u8>() {
                Ok(k @ 1..=5) => Ok(format!("{n}#{k}")),
                _ => Err(self.err(&format!("\"#{nth}\" must be #1 to #5"))),
            };
        }
        if let Some(day) = item.strip_suffix('L').filter(|_| field == Field::DayOfWeek) {
            let n = self.value(day, false)?;
            return Ok(format!("{n}L"));
        }

        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(self.step(step)?)),
            None => (item, None),
        };
        let range = if range == "*" {
            "*".to_string()
        } else if let Some((start, end)) = range.split_once('-') {
            let a = self.value(start, false)?;
            // `SUN` ends a range as 7 (`FRI-SUN`), except after itself (`SUN-SUN` is Sunday).
            let b = match self.value(end, true)? {
                7 if a == 0 && !end.bytes().all(|b| b.is_ascii_digit()) => 0,
                b => b,
            };
            if a > b {
                return Err(self.err(&format!(
                    "range {start}-{end} runs backwards (its start is after its end)"
                )));
            }
            format!("{a}-{b}")
        } else if range.is_empty() {
            return Err(self.err(&format!("{item:?} has no start; write */n for every n")));
        } else {
            let a = self.value(range, false)?;
            // Quartz `a/n`: from a to the end of the range.
            if step.is_some() {
                format!("{a}-{hi}")
            } else {
                a.to_string()
            }
        };
        Ok(match step {
            Some(n) => format!("{range}/{n}"),
            None => range,
        })
    }

    fn names(&self) -> &'static [&'static str] {
        match self.field {
            Field::Month => &MONTH_NAMES,
            Field::DayOfWeek => &WEEKDAY_NAMES,
            _ => &[],
        }
    }

    /// A number or a name in range. `range_end` makes `SUN` mean 7, so `FRI-SUN` works.
    fn value(&self, token: &str, range_end: bool) -> Result<u32, String> {
        let (lo, hi) = self.field.range();
        if token.is_empty() {
            return Err(self.err(&format!("{:?} is missing a number", self.text)));
        }
        if token.bytes().all(|b| b.is_ascii_digit()) {
            return match token.parse::<u32>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(self.out_of_range(token)),
            };
        }
        if let Some(i) = self.names().iter().position(|n| *n == token) {
            return Ok(match self.field {
                Field::Month => i as u32 + 1,
                _ if range_end && i == 0 => 7,
                _ => i as u32,
            });
        }
        let what = match self.field {
            Field::Month => "not a number or a month name (JAN-DEC)",
            Field::DayOfWeek => "not a number or a weekday name (SUN-SAT)",
            _ => "not a number",
        };
        Err(self.token_err(token, &format!("{token:?}"), what))
    }

    fn step(&self, token: &str) -> Result<u32, String> {
        let (lo, hi) = self.field.range();
        let most = hi - lo + 1;
        match token.parse::<u32>() {
            Ok(n) if token.bytes().all(|b| b.is_ascii_digit()) && (1..=most).contains(&n) => Ok(n),
            _ if token.bytes().all(|b| b.is_ascii_digit()) && !token.is_empty() => {
                Err(self.err(&format!("step {token} is out of range (1-{most})")))
            }
            _ => Err(self.err(&format!("step {token:?} is not a number"))),
        }
    }
}

impl CronSpec {
    /// Whether Debian cron's DST adjustment applies (minute and hour name particular times).
    pub(crate) fn is_fixed_time(&self) -> bool {
        self.fixed_time
    }

    /// Whether the wall-clock time `dt` matches every field.
    pub(crate) fn matches(&self, dt: DateTime) -> bool {
        let (y, m, d) = (i32::from(dt.year()), dt.month() as u8, dt.day() as u8);
        bit(self.seconds, dt.second() as u32)
            && bit(self.minutes, dt.minute() as u32)
            && bit(u64::from(self.hours), dt.hour() as u32)
            && bit(u64::from(self.months), u32::from(m))
            && self.day_matches(d, weekday(y, m, d), days_in_month(y, m))
    }

    /// Vixie day matching, with croner's Quartz extensions. `wd` is the weekday of day `d`
    /// (0 = Sunday), `len` the length of its month.
    fn day_matches(&self, d: u8, wd: u8, len: u8) -> bool {
        let last_wd = (wd + (len - d) % 7) % 7;
        let by_month_day = bit(u64::from(self.days), u32::from(d))
            || match self.last_day {
                LastDay::None => false,
                LastDay::Day => d == len,
                LastDay::Weekday => d == last_weekday_of_month(len, last_wd),
            }
            || self.nearest_weekday_hits(d, wd, len);
        let nth = usize::from((d - 1) / 7);
        let by_weekday = self.weekdays & (1 << wd) != 0
            || self
                .nth_weekdays
                .get(nth)
                .is_some_and(|m| m & (1 << wd) != 0)
            || (self.last_weekdays & (1 << wd) != 0 && d + 7 > len);
        if self.either_day {
            by_month_day || by_weekday
        } else {
            by_month_day && by_weekday
        }
    }

    /// Whether some `nW` resolves to day `d`: the weekday nearest day n, never leaving the month.
    fn nearest_weekday_hits(&self, d: u8, wd: u8, len: u8) -> bool {
        if self.nearest_weekdays == 0 {
            return false;
        }
        let (first, last) = (d.saturating_sub(2).max(1), (d + 2).min(len));
        (first..=last).any(|p| {
            if self.nearest_weekdays & (1 << p) == 0 {
                return false;
            }
            let wp = (i32::from(wd) + i32::from(p) - i32::from(d)).rem_euclid(7);
            let target = match wp {
                6 if p > 1 => p - 1,
                6 => p + 2,
                0 if p < len => p + 1,
                0 => p - 2,
                _ => p,
            };
            target == d
        })
    }

    /// Whether any day can ever match. Day matching depends only on the month, the month's length
    /// and the weekday of its first day, and every such combination occurs in the Gregorian cycle.
    fn matches_some_day(&self) -> bool {
        (1..=12u8)
            .filter(|&m| bit(u64::from(self.months), u32::from(m)))
            .any(|m| {
                let lengths: &[u8] = match m {
                    2 => &[28, 29],
                    4 | 6 | 9 | 11 => &[30],
                    _ => &[31],
                };
                lengths.iter().any(|&len| {
                    (0..7u8).any(|first| {
                        (1..=len).any(|d| self.day_matches(d, (first + d - 1) % 7, len))
                    })
                })
            })
    }

    /// The first wall-clock time at or after `from` (whole seconds; sub-seconds are ignored)
    /// that matches, or `None` past the year 9999.
    pub(crate) fn next_match(&self, from: DateTime) -> Option<DateTime> {
        let (mut y, mut m, mut d) = (i32::from(from.year()), from.month() as u8, from.day() as u8);
        let mut floor = Some((
            from.hour() as u32,
            from.minute() as u32,
            from.second() as u32,
        ));
        // Every matching combination recurs within one 400-year cycle (see `matches_some_day`).
        let limit = (y + 401).min(9999);
        while y <= limit {
            if bit(u64::from(self.months), u32::from(m)) {
                let len = days_in_month(y, m);
                let mut wd = weekday(y, m, d);
                for day in d..=len {
                    if self.day_matches(day, wd, len) {
                        let (h, mi, s) = floor.unwrap_or((0, 0, 0));
                        if let Some((h, mi, s)) = self.first_time_from(h, mi, s) {
                            let time = Time::new(h as i8, mi as i8, s as i8, 0).ok()?;
                            let date = jiff::civil::Date::new(y as i16, m as i8, day as i8).ok()?;
                            return Some(date.to_datetime(time));
                        }
                    }
                    floor = None;
                    wd = (wd + 1) % 7;
                }
            }
            floor = None;
            d = 1;
            m += 1;
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
        None
    }

    /// The first matching time of day at or after `h:m:s`, if any is left in the day.
    fn first_time_from(&self, h: u32, m: u32, s: u32) -> Option<(u32, u32, u32)> {
        let first_minute = next_bit(self.minutes, 0)?;
        let first_second = next_bit(self.seconds, 0)?;
        let hour = next_bit(u64::from(self.hours), h)?;
        if hour == h {
            if let Some(minute) = next_bit(self.minutes, m) {
                if minute == m {
                    if let Some(second) = next_bit(self.seconds, s) {
                        return Some((hour, minute, second));
                    }
                    if let Some(minute) = next_bit(self.minutes, m + 1) {
                        return Some((hour, minute, first_second));
                    }
                } else {
                    return Some((hour, minute, first_second));
                }
            }
            let hour = next_bit(u64::from(self.hours), h + 1)?;
            return Some((hour, first_minute, first_second));
        }
        Some((hour, first_minute, first_second))
    }
}

fn bit(mask: u64, v: u32) -> bool {
    v < 64 && mask & (1 << v) != 0
}

/// The lowest set bit at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask >> from;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

/// The last Monday-to-Friday of a month of `len` days whose last day is weekday `last_wd`.
fn last_weekday_of_month(len: u8, last_wd: u8) -> u8 {
    match last_wd {
        6 => len - 1,
        0 => len - 2,
        _ => len,
    }
}

pub(crate) fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Weekday of a proleptic Gregorian date, 0 = Sunday (days-from-civil, H. Hinnant).
pub(crate) fn weekday(y: i32, m: u8, d: u8) -> u8 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // 1970-01-01 was a Thursday.
    (days + 4).rem_euclid(7) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn err(expr: &str) -> String {
        parse(expr).expect_err(expr)
    }

    #[test]
    fn weekday_agrees_with_jiff() {
        for y in [1600, 1899, 1900, 1970, 2000, 2024, 2026, 2100, 9999] {
            for m in 1..=12u8 {
                for d in [1, 15, days_in_month(y, m)] {
                    let jd = date(y as i16, m as i8, d as i8);
                    assert_eq!(weekday(y, m, d), jd.weekday().to_sunday_zero_offset() as u8);
                    assert_eq!(days_in_month(y, m), jd.days_in_month() as u8);
                }
            }
        }
    }

    #[test]
    fn flag_bits_match_croner() {
        let cron = CronParser::new().parse("0 0 15W * 5L,1#2,2#5").unwrap();
        assert_eq!(
            cron.pattern.days.get_set_values(CLOSEST_WEEKDAY_BIT),
            vec![15]
        );
        assert_eq!(cron.pattern.days_of_week.get_set_values(LAST_BIT), vec![5]);
        assert_eq!(
            cron.pattern.days_of_week.get_set_values(NTH_BITS[1]),
            vec![1]
        );
        assert_eq!(
            cron.pattern.days_of_week.get_set_values(NTH_BITS[4]),
            vec![2]
        );
        let cron = CronParser::new().parse("0 0 LW * *").unwrap();
        assert!(cron.pattern.days.is_feature_enabled(LAST_BIT));
        assert!(cron.pattern.days.is_feature_enabled(CLOSEST_WEEKDAY_BIT));
    }

    /// Our day matcher agrees with croner's wherever croner's day rule is Vixie's: whenever the
    /// day fields are `*` or neither starts with `*`.
    #[test]
    fn day_matching_agrees_with_croner() {
        for expr in [
            "0 0 L * *",
            "0 0 LW * *",
            "0 0 1W,15W,31W * *",
            "0 0 * * 5L",
            "0 0 * * 1#1,3#3,0#5",
            "0 0 1,15 * MON",
            "0 0 L * 5L",
            "0 0 10-20 FEB-APR 1-5",
        ] {
            let ours = parse(expr).unwrap();
            let theirs = CronParser::new().parse(expr).unwrap();
            let mut day = date(2024, 1, 1);
            while day.year() < 2029 {
                let (y, m, d) = (i32::from(day.year()), day.month() as u8, day.day() as u8);
                let wd = weekday(y, m, d);
                let croner_wd = croner::Weekday::from_days_from_sunday(u32::from(wd));
                let want = theirs
                    .pattern
                    .day_match(y, u32::from(m), u32::from(d), croner_wd)
                    .unwrap()
                    && theirs.pattern.month_match(u32::from(m)).unwrap();
                let got = ours.day_matches(d, wd, days_in_month(y, m))
                    && bit(u64::from(ours.months), u32::from(m));
                assert_eq!(got, want, "{expr} on {day}");
                day = day.tomorrow().unwrap();
            }
        }
    }

    #[test]
    fn names_and_sunday_seven() {
        let a = parse("0 12 * JAN,jul MON-FRI").unwrap();
        let b = parse("0 12 * 1,7 1-5").unwrap();
        assert_eq!(a, b);
        assert_eq!(parse("0 0 * * FRI-SUN").unwrap().weekdays, 0b110_0001);
        assert_eq!(parse("0 0 * * 7").unwrap().weekdays, 1);
        assert_eq!(parse("0 0 * * SUN-SUN").unwrap().weekdays, 1);
        assert_eq!(parse("0 0 * * 0-7").unwrap().weekdays, 0x7f);
        assert_eq!(parse("0 0 * * sun").unwrap().weekdays, 1);
    }

    #[test]
    fn macros_expand() {
        assert_eq!(parse("@yearly").unwrap(), parse("0 0 1 1 *").unwrap());
        assert_eq!(parse("@annually").unwrap(), parse("0 0 1 1 *").unwrap());
        assert_eq!(parse("@monthly").unwrap(), parse("0 0 1 * *").unwrap());
        assert_eq!(parse("@weekly").unwrap(), parse("0 0 * * 0").unwrap());
        assert_eq!(parse("@daily").unwrap(), parse("0 0 * * *").unwrap());
        assert_eq!(parse("@MIDNIGHT").unwrap(), parse("0 0 * * *").unwrap());
        assert_eq!(parse("@hourly").unwrap(), parse("0 * * * *").unwrap());
        assert!(parse("@daily").unwrap().is_fixed_time());
        assert!(!parse("@hourly").unwrap().is_fixed_time());
    }

    #[test]
    fn dst_class_follows_debian() {
        for (expr, fixed) in [
            ("30 2 * * *", true),
            ("0,30 2 * * *", true),
            ("0-59 0-23 * * *", true),
            ("* 2 * * *", false),
            ("30 * * * *", false),
            ("*/5 2 * * *", false),
            ("30 */2 * * *", false),
            ("* 30 2 * * *", true),
            ("0 * 2 * * *", false),
        ] {
            assert_eq!(parse(expr).unwrap().is_fixed_time(), fixed, "{expr}");
        }
    }

    #[test]
    fn wildcard_day_fields_follow_vixie() {
        assert!(parse("0 0 1 * MON").unwrap().either_day);
        assert!(!parse("0 0 */2 * MON").unwrap().either_day);
        assert!(!parse("0 0 1 * */2").unwrap().either_day);
        assert!(!parse("0 0 ? * MON").unwrap().either_day);
        assert!(!parse("0 0 1 * ?").unwrap().either_day);
    }

    #[test]
    fn steps_ranges_and_quartz_forms() {
        let s = parse("0/15 10-20/5 * * *").unwrap();
        assert_eq!(s.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(s.hours, 1 << 10 | 1 << 15 | 1 << 20);
        let s = parse("*/10 * * * * *").unwrap();
        assert_eq!(
            s.seconds,
            1 | 1 << 10 | 1 << 20 | 1 << 30 | 1 << 40 | 1 << 50
        );
        assert_eq!(parse("0 0 L * *").unwrap().last_day, LastDay::Day);
        assert_eq!(parse("0 0 LW * *").unwrap().last_day, LastDay::Weekday);
        assert_eq!(parse("0 0 * * FRI#2").unwrap().nth_weekdays[1], 1 << 5);
        assert_eq!(parse("0 0 * * 7L").unwrap().last_weekdays, 1);
    }

    #[test]
    fn next_match_walks_fields() {
        let s = parse("30 9 * * MON-FRI").unwrap();
        // 2026-01-02 is a Friday.
        let from = date(2026, 1, 2).at(9, 30, 1, 0);
        assert_eq!(s.next_match(from), Some(date(2026, 1, 5).at(9, 30, 0, 0)));
        let s = parse("0 0 29 2 *").unwrap();
        assert_eq!(
            s.next_match(date(2026, 1, 1).at(0, 0, 0, 0)),
            Some(date(2028, 2, 29).at(0, 0, 0, 0))
        );
        let s = parse("59 59 23 31 12 *").unwrap();
        assert_eq!(
            s.next_match(date(2026, 12, 31).at(23, 59, 59, 0)),
            Some(date(2026, 12, 31).at(23, 59, 59, 0))
        );
        assert_eq!(
            s.next_match(date(9999, 12, 31).at(23, 59, 59, 0)),
            Some(date(9999, 12, 31).at(23, 59, 59, 0))
        );
        assert_eq!(
            parse("0 0 1 1 *")
                .unwrap()
                .next_match(date(9999, 1, 2).at(0, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn error_messages_name_field_and_value() {
        assert_eq!(
            err("*/5 * * 13 *"),
            "month field \"13\" is out of range (1-12)"
        );
        assert_eq!(
            err("60 * * * *"),
            "minute field \"60\" is out of range (0-59)"
        );
        assert_eq!(
            err("0 24 * * *"),
            "hour field \"24\" is out of range (0-23)"
        );
        assert_eq!(
            err("0 0 0 * *"),
            "day-of-month field \"0\" is out of range (1-31)"
        );
        assert_eq!(
            err("0 0 32 * *"),
            "day-of-month field \"32\" is out of range (1-31)"
        );
        assert_eq!(
            err("0 0 * * 8"),
            "day-of-week field \"8\" is out of range (0-7)"
        );
        assert_eq!(
            err("61 0 0 * * *"),
            "second field \"61\" is out of range (0-59)"
        );
        assert_eq!(
            err("5,70 * * * *"),
            "minute field \"5,70\": 70 is out of range (0-59)"
        );
        assert_eq!(
            err("0 0 * 1-13 *"),
            "month field \"1-13\": 13 is out of range (1-12)"
        );
        assert_eq!(
            err("0 0 * * 5-2"),
            "day-of-week field \"5-2\": range 5-2 runs backwards (its start is after its end)"
        );
        assert_eq!(
            err("*/0 * * * *"),
            "minute field \"*/0\": step 0 is out of range (1-60)"
        );
        assert_eq!(
            err("* * * * "),
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading seconds field, found 4"
        );
        assert_eq!(
            err("0 0 0 1 1 * 2026"),
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading seconds field, found 7 (a year field is not supported)"
        );
        assert_eq!(
            err("0 0 * JANUARY *"),
            "month field \"JANUARY\" is not a number or a month name (JAN-DEC)"
        );
        assert_eq!(
            err("0 0 * * MONDAY"),
            "day-of-week field \"MONDAY\" is not a number or a weekday name (SUN-SAT)"
        );
        assert_eq!(
            err("0 0 * MON *"),
            "month field \"MON\" is not a number or a month name (JAN-DEC)"
        );
        assert_eq!(
            err("0 0 * * JAN"),
            "day-of-week field \"JAN\" is not a number or a weekday name (SUN-SAT)"
        );
        assert_eq!(
            err("0 0 * * 1,FOO"),
            "day-of-week field \"1,FOO\": \"FOO\" is not a number or a weekday name (SUN-SAT)"
        );
        assert_eq!(err("x * * * *"), "minute field \"x\" is not a number");
        assert_eq!(
            err("? * * * *"),
            "minute field \"?\": \"?\" is only allowed in the day-of-month and day-of-week fields"
        );
        assert_eq!(
            err("0 0 * * 1#6"),
            "day-of-week field \"1#6\": \"#6\" must be #1 to #5"
        );
        assert_eq!(
            err("0 0 15W * 1W"),
            "day-of-week field \"1W\": \"W\" is only allowed in the day-of-month field"
        );
        assert_eq!(
            err("1,,2 * * * *"),
            "minute field \"1,,2\" has an empty list item"
        );
        assert_eq!(err("5L * * * *"), "minute field \"5L\" is not a number");
        assert_eq!(
            err("0 0 * * 1-5L"),
            "day-of-week field \"1-5L\": \"1-5\" is not a number or a weekday name (SUN-SAT)"
        );
        assert!(parse("0 0 * JAN-JUL *").is_ok());
        assert_eq!(
            err("0 0 * * 1+"),
            "day-of-week field \"1+\": unexpected character '+'"
        );
        assert_eq!(
            err("@reboot"),
            "@reboot is not supported: schedules here are time-based"
        );
        assert!(err("@fortnightly").starts_with("unknown macro \"@fortnightly\""));
        assert_eq!(
            err("0 0 30 2 *"),
            "no day ever matches day-of-month \"30\", month \"2\" and day-of-week \"*\", so the schedule would never fire"
        );
    }
}
