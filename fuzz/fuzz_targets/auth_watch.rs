//! The guard that keeps passwords from unverified servers, fed a server's startup bytes split
//! into two reads at a point the first byte chooses.
#![no_main]

use dbconn::postgres::guard::{AuthWatch, Policy, Start};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    for start in [Start::Messages, Start::SslResponse] {
        let policy = Policy {
            refuse_insecure: true,
            require_password: cut % 2 == 0,
        };
        let mut w = AuthWatch::new(start, policy);
        let _ = w.feed(&rest[..cut]).and_then(|()| w.feed(&rest[cut..]));
    }
});
