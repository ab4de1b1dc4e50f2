#![no_main]
// Coverage-guided fuzzing of switchboard_fuzz::tokenizer_input (see tests/fuzz/src/lib.rs).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_fuzz::tokenizer_input(data));
