//! Human durations for job files and flags: `30s`, `5m`, `1h30m`, `250ms`, ISO 8601 `PT30S`, or a
//! bare number of seconds. Serialized back in the compact human form.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time with millisecond precision, as written in job specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(StdDuration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {message} (write e.g. \"30s\", \"5m\", \"1h30m\", \"250ms\" or \"PT30S\")")]
pub struct DurationError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub message: String,
}

impl Duration {
    /// Zero.
    pub const ZERO: Duration = Duration(StdDuration::ZERO);

    /// From whole seconds.
    pub const fn from_secs(secs: u64) -> Duration {
        Duration(StdDuration::from_secs(secs))
    }

    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(StdDuration::from_millis(ms))
    }

    /// True for zero.
    pub const fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// As a `std::time::Duration`.
    pub const fn as_std(self) -> StdDuration {
        self.0
    }

    /// Whole milliseconds.
    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    /// Parses `30s`, `1h30m`, `250ms`, `2d`, `PT1M30S` or a bare number of seconds.
    pub fn parse(input: &str) -> Result<Duration, DurationError> {
        let err = |message: &str| DurationError { input: input.to_string(), message: message.to_string() };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        if s.starts_with(['P', 'p']) {
            let span: jiff::Span = s.parse().map_err(|e: jiff::Error| err(&e.to_string()))?;
            if span.get_years() != 0 || span.get_months() != 0 {
                return Err(err("years and months have no fixed length; use days or smaller units"));
            }
            let sd = span
                .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                .map_err(|e| err(&e.to_string()))?;
            if sd.is_negative() {
                return Err(err("it is negative"));
            }
            return Ok(Duration(sd.unsigned_abs()));
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(err(&format!("expected a number at {rest:?}")));
            }
            let n: u128 = rest[..digits].parse().map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let ms: u128 = match unit {
                "ms" => 1,
                "s" | "sec" | "secs" => 1_000,
                "m" | "min" | "mins" => 60_000,
                "h" | "hr" | "hrs" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(err(&format!("the number {n} has no unit (ms, s, m, h, d)"))),
                other => return Err(err(&format!("unknown unit {other:?} (use ms, s, m, h or d)"))),
            };
            total = total.saturating_add(n.saturating_mul(ms));
        }
        let ms = u64::try_from(total).map_err(|_| err("too large"))?;
        Ok(Duration::from_millis(ms))
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Duration {
        Duration(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"30s\", \"5m\", \"PT1H\" or a number of seconds")
        })? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => Duration::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_and_iso_forms() {
        assert_eq!(Duration::parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(Duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(Duration::parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(Duration::parse("PT1M30S").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("P1D").unwrap(), Duration::from_secs(86_400));
        assert_eq!(Duration::parse("45").unwrap(), Duration::from_secs(45));
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(Duration::from_millis(1500).to_string(), "1s500ms");
        assert_eq!(Duration::ZERO.to_string(), "0s");
    }

    #[test]
    fn rejects_with_a_reason() {
        let e = Duration::parse("5 parsecs").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
        let e = Duration::parse("10").map(|_| ()).and(Duration::parse("m10").map(|_| ()));
        assert!(e.unwrap_err().to_string().contains("expected a number"));
        assert!(Duration::parse("P1M").unwrap_err().to_string().contains("months"));
        assert!(Duration::parse("").unwrap_err().to_string().contains("empty"));
    }
}
