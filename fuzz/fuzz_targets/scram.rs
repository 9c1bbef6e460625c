//! The server side of SCRAM-SHA-256 fed any client-first and client-final messages (split at
//! the first NUL byte).
#![no_main]

use dbconn::pgwire::scram::{Verifier, server_final, server_first};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static VERIFIER: OnceLock<Option<Verifier>> = OnceLock::new();
    let Some(v) = VERIFIER.get_or_init(|| Verifier::from_password("pw").ok()) else {
        return;
    };
    let (first, last) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok((exchange, _)) = server_first(v, first, "c2VydmVyTm9uY2U") {
        let _ = server_final(v, &exchange, last);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Verifier::parse(text);
    }
});
