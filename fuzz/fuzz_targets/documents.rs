#![no_main]
// Coverage-guided fuzzing of switchboard_fuzz::documents (see tests/fuzz/src/lib.rs).
//
// libfuzzer-sys aborts on every panic, even one that is caught. The PDF parser contains
// pdf-extract's panics on malformed files (catch_unwind, reported as a source issue), so those
// are let through here; any other panic still aborts and is a finding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let contained = info.location().is_some_and(|l| {
                l.file().contains("pdf-extract") || l.file().contains("lopdf")
            });
            if !contained {
                abort(info);
            }
        }));
    },
    |data: &[u8]| switchboard_fuzz::documents(data)
);
