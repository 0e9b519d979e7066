//! End-to-end tests of [`Schedule`]: DST in real zones, Vixie day matching, `@every`, ISO grids
//! and the full text of error messages.

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn sched(expr: &str, tz: &str) -> Schedule {
    Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{e}"))
}

/// The first `n` fires after `after`, as RFC 3339 instants in UTC, with `!` marking a DST
/// adjustment.
fn fires(expr: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
    sched(expr, tz)
        .iter_after(ts(after))
        .take(n)
        .map(|f| format!("{}{}", f.at, if f.dst_adjusted { "!" } else { "" }))
        .collect()
}

fn error(expr: &str, tz: &str) -> String {
    Schedule::parse(expr, tz).expect_err(expr).to_string()
}

#[test]
fn schedule_is_small_and_shareable() {
    fn assert_traits<T: Clone + Send + Sync + std::fmt::Debug>() {}
    assert_traits::<Schedule>();
    // Held per job for 100k+ jobs: the struct plus the expression text is all there is.
    let size = std::mem::size_of::<Schedule>();
    assert!(size <= 128, "Schedule is {size} bytes");
}

#[test]
fn accessors() {
    let s = sched("  */5 * * * *  ", "Europe/Berlin");
    assert_eq!(s.expr(), "*/5 * * * *");
    assert_eq!(s.tz_name(), "Europe/Berlin");
    assert_eq!(s.kind(), ScheduleKind::Cron);
    assert!(!s.is_finite());
    assert_eq!(s.to_string(), "*/5 * * * * (Europe/Berlin)");
    assert_eq!(sched("@every 1m", "UTC").kind(), ScheduleKind::Every);
    let iso = sched("R3/2026-01-01T00:00:00Z/PT1H", "UTC");
    assert_eq!(iso.kind(), ScheduleKind::Iso8601);
    assert!(iso.is_finite());
    assert_eq!(iso.iter_after(ts("2020-01-01T00:00:00Z")).count(), 3);
}

#[test]
fn next_fire_is_strictly_after() {
    let s = sched("*/5 * * * *", "UTC");
    assert_eq!(
        s.next_after(ts("2026-01-01T00:05:00Z")).unwrap().at,
        ts("2026-01-01T00:10:00Z")
    );
    assert_eq!(
        s.next_after(ts("2026-01-01T00:04:59.999Z")).unwrap().at,
        ts("2026-01-01T00:05:00Z")
    );
    let s = sched("* * * * * *", "UTC");
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00.5Z")).unwrap().at,
        ts("2026-01-01T00:00:01Z")
    );
    // Before the epoch, too.
    assert_eq!(
        s.next_after(ts("1969-12-31T23:59:59.5Z")).unwrap().at,
        ts("1970-01-01T00:00:00Z")
    );
}

#[test]
fn six_fields_have_leading_seconds() {
    assert_eq!(
        fires("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-01T00:00:20Z",
            "2026-01-01T00:00:40Z",
            "2026-01-01T00:01:00Z",
            "2026-01-01T00:01:20Z"
        ]
    );
    assert_eq!(
        fires("15 30 9 * * *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-01T09:30:15Z"]
    );
}

#[test]
fn names_lists_ranges_steps() {
    // 2026-01-01 is a Thursday.
    assert_eq!(
        fires("0 9 * jan,MAR mon-fri", "UTC", "2026-01-01T10:00:00Z", 3),
        [
            "2026-01-02T09:00:00Z",
            "2026-01-05T09:00:00Z",
            "2026-01-06T09:00:00Z"
        ]
    );
    assert_eq!(
        fires("0 0 1 FEB-APR/2 *", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2026-02-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
            "2027-02-01T00:00:00Z"
        ]
    );
    assert_eq!(
        fires("10-20/5,45 3 * * *", "UTC", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-01T03:10:00Z",
            "2026-01-01T03:15:00Z",
            "2026-01-01T03:20:00Z",
            "2026-01-01T03:45:00Z"
        ]
    );
}

