//! How the pages write times, durations, schedules and rates for people.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// `in 3m`, `2h ago`, `now`.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    let secs = at.as_second() - now.as_second();
    let (n, future) = (secs.unsigned_abs(), secs > 0);
    if n < 2 {
        return "now".into();
    }
    let d = short(n);
    if future { format!("in {d}") } else { format!("{d} ago") }
}

/// `45s`, `3m`, `2h`, `5d`: the largest unit, rounded down.
pub fn short(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A duration in milliseconds as `850ms`, `12.3s`, `4m05s`.
pub fn millis(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// `2026-03-08 03:00:00 CET` in the zone `tz` (UTC when unknown).
pub fn absolute(at: Timestamp, tz: &str) -> String {
    let zone = TimeZone::get(tz).unwrap_or(TimeZone::UTC);
    at.to_zoned(zone).strftime("%Y-%m-%d %H:%M:%S %Z").to_string()
}

/// A command as one line: a shell string as written, an argv joined by spaces.
pub fn command_line(c: &tug_core::job::Command) -> String {
    match c {
        tug_core::job::Command::Shell(s) => s.clone(),
        tug_core::job::Command::Argv(a) => a.join(" "),
    }
}

/// A percentage of `ok` in `ok + bad`, or `-` when there is nothing to count.
pub fn rate(ok: u64, bad: u64) -> String {
    if ok + bad == 0 { "-".into() } else { format!("{:.0}%", ok as f64 * 100.0 / (ok + bad) as f64) }
}

/// A schedule in words for the common shapes, else the expression itself.
pub fn schedule_words(expr: &str) -> String {
    let e = expr.trim();
    let macro_words = match e.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => Some("every year, on January 1st at midnight"),
        "@monthly" => Some("every month, on the 1st at midnight"),
        "@weekly" => Some("every week, on Sunday at midnight"),
        "@daily" | "@midnight" => Some("every day at midnight"),
        "@hourly" => Some("every hour, on the hour"),
        _ => None,
    };
    if let Some(w) = macro_words {
        return w.into();
    }
    if let Some(d) = e.strip_prefix("@every") {
        return format!("every {}", d.trim());
    }
    if let Some(rest) = e.strip_prefix('R') {
        let parts: Vec<&str> = rest.splitn(3, '/').collect();
        if let [n, start, period] = parts[..] {
            let times = if n.is_empty() { "forever".to_string() } else { format!("{n} times") };
            return format!("every {} from {start}, {times}", period.trim_start_matches('P').trim_start_matches('T').to_ascii_lowercase());
        }
    }
    let f: Vec<&str> = e.split_whitespace().collect();
    let (sec, min, hour, dom, mon, dow) = match f[..] {
        [m, h, d, mo, w] => ("0", m, h, d, mo, w),
        [s, m, h, d, mo, w] => (s, m, h, d, mo, w),
        _ => return e.into(),
    };
    let star = |x: &str| x == "*" || x == "?";
    let step = |x: &str| x.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok());
    let num = |x: &str| x.parse::<u32>().ok();
    let days = match (star(dom), star(mon), star(dow)) {
        (true, true, true) => "every day".to_string(),
        (true, true, false) => format!("on {}", dow.replace("MON-FRI", "weekdays").replace("1-5", "weekdays")),
        (false, true, true) if dom.bytes().all(|b| b.is_ascii_digit() || b == b',') => format!("on day {dom} of every month"),
        _ => return e.into(),
    };
    match (step(sec), star(sec), step(min), star(min), num(sec), num(min), num(hour)) {
        (Some(n), _, _, true, _, _, _) if star(hour) && days == "every day" => format!("every {n} seconds"),
        (_, true, _, true, _, _, _) if star(hour) && days == "every day" => "every second".into(),
        (_, _, Some(n), _, Some(0), _, _) if star(hour) && days == "every day" => format!("every {n} minutes"),
        (_, _, _, true, Some(0), _, _) if star(hour) && days == "every day" => "every minute".into(),
        (_, _, _, _, Some(0), Some(m), _) if star(hour) && days == "every day" => format!("every hour at minute {m}"),
        (_, _, _, _, Some(s), Some(m), Some(h)) => {
            let at = if s == 0 { format!("{h:02}:{m:02}") } else { format!("{h:02}:{m:02}:{s:02}") };
            format!("at {at} {days}")
        }
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_in_words() {
        for (expr, words) in [
            ("*/5 * * * * *", "every 5 seconds"),
            ("0 */10 * * * *", "every 10 minutes"),
            ("*/10 * * * *", "every 10 minutes"),
            ("0 30 2 * * *", "at 02:30 every day"),
            ("30 2 * * *", "at 02:30 every day"),
            ("0 9 * * MON-FRI", "at 09:00 on weekdays"),
            ("0 0 1 * *", "at 00:00 on day 1 of every month"),
            ("15 * * * *", "every hour at minute 15"),
            ("@daily", "every day at midnight"),
            ("@every 90s", "every 90s"),
            ("R/2026-01-01T00:00:00Z/PT1H", "every 1h from 2026-01-01T00:00:00Z, forever"),
            ("0 0 L * *", "0 0 L * *"),
        ] {
            assert_eq!(schedule_words(expr), words, "{expr}");
        }
    }

    #[test]
    fn times_for_people() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(relative("2026-01-01T00:03:10Z".parse().unwrap(), now), "in 3m");
        assert_eq!(relative("2025-12-31T22:00:00Z".parse().unwrap(), now), "2h ago");
        assert_eq!(millis(61_500), "1m01s");
        assert_eq!(rate(9, 1), "90%");
        assert_eq!(absolute(now, "Europe/Berlin"), "2026-01-01 01:00:00 CET");
    }
}
