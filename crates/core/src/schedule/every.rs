//! `@every <duration>`: a fixed grid of that period in absolute time, anchored at the Unix epoch,
//! so DST never moves it and every scheduler computes the same instants.

use jiff::Timestamp;

/// The longest period accepted: a year of 366 days.
const MAX_PERIOD_NANOS: i128 = 366 * 86_400 * 1_000_000_000;

/// A fixed period in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Every {
    period_nanos: i64,
}

impl Every {
    /// Parses the duration after `@every`: one or more `<whole number><unit>` parts with units
    /// `h`, `m`, `s` and `ms`, e.g. `90s`, `1h30m`, `500ms`.
    pub(crate) fn parse(duration: &str) -> Result<Every, String> {
        let text = duration.trim();
        let usage = "write e.g. \"@every 90s\", \"@every 1h30m\" or \"@every 500ms\" \
                     (units h, m, s, ms)";
        if text.is_empty() {
            return Err(format!("@every needs a duration; {usage}"));
        }
        let mut total: i128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!(
                    "@every duration {text:?} is malformed at {rest:?}; {usage}"
                ));
            }
            let (number, tail) = rest.split_at(digits);
            if tail.starts_with(['.', ',']) {
                return Err(format!(
                    "@every duration {text:?}: use whole numbers of each unit (e.g. 1h30m, not 1.5h)"
                ));
            }
            let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, tail) = tail.split_at(unit_len);
            let nanos_per: i128 = match unit.to_ascii_lowercase().as_str() {
                "h" => 3_600_000_000_000,
                "m" => 60_000_000_000,
                "s" => 1_000_000_000,
                "ms" => 1_000_000,
                "" => {
                    return Err(format!(
                        "@every duration {text:?}: {number:?} needs a unit; {usage}"
                    ));
                }
                _ => {
                    return Err(format!(
                        "@every duration {text:?}: unknown unit {unit:?}; {usage}"
                    ));
                }
            };
            let value: i128 = number
                .parse::<i128>()
                .ok()
                .filter(|v| *v <= MAX_PERIOD_NANOS)
                .ok_or_else(|| format!("@every duration {text:?} is too long (at most 8784h)"))?;
            total += value * nanos_per;
            if total > MAX_PERIOD_NANOS {
                return Err(format!(
                    "@every duration {text:?} is too long (at most 8784h)"
                ));
            }
            rest = tail;
        }
        if total == 0 {
            return Err(format!("@every duration {text:?} must be longer than zero"));
        }
        Ok(Every {
            period_nanos: total as i64,
        })
    }

    /// The next grid point strictly after `after`: O(1).
    pub(crate) fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let period = i128::from(self.period_nanos);
        let k = after.as_nanosecond().div_euclid(period) + 1;
        Timestamp::from_nanosecond(k * period).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_units() {
        assert_eq!(Every::parse("90s").unwrap().period_nanos, 90_000_000_000);
        assert_eq!(
            Every::parse("1h30m").unwrap().period_nanos,
            5_400_000_000_000
        );
        assert_eq!(Every::parse("500ms").unwrap().period_nanos, 500_000_000);
        assert_eq!(
            Every::parse("1m30s250ms").unwrap().period_nanos,
            90_250_000_000
        );
    }

    #[test]
    fn grid_is_anchored_at_the_epoch() {
        let e = Every::parse("90s").unwrap();
        // 1_800_000_000 is a multiple of 90.
        let base = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(
            e.next_after(base),
            Some(Timestamp::from_second(1_800_000_090).unwrap())
        );
        assert_eq!(
            e.next_after(Timestamp::from_second(1_800_000_089).unwrap()),
            Some(Timestamp::from_second(1_800_000_090).unwrap())
        );
        let e = Every::parse("500ms").unwrap();
        assert_eq!(
            e.next_after(ts("2026-01-01T00:00:00.2Z")),
            Some(ts("2026-01-01T00:00:00.5Z"))
        );
        // Before the epoch too.
        let e = Every::parse("1h").unwrap();
        assert_eq!(
            e.next_after(ts("1969-12-31T22:30:00Z")),
            Some(ts("1969-12-31T23:00:00Z"))
        );
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(
            Every::parse("0s").unwrap_err(),
            "@every duration \"0s\" must be longer than zero"
        );
        assert!(
            Every::parse("")
                .unwrap_err()
                .starts_with("@every needs a duration")
        );
        assert!(
            Every::parse("5")
                .unwrap_err()
                .starts_with("@every duration \"5\": \"5\" needs a unit")
        );
        assert!(
            Every::parse("5d")
                .unwrap_err()
                .starts_with("@every duration \"5d\": unknown unit \"d\"")
        );
        assert_eq!(
            Every::parse("1.5h").unwrap_err(),
            "@every duration \"1.5h\": use whole numbers of each unit (e.g. 1h30m, not 1.5h)"
        );
        assert!(
            Every::parse("-5m")
                .unwrap_err()
                .starts_with("@every duration \"-5m\" is malformed")
        );
        assert!(
            Every::parse("99999999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }
}
