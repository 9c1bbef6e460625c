//! A server's messages as the pooler reads them: framing, ErrorResponse, ParameterStatus,
//! DataRow, Authentication and BackendKeyData bodies.
#![no_main]

use dbconn::pgwire::frame::{body, frame};
use dbconn::pgwire::messages;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((tag, n))) = frame(&data[at..], 1 << 16) {
        let b = body(&data[at..at + n]);
        match tag {
            b'E' | b'N' => {
                let _ = messages::parse_error(b);
            }
            b'S' => {
                let _ = messages::parse_parameter_status(b);
            }
            b'D' => {
                let _ = messages::parse_data_row(b);
            }
            b'R' => {
                let _ = messages::parse_authentication(b);
            }
            b'K' => {
                let _ = messages::parse_backend_key_data(b);
            }
            _ => {}
        }
        at += n;
    }
});
