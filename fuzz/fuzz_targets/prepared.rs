//! The named-statement rewriter: client frames (up to the first byte 0xff) through
//! `Prepared::client`, then the remaining bytes as the server's answer tags through
//! `Prepared::server` and `replies`, across two server connections.
#![no_main]

use dbconn::pgwire::frame::frame;
use dbconn::pooler::prepared::{Cache, Prepared};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let (client, server) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let mut p = Prepared::new(4);
    let mut caches = [Cache::default(), Cache::default()];
    let mut out = Vec::new();
    let mut at = 0;
    let mut tick = 0;
    while let Ok(Some((tag, n))) = frame(&client[at..], 1 << 16) {
        tick += 1;
        let cache = &mut caches[tick % 2];
        if p.client(tag, &client[at..at + n], b"", tick as u64, cache, &mut out).is_err() {
            break;
        }
        at += n;
    }
    for tag in server {
        let cache = &mut caches[tick % 2];
        if p.server(*tag, cache).is_err() {
            p.reset();
        }
        out.clear();
        p.replies(&mut out);
    }
});
