//! From wall-clock matches to instants in a time zone, with Debian cron's DST rules.
//!
//! - A *fixed-time* job (neither the minute nor the hour field starts with `*`) runs once per
//!   wall-clock match: a match in the hour skipped at spring-forward runs at the first instant
//!   after the gap (several such matches make one run), and a match in the hour repeated at
//!   fall-back runs at its first occurrence only.
//! - A *wildcard* job follows the clock as it is: nothing runs in the skipped hour, and the
//!   repeated hour runs twice.

use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use super::Fire;
use super::cron::CronSpec;

/// Safety net against malformed zone data: each loop pass passes a match or a transition, so
/// real zones need a handful.
const MAX_STEPS: usize = 10_000;

/// The next fire of `spec` in `tz` strictly after `after`.
pub(crate) fn next_fire(spec: &CronSpec, tz: &TimeZone, after: Timestamp) -> Option<Fire> {
    if spec.is_fixed_time() {
        next_fixed(spec, tz, after)
    } else {
        next_wild(spec, tz, after)
    }
}

/// `after` rounded down to a whole second (fires are whole seconds).
fn floor_second(after: Timestamp) -> Option<Timestamp> {
    let secs = after.as_nanosecond().div_euclid(1_000_000_000);
    Timestamp::from_second(i64::try_from(secs).ok()?).ok()
}

/// Wildcard jobs: the fires are exactly the instants whose wall-clock time matches. Between two
/// transitions the offset is fixed and wall time runs with real time, so search the wall clock
/// one such segment at a time.
fn next_wild(spec: &CronSpec, tz: &TimeZone, after: Timestamp) -> Option<Fire> {
    let mut t = floor_second(after)?
        .checked_add(SignedDuration::from_secs(1))
        .ok()?;
    // The last search: no match in [from, hit), and `hit` matches. Saves re-walking the
    // calendar when a rare match lies several transitions ahead.
    let mut known: Option<(jiff::civil::DateTime, jiff::civil::DateTime)> = None;
    for _ in 0..MAX_STEPS {
        let offset = tz.to_offset(t);
        let from = offset.to_datetime(t);
        let hit = match known {
            Some((lo, hit)) if lo <= from && from <= hit => hit,
            _ => spec.next_match(from)?,
        };
        known = Some((from, hit));
        let at = offset.to_timestamp(hit).ok()?;
        match tz.following(t).next() {
            Some(transition) if transition.timestamp() <= at => t = transition.timestamp(),
            _ => {
                return Some(Fire {
                    at,
                    dst_adjusted: false,
                });
            }
        }
    }
    None
}

/// Fixed-time jobs: each wall-clock match maps to one instant (its only one, its first one in a
/// fold, the end of the gap in a gap), and that map never goes backwards as wall time goes
/// forwards. So walk the matches from `after`'s wall time until one maps past `after`.
fn next_fixed(spec: &CronSpec, tz: &TimeZone, after: Timestamp) -> Option<Fire> {
    let one = SignedDuration::from_secs(1);
    let mut from = tz.to_datetime(floor_second(after)?).checked_add(one).ok()?;
    for _ in 0..MAX_STEPS {
        let wall = spec.next_match(from)?;
        match tz.to_ambiguous_timestamp(wall).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                let at = offset.to_timestamp(wall).ok()?;
                if at > after {
                    return Some(Fire {
                        at,
                        dst_adjusted: false,
                    });
                }
                from = wall.checked_add(one).ok()?;
            }
            AmbiguousOffset::Fold {
                before,
                after: later,
            } => {
                let first = before.to_timestamp(wall).ok()?;
                if first > after {
                    return Some(Fire {
                        at: first,
                        dst_adjusted: false,
                    });
                }
                // `after` lies in the repeat, where this job does not run again: skip to the
                // wall time where the repeat ends.
                let end = transition_to(tz, first, later)?;
                from = before.to_datetime(end).max(wall.checked_add(one).ok()?);
            }
            AmbiguousOffset::Gap { after: later, .. } => {
                // The gap ends at the transition into `later`; `wall` read with the later offset
                // lies before it.
                let end = transition_to(tz, later.to_timestamp(wall).ok()?, later)?;
                if end > after {
                    // Several matches in one gap make one run; and when the gap's end is itself
                    // a scheduled time, the run is simply that one.
                    let dst_adjusted = !spec.matches(later.to_datetime(end));
                    return Some(Fire {
                        at: end,
                        dst_adjusted,
                    });
                }
                from = later.to_datetime(end).max(wall.checked_add(one).ok()?);
            }
        }
    }
    None
}

/// The first transition after `t` into `offset` (skipping any that only rename the zone).
fn transition_to(tz: &TimeZone, t: Timestamp, offset: Offset) -> Option<Timestamp> {
    tz.following(t)
        .take(16)
        .find(|tr| tr.offset() == offset)
        .map(|tr| tr.timestamp())
}
