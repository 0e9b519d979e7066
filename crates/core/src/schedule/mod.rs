//! Schedules: when a job fires. Cron expressions (5 or 6 fields, macros, `@every`) and ISO 8601
//! repeating intervals (`R[n]/start/period`), each evaluated in the job's time zone.
//!
//! Layout: `cron.rs` parses cron expressions and walks the wall clock; `dst.rs` turns wall-clock
//! matches into instants with Debian cron's DST rules; `every.rs` is the `@every` grid; `iso.rs`
//! the ISO 8601 intervals; `tests.rs` checks them end to end. This file is the public face: [`Schedule`], [`Fire`], [`ScheduleError`].
//!
//! Words used throughout:
//! - *wall-clock time*: a date and time of day with no zone, as a cron field names it.
//! - *gap*: wall-clock times skipped when clocks spring forward; *fold*: times repeated when they
//!   fall back.
//! - *fixed-time job*: a cron job whose minute and hour fields both name particular values (do
//!   not start with `*`). DST moves its gap fires to the end of the gap and runs a fold only
//!   once. Every other cron job is a *wildcard job* and follows the clock as it is.
//! - *Vixie day matching*: a day-of-month or day-of-week field starting with `*` (or `?`) is a
//!   wildcard; if either is, a day must match both, otherwise a day matching either runs.

mod cron;
mod dst;
mod every;
mod iso;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use self::cron::CronSpec;
use self::every::Every;
use self::iso::IsoSpec;

/// A parsed schedule in a time zone. Cheap to clone (about a hundred bytes plus the expression
/// text); `next_after` is pure.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: Box<str>,
    tz: TimeZone,
    spec: Spec,
}

/// The parsed form, by syntax.
#[derive(Debug, Clone)]
enum Spec {
    Cron(CronSpec),
    Every(Every),
    Iso(IsoSpec),
}

/// Which syntax a schedule was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// A cron expression or macro such as `@daily`: wall-clock times in the schedule's zone.
    Cron,
    /// `@every <duration>`: a fixed grid in absolute time, anchored at the Unix epoch.
    Every,
    /// An ISO 8601 repeating interval, `R[n]/<start>/<period>`.
    Iso8601,
}

/// One fire instant computed from a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The instant the job fires.
    pub at: Timestamp,
    /// True when DST moved this fire away from the wall-clock time the expression names.
    pub dst_adjusted: bool,
}

/// Why a schedule expression or time zone was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse, or can never fire.
    #[error("invalid schedule {expr:?}: {message}")]
    Expr {
        /// The expression as given.
        expr: String,
        /// What is wrong and where.
        message: String,
    },
    /// The time zone is not a known IANA zone; the expression itself may be fine.
    #[error("unknown time zone {tz:?}: use an IANA name such as \"Europe/Berlin\", or \"UTC\"")]
    Zone {
        /// The zone as given.
        tz: String,
    },
}

impl Schedule {
    /// Parses `expr` to be evaluated in the IANA zone `tz` (e.g. "UTC", "Europe/Berlin").
    ///
    /// `expr` is one of:
    /// - a cron expression of 5 fields (`minute hour day-of-month month day-of-week`) or 6 with a
    ///   leading seconds field, with lists, ranges, steps, month and weekday names, `?`, and
    ///   Quartz's `L`, `W` and `#`;
    /// - a macro: `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`;
    /// - `@every <duration>`, e.g. `@every 90s`, `@every 1h30m`, `@every 500ms`;
    /// - an ISO 8601 repeating interval `R[n]/<start>/<period>`, e.g.
    ///   `R/2026-01-01T00:00:00Z/PT1H`; a start without an offset is read in `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let fail = |message: String| ScheduleError::Expr {
            expr: expr.to_string(),
            message,
        };
        let zone = TimeZone::get(tz.trim()).map_err(|_| ScheduleError::Zone { tz: tz.to_string() })?;
        let text = expr.trim();
        let lower = text.to_ascii_lowercase();
        let spec = if text.is_empty() {
            Err(
                "the expression is empty; write a cron expression such as \"*/5 * * * *\" or \
                 an ISO 8601 interval such as \"R/2026-01-01T00:00:00Z/PT1H\""
                    .to_string(),
            )
        } else if lower
            .strip_prefix("@every")
            .is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace))
        {
            // ASCII lowercasing keeps byte offsets, so this is the text after "@every".
            Every::parse(&text["@every".len()..]).map(Spec::Every)
        } else if lower.starts_with('r') {
            IsoSpec::parse(text, &zone).map(Spec::Iso)
        } else {
            cron::parse(text).map(Spec::Cron)
        }
        .map_err(fail)?;
        Ok(Schedule {
            expr: text.into(),
            tz: zone,
            spec,
        })
    }

    /// The next fire strictly after `after`, or None when the schedule is exhausted.
    ///
    /// Cron fires are whole seconds of wall-clock time in the schedule's zone, with Debian cron's
    /// DST rules (see the module docs): a fixed-time job's match in a spring-forward gap fires
    /// once at the end of the gap (`dst_adjusted`), and in a fall-back fold only at its first
    /// occurrence; a wildcard job skips the gap and runs the fold twice. `@every` and ISO 8601
    /// fixed periods are plain arithmetic.
    pub fn next_after(&self, after: Timestamp) -> Option<Fire> {
        match &self.spec {
            Spec::Cron(spec) => dst::next_fire(spec, &self.tz, after),
            Spec::Every(every) => every.next_after(after).map(|at| Fire {
                at,
                dst_adjusted: false,
            }),
            Spec::Iso(spec) => spec.next_after(&self.tz, after),
        }
    }

    /// The fires strictly after `after`, in order; ends when the schedule is exhausted.
    pub fn iter_after(&self, after: Timestamp) -> impl Iterator<Item = Fire> + '_ {
        std::iter::successors(self.next_after(after), move |fire| self.next_after(fire.at))
    }

    /// The expression as parsed (surrounding whitespace trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The IANA name of the schedule's time zone.
    pub fn tz_name(&self) -> &str {
        self.tz.iana_name().unwrap_or("UTC")
    }

    /// The schedule's time zone.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// Which syntax the schedule was written in.
    pub fn kind(&self) -> ScheduleKind {
        match self.spec {
            Spec::Cron(_) => ScheduleKind::Cron,
            Spec::Every(_) => ScheduleKind::Every,
            Spec::Iso(_) => ScheduleKind::Iso8601,
        }
    }

    /// Whether the schedule fires a limited number of times (ISO 8601 `Rn`).
    pub fn is_finite(&self) -> bool {
        matches!(&self.spec, Spec::Iso(spec) if spec.is_finite())
    }
}

impl std::fmt::Display for Schedule {
    /// `EXPR (ZONE)`, e.g. `*/5 * * * * (Europe/Berlin)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz_name())
    }
}

#[cfg(test)]
mod tests;
