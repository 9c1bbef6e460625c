//! A client's messages after its startup, as the pooler reads them: framing against a limit,
//! the tags it accepts, the bodies it parses, and the SQL scan of queries and Parse texts.
#![no_main]

use dbconn::pgwire::frame::{body, cstr, frame};
use dbconn::pgwire::messages;
use dbconn::pooler::state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((tag, n))) = frame(&data[at..], 1 << 16) {
        let msg = &data[at..at + n];
        let b = body(msg);
        let _ = messages::frontend_tag(tag);
        match tag {
            b'Q' => {
                if let Ok((sql, _)) = cstr(b) {
                    let _ = state::scan(sql);
                }
            }
            b'P' => {
                if let Ok((_, rest)) = cstr(b)
                    && let Ok((sql, _)) = cstr(rest)
                {
                    let _ = state::scan(sql);
                }
            }
            b'p' => {
                let _ = messages::parse_sasl_initial(b);
            }
            _ => {}
        }
        at += n;
    }
});
