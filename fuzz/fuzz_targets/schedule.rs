//! Schedule expressions (cron, macros, `@every`, ISO 8601 repeating intervals) in a time zone:
//! parsing never panics, and the next fires of what parses come in order after the instant asked.
#![no_main]

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use tug_core::schedule::Schedule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // "EXPR" or "EXPR\nTZ".
    let (expr, tz) = text.split_once('\n').unwrap_or((text, "UTC"));
    let Ok(schedule) = Schedule::parse(expr, tz) else { return };
    for start in [0i64, 1_780_000_000, 4_000_000_000] {
        let after = Timestamp::from_second(start).expect("in range");
        let mut last = after;
        for fire in schedule.iter_after(after).take(5) {
            assert!(fire.at > last, "{expr:?} in {tz:?}: fire {} not after {last}", fire.at);
            last = fire.at;
        }
    }
});
