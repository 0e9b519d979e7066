//! Rendering instants for people: RFC 3339 with the offset of a time zone.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// `at` as RFC 3339 with `tz`'s offset at that instant, e.g. `2026-03-08T03:00:00-04:00`;
/// fractional seconds only when there are any.
pub fn rfc3339_in(at: Timestamp, tz: &TimeZone) -> String {
    at.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_fractions() {
        let ny = TimeZone::get("America/New_York").unwrap();
        let t: Timestamp = "2026-03-08T07:00:00Z".parse().unwrap();
        assert_eq!(rfc3339_in(t, &ny), "2026-03-08T03:00:00-04:00");
        let t: Timestamp = "2026-01-01T00:00:00.25Z".parse().unwrap();
        assert_eq!(rfc3339_in(t, &TimeZone::UTC), "2026-01-01T00:00:00.25+00:00");
    }
}
