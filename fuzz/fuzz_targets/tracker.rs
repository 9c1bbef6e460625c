//! The transaction tracker fed any interleaving of client and server tags: even bytes are a
//! client's message, odd ones the server's (with the next byte as ReadyForQuery's status).
#![no_main]

use dbconn::pgwire::tracker::Tracker;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::default();
    for pair in data.chunks(2) {
        match pair {
            [kind, tag] if kind % 2 == 0 => t.client(*tag),
            [_, tag] => t.server(*tag, *tag),
            _ => {}
        }
        let _ = (t.idle(), t.quiet());
    }
});
