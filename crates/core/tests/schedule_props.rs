//! Property tests for schedule arithmetic.
//!
//! The cron checks compare `Schedule::next_after` against a brute-force scan (minute by minute,
//! or second by second for six fields) that applies Vixie/Debian cron's rules directly: field
//! sets known from how the expression was generated, Vixie day matching, and Debian's DST rules
//! read off the zone one instant at a time. ISO 8601 grids are compared with a linear walk over
//! jiff's own zoned arithmetic. Random and mutated inputs must never make the parser panic.

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp, ToSpan};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tug_core::schedule::{Fire, Schedule};

const ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// `cases` cases, without writing regression files.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generating cron expressions together with the sets they denote.

/// One generated field: its text, the set of values it allows, and whether it starts with `*`
/// (or is `?`).
#[derive(Debug, Clone)]
struct GenField {
    text: String,
    set: u64,
    wild: bool,
}

/// Which names a field may use.
#[derive(Debug, Clone, Copy)]
enum Names {
    None,
    Months,
    Weekdays,
}

fn render(v: u32, names: Names, use_name: bool, lower: bool) -> String {
    let name = match names {
        Names::Months if use_name => MONTHS[(v - 1) as usize].to_string(),
        Names::Weekdays if use_name && v <= 6 => WEEKDAYS[v as usize].to_string(),
        _ => return v.to_string(),
    };
    if lower { name.to_lowercase() } else { name }
}

fn set_of(values: impl IntoIterator<Item = u32>) -> u64 {
    values.into_iter().fold(0, |m, v| m | 1 << v)
}

/// A list item: `a`, `a-b` or `a-b/s`.
fn item(lo: u32, hi: u32, names: Names) -> impl Strategy<Value = (String, u64)> {
    (
        lo..=hi,
        lo..=hi,
        1..=(hi - lo + 1),
        0..3u8,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(a, b, step, form, use_name, lower)| {
            let (a, b) = (a.min(b), a.max(b));
            let r = |v| render(v, names, use_name, lower);
            match form {
                0 => (r(a), set_of([a])),
                1 => (format!("{}-{}", r(a), r(b)), set_of(a..=b)),
                _ => (
                    format!("{}-{}/{step}", r(a), r(b)),
                    set_of((a..=b).step_by(step as usize)),
                ),
            }
        })
}