#[test]
fn vixie_day_matching_either_or_both() {
    // Neither day field is a wildcard: the 1st of the month, and every Monday.
    // 2026-07-01 is a Wednesday.
    assert_eq!(
        fires("0 0 1 * MON", "UTC", "2026-06-30T00:00:00Z", 7),
        [
            "2026-07-01T00:00:00Z",
            "2026-07-06T00:00:00Z",
            "2026-07-13T00:00:00Z",
            "2026-07-20T00:00:00Z",
            "2026-07-27T00:00:00Z",
            "2026-08-01T00:00:00Z",
            "2026-08-03T00:00:00Z",
        ]
    );
    // Day of month starts with `*`: both must match, so odd-numbered Mondays only.
    assert_eq!(
        fires("0 0 */2 * MON", "UTC", "2026-06-30T00:00:00Z", 3),
        [
            "2026-07-13T00:00:00Z",
            "2026-07-27T00:00:00Z",
            "2026-08-03T00:00:00Z"
        ]
    );
    // `?` is a wildcard too.
    assert_eq!(
        fires("0 0 ? * MON", "UTC", "2026-06-30T00:00:00Z", 2),
        ["2026-07-06T00:00:00Z", "2026-07-13T00:00:00Z"]
    );
    // Day of week starts with `*`: the 1st, only when it is an even weekday (Sun, Tue, Thu, Sat).
    assert_eq!(
        fires("0 0 1 * */2", "UTC", "2026-06-30T00:00:00Z", 2),
        ["2026-08-01T00:00:00Z", "2026-09-01T00:00:00Z"]
    );
}

