//! The untyped startup packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
#![no_main]

use dbconn::pgwire::frame::startup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((_, n))) = startup(&data[at..]) {
        at += n;
    }
});
