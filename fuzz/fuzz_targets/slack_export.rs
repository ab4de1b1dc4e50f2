#![no_main]
// Coverage-guided fuzzing of switchboard_fuzz::slack_export (see tests/fuzz/src/lib.rs).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_fuzz::slack_export(data));