#[test]
fn quartz_last_nearest_weekday_and_nth() {
    // Last day of the month; last weekday; weekday nearest the 15th (2026-02-15 is a Sunday).
    assert_eq!(
        fires("0 0 L 2 *", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-02-28T00:00:00Z", "2027-02-28T00:00:00Z"]
    );
    // 2026-05-31 is a Sunday.
    assert_eq!(
        fires("0 0 LW 5 *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-05-29T00:00:00Z"]
    );
    assert_eq!(
        fires("0 0 15W 2 *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-02-16T00:00:00Z"]
    );
    // Second Friday, last Friday of January 2026.
    assert_eq!(
        fires("0 0 * 1 FRI#2", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-09T00:00:00Z"]
    );
    assert_eq!(
        fires("0 0 * 1 5L", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-30T00:00:00Z"]
    );
}

#[test]
fn macros() {
    assert_eq!(
        fires("@yearly", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2027-01-01T00:00:00Z"]
    );
    assert_eq!(
        fires("@annually", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2027-01-01T00:00:00Z"]
    );
    assert_eq!(
        fires("@monthly", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2026-04-01T00:00:00Z"]
    );
    // 2026-03-01 is a Sunday.
    assert_eq!(
        fires("@weekly", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2026-03-08T00:00:00Z"]
    );
    assert_eq!(
        fires("@daily", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2026-03-02T00:00:00Z"]
    );
    assert_eq!(
        fires("@midnight", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2026-03-02T00:00:00Z"]
    );
    assert_eq!(
        fires("@hourly", "UTC", "2026-03-01T00:00:00Z", 1),
        ["2026-03-01T01:00:00Z"]
    );
    assert_eq!(
        fires("@daily", "Asia/Kolkata", "2026-03-01T00:00:00Z", 1),
        ["2026-03-01T18:30:00Z"]
    );
}

#[test]
fn every_is_an_epoch_grid_unaffected_by_dst() {
    assert_eq!(
        fires("@every 90s", "America/New_York", "2026-01-01T00:00:00Z", 2),
        ["2026-01-01T00:01:30Z", "2026-01-01T00:03:00Z"]
    );
    // Straight through the spring-forward gap (07:00Z) in absolute time.
    assert_eq!(
        fires(
            "@every 1h30m",
            "America/New_York",
            "2026-03-08T05:00:00Z",
            3
        ),
        [
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:30:00Z",
            "2026-03-08T09:00:00Z"
        ]
    );
    assert_eq!(
        fires("@EVERY 500MS", "UTC", "2026-01-01T00:00:00.7Z", 1),
        ["2026-01-01T00:00:01Z"]
    );
}

// America/New_York, 2026: clocks spring forward on 03-08 at 02:00 EST (07:00Z) to 03:00 EDT,
// and fall back on 11-01 at 02:00 EDT (06:00Z) to 01:00 EST, so 01:00-02:00 happens twice:
// 05:00Z-06:00Z (EDT) and 06:00Z-07:00Z (EST).

#[test]
fn dst_fixed_time_job_in_gap_runs_at_the_end_of_the_gap() {
    assert_eq!(
        fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z!",
            "2026-03-09T06:30:00Z"
        ]
    );
    // Several matches in one gap make one run.
    assert_eq!(
        fires(
            "0,30 2 * * *",
            "America/New_York",
            "2026-03-08T00:00:00Z",
            2
        ),
        ["2026-03-08T07:00:00Z!", "2026-03-09T06:00:00Z"]
    );
    // A list or range counts as a particular time; 03:00 is itself scheduled, so the merged
    // run is not an adjustment.
    assert_eq!(
        fires("0 2-3 * * *", "America/New_York", "2026-03-08T00:00:00Z", 2),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"]
    );
    // A seconds field does not change the class: 60 matches in the gap, one run.
    assert_eq!(
        fires(
            "* 30 2 * * *",
            "America/New_York",
            "2026-03-08T00:00:00Z",
            2
        ),
        ["2026-03-08T07:00:00Z!", "2026-03-09T06:30:00Z"]
    );
    // From just before the gap.
    assert_eq!(
        fires(
            "30 2 * * *",
            "America/New_York",
            "2026-03-08T06:59:59.5Z",
            1
        ),
        ["2026-03-08T07:00:00Z!"]
    );
}

#[test]
fn dst_fixed_time_job_in_fold_runs_at_the_first_occurrence_only() {
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    );
    assert_eq!(
        fires(
            "0,45 1 * * *",
            "America/New_York",
            "2026-11-01T04:00:00Z",
            3
        ),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:45:00Z",
            "2026-11-02T06:00:00Z"
        ]
    );
    // Asked from inside the repeated hour (the second 01:10), the repeat is skipped.
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1),
        ["2026-11-02T06:30:00Z"]
    );
    // Asked from inside the first pass, before 01:30: today's run is still ahead.
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2026-11-01T05:10:00Z", 1),
        ["2026-11-01T05:30:00Z"]
    );
}

#[test]
fn dst_wildcard_job_follows_the_clock() {
    // Spring: nothing in 02:00-03:00.
    assert_eq!(
        fires(
            "*/30 * * * *",
            "America/New_York",
            "2026-03-08T06:00:00Z",
            3
        ),
        [
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z"
        ]
    );
    // Minute `*`: the skipped hour simply has no runs.
    assert_eq!(
        fires("* 2 * * *", "America/New_York", "2026-03-08T00:00:00Z", 1),
        ["2026-03-09T06:00:00Z"]
    );
    // Fall: the repeated hour runs twice.
    assert_eq!(
        fires(
            "*/30 * * * *",
            "America/New_York",
            "2026-11-01T04:50:00Z",
            5
        ),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z",
        ]
    );
    assert_eq!(
        fires("30 * * * *", "America/New_York", "2026-11-01T05:00:00Z", 3),
        [
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:30:00Z"
        ]
    );
    // Asked from inside the first pass, the second pass's earlier minutes still come.
    assert_eq!(
        fires("10 * * * *", "America/New_York", "2026-11-01T05:20:00Z", 2),
        ["2026-11-01T06:10:00Z", "2026-11-01T07:10:00Z"]
    );
    // @hourly is a wildcard job.
    assert_eq!(
        fires("@hourly", "America/New_York", "2026-11-01T04:30:00Z", 3),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T07:00:00Z"
        ]
    );
    assert_eq!(
        fires("@hourly", "America/New_York", "2026-03-08T06:30:00Z", 2),
        ["2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"]
    );
}

#[test]
fn dst_in_berlin_and_lord_howe() {
    // Berlin 2026: 03-29 02:00 CET (01:00Z) -> 03:00 CEST; 10-25 03:00 CEST (01:00Z) -> 02:00 CET.
    assert_eq!(
        fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z!", "2026-03-30T00:30:00Z"]
    );
    assert_eq!(
        fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    assert_eq!(
        fires("30 * * * *", "Europe/Berlin", "2026-10-25T00:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"]
    );
    // Lord Howe moves by half an hour: 10-04 02:00 (+10:30, 15:30Z) -> 02:30 (+11); and on
    // 04-05 02:00 (+11, 15:00Z) -> 01:30 (+10:30).
    assert_eq!(
        fires(
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-03T12:00:00Z",
            1
        ),
        ["2026-10-03T15:30:00Z!"]
    );
    assert_eq!(
        fires(
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T12:00:00Z",
            2
        ),
        ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"]
    );
    assert_eq!(
        fires(
            "45 * * * *",
            "Australia/Lord_Howe",
            "2026-04-04T14:00:00Z",
            3
        ),
        [
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:15:00Z",
            "2026-04-04T16:15:00Z"
        ]
    );
}

#[test]
fn iso_intervals() {
    assert_eq!(
        fires(
            "R/2026-01-01T00:00:00Z/PT1H",
            "UTC",
            "2026-05-05T05:05:05Z",
            2
        ),
        ["2026-05-05T06:00:00Z", "2026-05-05T07:00:00Z"]
    );
    assert_eq!(
        fires(
            "R5/2026-11-25T08:00:00+08:00/P1D",
            "UTC",
            "2026-11-27T00:00:00Z",
            9
        )
        .len(),
        2
    );
    assert!(
        fires(
            "R0/2026-01-01T00:00:00Z/PT1H",
            "UTC",
            "2020-01-01T00:00:00Z",
            1
        )
        .is_empty()
    );
    assert_eq!(
        fires(
            "R/2026-01-01T00:00:00.250Z/PT1S",
            "UTC",
            "2026-01-01T00:00:10Z",
            2
        ),
        ["2026-01-01T00:00:10.25Z", "2026-01-01T00:00:11.25Z"]
    );
    // Calendar months in the schedule's zone; a start without offset is wall time there.
    assert_eq!(
        fires(
            "R/2026-01-31T00:30:00/P1M",
            "America/New_York",
            "2026-01-01T00:00:00Z",
            3
        ),
        [
            "2026-01-31T05:30:00Z",
            "2026-02-28T05:30:00Z",
            "2026-03-31T04:30:00Z"
        ]
    );
}

#[test]
fn error_messages() {
    assert_eq!(
        error("*/5 * * 13 *", "UTC"),
        "invalid schedule \"*/5 * * 13 *\": month field \"13\" is out of range (1-12)"
    );
    assert_eq!(
        error("* * * *", "UTC"),
        "invalid schedule \"* * * *\": expected 5 fields (minute hour day-of-month month \
         day-of-week) or 6 with a leading seconds field, found 4"
    );
    assert_eq!(
        error("0 0 * * * * *", "UTC"),
        "invalid schedule \"0 0 * * * * *\": expected 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading seconds field, found 7 (a year field is not supported)"
    );
    assert_eq!(
        error("60 * * * * *", "UTC"),
        "invalid schedule \"60 * * * * *\": second field \"60\" is out of range (0-59)"
    );
    assert_eq!(
        error("0 60 * * *", "UTC"),
        "invalid schedule \"0 60 * * *\": hour field \"60\" is out of range (0-23)"
    );
    assert_eq!(
        error("0-60 * * * *", "UTC"),
        "invalid schedule \"0-60 * * * *\": minute field \"0-60\": 60 is out of range (0-59)"
    );
    assert_eq!(
        error("0 0 1,32 * *", "UTC"),
        "invalid schedule \"0 0 1,32 * *\": day-of-month field \"1,32\": 32 is out of range (1-31)"
    );
    assert_eq!(
        error("0 0 * * 9", "UTC"),
        "invalid schedule \"0 0 * * 9\": day-of-week field \"9\" is out of range (0-7)"
    );
    assert_eq!(
        error("0 0 * FOO *", "UTC"),
        "invalid schedule \"0 0 * FOO *\": month field \"FOO\" is not a number or a month name (JAN-DEC)"
    );
    assert_eq!(
        error("0 0 * * MON-FRY", "UTC"),
        "invalid schedule \"0 0 * * MON-FRY\": day-of-week field \"MON-FRY\": \"FRY\" is not a number or a weekday name (SUN-SAT)"
    );
    assert_eq!(
        error("*/5 * * * *", "Mars/Olympus_Mons"),
        "unknown time zone \"Mars/Olympus_Mons\": use an IANA name such as \"Europe/Berlin\", or \"UTC\""
    );
    assert!(error("*/5 * * * *", "").contains("unknown time zone \"\""));
    assert_eq!(
        error("R/2026-01-01 00:00/PT1H", "UTC"),
        "invalid schedule \"R/2026-01-01 00:00/PT1H\": start \"2026-01-01 00:00\" is not an ISO 8601 \
         date-time; expected YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm], e.g. 2026-01-01T00:00:00Z"
    );
    assert_eq!(
        error("R/2026-13-01/PT1M", "UTC"),
        "invalid schedule \"R/2026-13-01/PT1M\": start \"2026-13-01\": month 13 is out of range (1-12)"
    );
    assert_eq!(
        error("R/2026-01-01T00:00:00Z/PT0S", "UTC"),
        "invalid schedule \"R/2026-01-01T00:00:00Z/PT0S\": period \"PT0S\" must be longer than zero"
    );
    assert_eq!(
        error("R/2026-01-01T00:00:00Z/-P1D", "UTC"),
        "invalid schedule \"R/2026-01-01T00:00:00Z/-P1D\": period \"-P1D\" must be positive"
    );
    assert_eq!(
        error("R/2026-01-01T00:00:00Z/P1X", "UTC"),
        "invalid schedule \"R/2026-01-01T00:00:00Z/P1X\": period \"P1X\": unknown designator 'X' \
         before 'T' (use Y, M, W, D); write e.g. PT1H, PT30M, P1D, P1W, P1M or P1DT12H"
    );
    assert_eq!(
        error("@every 0s", "UTC"),
        "invalid schedule \"@every 0s\": @every duration \"0s\" must be longer than zero"
    );
    assert!(error("@every", "UTC").contains("@every needs a duration"));
    assert!(error("", "UTC").contains("the expression is empty"));
    assert!(error("@weekdays", "UTC").contains("unknown macro \"@weekdays\""));
}
