//! Job documents as the API takes them, TOML and JSON: parsing and validating never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tug_core::job::JobSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for parsed in [JobSpec::from_toml(text), JobSpec::from_json(text)] {
        if let Ok(spec) = parsed {
            let _ = spec.validate();
        }
    }
});