/// A field: `*`, `*/s`, `?` (day fields) or a list of items, weighted towards `*` for
/// `wild_weight`.
/// `focus`, when given, adds lists drawn from a narrower range (the hours around DST changes).
fn field(
    lo: u32,
    hi: u32,
    names: Names,
    wild_weight: u32,
    day: bool,
    focus: Option<(u32, u32)>,
) -> BoxedStrategy<GenField> {
    let all = set_of(lo..=hi);
    let list = |lo, hi| {
        prop::collection::vec(item(lo, hi, names), 1..=3).prop_map(|items| GenField {
            text: items
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            set: items.iter().fold(0, |m, (_, s)| m | s),
            wild: false,
        })
    };
    let mut options: Vec<(u32, BoxedStrategy<GenField>)> = vec![
        (
            wild_weight,
            Just(GenField {
                text: "*".into(),
                set: all,
                wild: true,
            })
            .boxed(),
        ),
        (
            1,
            (1..=(hi - lo + 1))
                .prop_map(move |s| GenField {
                    text: format!("*/{s}"),
                    set: set_of((lo..=hi).step_by(s as usize)),
                    wild: true,
                })
                .boxed(),
        ),
        (4, list(lo, hi).boxed()),
    ];
    if let Some((lo, hi)) = focus {
        options.push((4, list(lo, hi).boxed()));
    }
    if day {
        options.push((
            1,
            Just(GenField {
                text: "?".into(),
                set: all,
                wild: true,
            })
            .boxed(),
        ));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

/// A cron expression and the reference matcher for it.
#[derive(Debug, Clone)]
struct GenCron {
    expr: String,
    reference: Reference,
}

/// Vixie/Debian cron, written out plainly.
#[derive(Debug, Clone)]
struct Reference {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Weekdays with 7 folded into 0.
    weekdays: u64,
    /// Either day field starts with `*` (or is `?`): a day must match both.
    day_wild: bool,
    /// Neither the minute nor the hour field starts with `*`.
    fixed_time: bool,
}

impl Reference {
    fn matches(&self, c: DateTime) -> bool {
        let has = |set: u64, v: i8| set & (1 << v) != 0;
        let dom = has(self.days, c.day());
        let dow = has(self.weekdays, c.weekday().to_sunday_zero_offset());
        let day = if self.day_wild {
            dom && dow
        } else {
            dom || dow
        };
        has(self.seconds, c.second())
            && has(self.minutes, c.minute())
            && has(self.hours, c.hour())
            && has(self.months, c.month())
            && day
    }
}

fn cron(with_seconds: bool) -> impl Strategy<Value = GenCron> {
    let seconds = if with_seconds {
        field(0, 59, Names::None, 2, false, None)
    } else {
        Just(GenField {
            text: String::new(),
            set: 1,
            wild: false,
        })
        .boxed()
    };
    (
        seconds,
        field(0, 59, Names::None, 2, false, None),
        field(0, 23, Names::None, 2, false, Some((0, 4))),
        field(1, 31, Names::None, 12, true, None),
        field(1, 12, Names::Months, 12, false, None),
        field(0, 7, Names::Weekdays, 12, true, None),
    )
        .prop_map(move |(s, mi, h, dom, mon, dow)| {
            let fields = [&s.text, &mi.text, &h.text, &dom.text, &mon.text, &dow.text];
            let expr = fields[usize::from(!with_seconds)..]
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let weekdays = (dow.set & 0x7f) | u64::from(dow.set & 0x80 != 0);
            GenCron {
                expr,
                reference: Reference {
                    seconds: s.set,
                    minutes: mi.set,
                    hours: h.set,
                    days: dom.set,
                    months: mon.set,
                    weekdays,
                    day_wild: dom.wild || dow.wild,
                    fixed_time: !mi.wild && !h.wild,
                },
            }
        })
}

// ---------------------------------------------------------------------------------------------
// The brute-force scan.

/// All fires in `(after, until]`, stepping `step` seconds over whole-step instants (every zone
/// used here has whole-minute offsets and transitions). Debian's rules, one instant at a time:
/// - a wildcard job fires whenever the wall clock matches;
/// - a fixed-time job fires when the wall clock matches for the first time (not in the second
///   pass of a fold), and at the end of a gap in which some skipped wall time matches.
fn brute_force(
    r: &Reference,
    tz: &TimeZone,
    after: Timestamp,
    until: Timestamp,
    step: i64,
) -> Vec<Fire> {
    let floor = i64::try_from(after.as_nanosecond().div_euclid(1_000_000_000)).unwrap();
    let first = floor.div_euclid(step) * step + step;
    let mut out = Vec::new();
    let mut t = Timestamp::from_second(first).unwrap();
    while t <= until {
        if t > after {
            let wall = tz.to_datetime(t);
            let natural = r.matches(wall)
                && (!r.fixed_time
                    || match tz.to_ambiguous_timestamp(wall).offset() {
                        AmbiguousOffset::Fold { .. } => {
                            tz.to_ambiguous_timestamp(wall).earlier().unwrap() == t
                        }
                        _ => true,
                    });
            let mut gap = false;
            if r.fixed_time {
                let before = tz.to_offset(t - SignedDuration::from_secs(1));
                let now = tz.to_offset(t);
                if now.seconds() > before.seconds() {
                    let mut skipped = before.to_datetime(t);
                    let end = now.to_datetime(t);
                    while skipped < end {
                        gap |= r.matches(skipped);
                        skipped += SignedDuration::from_secs(step);
                    }
                }
            }
            if natural || gap {
                out.push(Fire {
                    at: t,
                    dst_adjusted: !natural,
                });
            }
        }
        t += SignedDuration::from_secs(step);
    }
    out
}

/// The engine's fires in `(after, until]`.
fn engine(s: &Schedule, after: Timestamp, until: Timestamp) -> Vec<Fire> {
    s.iter_after(after).take_while(|f| f.at <= until).collect()
}

/// An instant near one of the zone's 2026 transitions (or anywhere in 2026 for zones without
/// them), `minutes` away, with an optional sub-second part.
fn instant_near(tz: &TimeZone, pick: usize, minutes: i64, nanos: i32) -> Timestamp {
    let year_start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let transitions: Vec<Timestamp> = tz
        .following(year_start)
        .take_while(|t| t.timestamp() < "2027-01-01T00:00:00Z".parse().unwrap())
        .map(|t| t.timestamp())
        .collect();
    let anchor = if transitions.is_empty() {
        year_start + SignedDuration::from_hours((pick % 8760) as i64)
    } else {
        transitions[pick % transitions.len()]
    };
    anchor + SignedDuration::from_mins(minutes) + SignedDuration::from_nanos(i64::from(nanos))
}

/// Days in 2001-2028: every month length and weekday-of-the-1st combination occurs.
fn some_day_matches(r: &Reference) -> bool {
    let mut day = jiff::civil::date(2001, 1, 1);
    while day.year() < 2029 {
        let noon = day.at(0, 0, 0, 0);
        let any_time = Reference {
            seconds: !0,
            minutes: !0,
            hours: !0,
            ..r.clone()
        };
        if any_time.matches(noon) {
            return true;
        }
        day = day.tomorrow().unwrap();
    }
    false
}

fn check_against_brute_force(
    g: &GenCron,
    zone: &str,
    after: Timestamp,
    hours: i64,
    step: i64,
) -> Result<(), TestCaseError> {
    let tz = TimeZone::get(zone).unwrap();
    let schedule = match Schedule::parse(&g.expr, zone) {
        Ok(s) => s,
        Err(e) if e.to_string().contains("never fire") => {
            prop_assert!(!some_day_matches(&g.reference), "{e} but some day matches");
            return Ok(());
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "valid expression rejected: {e}"
            )));
        }
    };
    let until = after + SignedDuration::from_hours(hours);
    let want = brute_force(&g.reference, &tz, after, until, step);
    let got = engine(&schedule, after, until);
    prop_assert_eq!(&got, &want, "{:?} in {} after {}", g.expr, zone, after);
    // Past the window, the next fire (if any) is still strictly after `after`.
    if let Some(next) = schedule.next_after(after) {
        prop_assert!(next.at > after);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    /// Five fields: minute-by-minute over two days around DST transitions.
    #[test]
    fn five_fields_agree_with_brute_force(
        g in cron(false),
        zone in prop::sample::select(&ZONES[..]),
        pick in 0usize..1000,
        minutes in -36 * 60i64..6 * 60,
        nanos in prop_oneof![Just(0), 0..1_000_000_000i32],
    ) {
        let tz = TimeZone::get(zone).unwrap();
        let after = instant_near(&tz, pick, minutes, nanos);
        check_against_brute_force(&g, zone, after, 48, 60)?;
    }
}

