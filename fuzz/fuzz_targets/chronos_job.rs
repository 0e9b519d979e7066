//! Chronos job JSON, as `POST /scheduler/iso8601` and `/scheduler/dependency` take it: turning it
//! into a job never panics, and what it accepts validates or is refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tug_server::chronos::{Kind, to_spec};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    let now = jiff::Timestamp::from_second(1_780_000_000).expect("in range");
    for kind in [Kind::Scheduled, Kind::Dependent] {
        if let Ok(spec) = to_spec(body, kind, None, now) {
            let _ = spec.validate();
        }
    }
});