proptest! {
    #![proptest_config(config(150))]

    /// Six fields: second-by-second over two hours around DST transitions.
    #[test]
    fn six_fields_agree_with_brute_force(
        g in cron(true),
        zone in prop::sample::select(&ZONES[..]),
        pick in 0usize..1000,
        minutes in -120i64..30,
        nanos in prop_oneof![Just(0), 0..1_000_000_000i32],
    ) {
        let tz = TimeZone::get(zone).unwrap();
        let after = instant_near(&tz, pick, minutes, nanos);
        check_against_brute_force(&g, zone, after, 2, 1)?;
    }
}

// ---------------------------------------------------------------------------------------------
// ISO 8601 and @every.

proptest! {
    #![proptest_config(config(200))]

    /// Fixed periods: fire k is start + k·period, the first one after `after`, O(1).
    #[test]
    fn iso_fixed_period_matches_linear_walk(
        start_secs in 1_767_225_600i64..1_798_761_600,
        start_millis in 0i64..1000,
        period_millis in prop_oneof![1i64..2_000, 1_000i64..100_000_000],
        periods_after in -3i64..200,
        jitter in 0.0f64..1.0,
        count in prop::option::of(0u64..150),
        zone in prop::sample::select(&ZONES[..]),
    ) {
        let start = Timestamp::from_second(start_secs).unwrap() + SignedDuration::from_millis(start_millis);
        let repeat = count.map_or("R".to_string(), |n| format!("R{n}"));
        let expr = format!("{repeat}/{start}/PT{}.{:03}S", period_millis / 1000, period_millis % 1000);
        let schedule = Schedule::parse(&expr, zone).unwrap();
        let after = start + SignedDuration::from_millis((periods_after * period_millis) + (jitter * period_millis as f64) as i64);
        let want = (0..count.unwrap_or(u64::MAX))
            .map(|k| start + SignedDuration::from_millis(k as i64 * period_millis))
            .take(300)
            .find(|&t| t > after);
        prop_assert_eq!(schedule.next_after(after).map(|f| f.at), want, "{}", expr);
    }

    /// Calendar periods: the first `start + k·period` after `after`, computed in the zone with
    /// jiff's zoned arithmetic from the start each time.
    #[test]
    fn iso_calendar_period_matches_zoned_arithmetic(
        start_secs in 1_767_225_600i64..1_798_761_600,
        amount in 1i64..4,
        unit in 0..5u8,
        with_offset in any::<bool>(),
        periods_after in -2i64..60,
        jitter_hours in 0i64..48,
        zone in prop::sample::select(&ZONES[..]),
    ) {
        let tz = TimeZone::get(zone).unwrap();
        let start = Timestamp::from_second(start_secs / 60 * 60).unwrap();
        let (period, span): (String, Span) = match unit {
            0 => (format!("P{amount}D"), amount.days()),
            1 => (format!("P{amount}W"), amount.weeks()),
            2 => (format!("P{amount}M"), amount.months()),
            3 => (format!("P{amount}Y"), amount.years()),
            _ => (format!("P{amount}DT{amount}H"), amount.days().hours(amount)),
        };
        let start_text = if with_offset {
            start.to_string()
        } else {
            tz.to_datetime(start).to_string()
        };
        let expr = format!("R/{start_text}/{period}");
        let schedule = Schedule::parse(&expr, zone).unwrap();
        let zoned_start = if with_offset {
            start.to_zoned(tz.clone())
        } else {
            tz.to_datetime(start).to_zoned(tz.clone()).unwrap()
        };
        let fire = |k: i64| -> Timestamp {
            if k == 0 { zoned_start.timestamp() } else { zoned_start.checked_add(span.checked_mul(k).unwrap()).unwrap().timestamp() }
        };
        let after = fire(periods_after.max(0)) + SignedDuration::from_hours(jitter_hours)
            - if periods_after < 0 { SignedDuration::from_hours(24 * 400) } else { SignedDuration::ZERO };
        let want = (0..200).map(fire).find(|&t| t > after);
        prop_assert_eq!(schedule.next_after(after).map(|f| f.at), want, "{} in {}", expr, zone);
    }

    /// `@every`: the next point of the epoch-anchored grid, strictly after.
    #[test]
    fn every_is_the_next_grid_point(
        n in 1i64..5_000,
        unit in prop::sample::select(&["ms", "s", "m", "h"][..]),
        after_nanos in -4_000_000_000_000_000_000i128..4_000_000_000_000_000_000,
        zone in prop::sample::select(&ZONES[..]),
    ) {
        let schedule = Schedule::parse(&format!("@every {n}{unit}"), zone).unwrap();
        let per: i128 = match unit { "ms" => 1_000_000, "s" => 1_000_000_000, "m" => 60_000_000_000, _ => 3_600_000_000_000 };
        let period = i128::from(n) * per;
        let after = Timestamp::from_nanosecond(after_nanos).unwrap();
        let next = schedule.next_after(after).unwrap().at.as_nanosecond();
        prop_assert!(next > after_nanos);
        prop_assert!(next - after_nanos <= period);
        prop_assert_eq!(next.rem_euclid(period), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// No input makes the parser (or the first `next_after`) panic.

/// Mutates `text`: deletes, inserts or replaces characters at random positions.
fn mutate(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(pos, op, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            pos % (chars.len() + 1)
        };
        match op % 3 {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.insert(at, c),
            _ if at < chars.len() => chars[at] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

fn parse_and_step(expr: &str, zone: &str) {
    if let Ok(s) = Schedule::parse(expr, zone) {
        let after: Timestamp = "2026-03-08T06:30:00Z".parse().unwrap();
        if let Some(f) = s.next_after(after) {
            assert!(f.at > after, "{expr}");
        }
    }
}

const VALID: [&str; 14] = [
    "*/5 * * * *",
    "0 30 9 * * MON-FRI",
    "0 0 L * *",
    "0 0 15W * ?",
    "0 0 * * 5L,1#2",
    "@daily",
    "@every 1h30m",
    "@every 500ms",
    "R/2026-01-01T00:00:00Z/PT1H",
    "R5/2026-11-25T08:00:00+08:00/P1D",
    "R/2026-01-31T00:00:00.250/P1M",
    "0 0 1 JAN-DEC/3 SUN-SAT",
    "0/15 0-23/2 1-31 * 0-7",
    "R0/2026-01-01/P1Y2M3W4DT5H6M7.5S",
];

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn random_strings_never_panic(expr in "\\PC{0,40}", zone in prop::sample::select(&ZONES[..])) {
        parse_and_step(&expr, zone);
    }

    #[test]
    fn cron_alphabet_strings_never_panic(expr in "[0-9*/,\\-#LW?@ RPTZMSHDY:.+a-z]{0,30}") {
        parse_and_step(&expr, "America/New_York");
    }

    #[test]
    fn mutated_valid_expressions_never_panic(
        base in prop::sample::select(&VALID[..]),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), prop_oneof![
            prop::char::range('0', '9'),
            prop::sample::select(vec!['*', '/', ',', '-', '#', 'L', 'W', '?', ' ', 'R', 'P', 'T', 'Z', ':', '.', '+', 'é', '\u{0}']),
        ]), 1..4),
        zone in prop::sample::select(&ZONES[..]),
    ) {
        parse_and_step(&mutate(base, &edits), zone);
    }

    #[test]
    fn random_zone_names_are_rejected_or_work(zone in "[A-Za-z_/+\\-0-9]{0,20}") {
        parse_and_step("*/5 * * * *", &zone);
    }
}

/// Throughput of `next_after` (run with `cargo test --release -- --ignored`).
#[test]
#[ignore]
fn next_after_throughput() {
    let after: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
    for (expr, zone) in [
        ("*/5 * * * *", "UTC"),
        ("*/5 * * * *", "Europe/Berlin"),
        ("30 2 * * *", "America/New_York"),
        ("0 9 * * MON-FRI", "Europe/Berlin"),
        ("0 0 29 2 *", "Europe/Berlin"),
        ("@every 90s", "UTC"),
        ("R/2026-01-01T00:00:00.250Z/PT1S", "UTC"),
        ("R/2026-01-31T09:30:00/P1M", "Europe/Berlin"),
    ] {
        let n = 100_000;
        let start = std::time::SystemTime::now();
        for _ in 0..n / 10 {
            std::hint::black_box(Schedule::parse(expr, zone).unwrap());
        }
        let parse = start.elapsed().unwrap().as_nanos() as f64 / (n / 10) as f64;
        let s = Schedule::parse(expr, zone).unwrap();
        let start = std::time::SystemTime::now();
        for i in 0..n {
            // Spread over a year and a half, across DST changes.
            let at = after + SignedDuration::from_secs(i * 487);
            std::hint::black_box(s.next_after(std::hint::black_box(at)).unwrap());
        }
        let next = start.elapsed().unwrap().as_nanos() as f64 / n as f64;
        println!("{expr:35} {zone:20} parse {parse:>6.0} ns, next_after {next:>6.0} ns");
    }
}
