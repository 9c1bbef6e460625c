//! The server side of SCRAM-SHA-256 (RFC 5802/7677, as PostgreSQL speaks it), so the pooler
//! can authenticate its clients. The password's verifier (salt, StoredKey, ServerKey) is
//! computed once at start; each login then costs a few HMACs. Channel binding is not offered
//! (clients connect over loopback in plain TCP).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Why a SCRAM exchange failed. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported on this connection")]
    ChannelBinding,
    #[error("the SCRAM nonce does not match")]
    Nonce,
    #[error("password authentication failed")]
    Proof,
    #[error("invalid SCRAM verifier")]
    Verifier,
}

/// What the server keeps of a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// PostgreSQL's iteration count (`scram_iterations`, 4096 by default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

impl Verifier {
    /// From a password, with a random salt and PostgreSQL's 4096 iterations.
    pub fn from_password(password: &str) -> Result<Verifier, ScramError> {
        Verifier::with_iterations(password, DEFAULT_ITERATIONS)
    }

    /// From a password with a random 16-byte salt and `iterations` of PBKDF2-HMAC-SHA-256
    /// (RFC 5802's Hi; at least 1). The password is SASLprep'd as PostgreSQL does, and used
    /// as it is when SASLprep refuses it (PostgreSQL's rule). A client computes the same
    /// number of iterations at every login, so a verifier for a long random password (the
    /// sidecar's own) can use few: they add nothing against guessing such a password.
    pub fn with_iterations(password: &str, iterations: u32) -> Result<Verifier, ScramError> {
        if iterations == 0 {
            return Err(ScramError::Verifier);
        }
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| ScramError::Verifier)?;
        Verifier::derive(password, salt, iterations)
    }

    fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Result<Verifier, ScramError> {
        let prepped = stringprep::saslprep(password);
        let password = prepped.as_deref().unwrap_or(password).as_bytes();
        // Hi(password, salt, i) = U1 ^ … ^ Ui, U1 = HMAC(password, salt ‖ INT(1)).
        let mut u = hmac(password, &[salt.as_slice(), &1u32.to_be_bytes()].concat())?;
        let mut salted = u.clone();
        for _ in 1..iterations {
            u = hmac(password, &u)?;
            salted.iter_mut().zip(&u).for_each(|(a, b)| *a ^= b);
        }
        let client_key = hmac(&salted, b"Client Key")?;
        Ok(Verifier {
            iterations,
            salt,
            stored_key: Sha256::digest(&client_key).to_vec(),
            server_key: hmac(&salted, b"Server Key")?,
        })
    }

    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in pg_authid.
    pub fn parse(text: &str) -> Result<Verifier, ScramError> {
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::Verifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::Verifier)?;
        let (iterations, salt) = params.split_once(':').ok_or(ScramError::Verifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::Verifier)?;
        let b64 = |s: &str| STANDARD.decode(s).map_err(|_| ScramError::Verifier);
        let v = Verifier {
            iterations: iterations.parse().map_err(|_| ScramError::Verifier)?,
            salt: b64(salt)?,
            stored_key: b64(stored)?,
            server_key: b64(server)?,
        };
        if v.stored_key.len() != 32 || v.server_key.len() != 32 || v.iterations == 0 {
            return Err(ScramError::Verifier);
        }
        Ok(v)
    }
}

/// The state between the server's first and final messages.
#[derive(Debug)]
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

fn text(b: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(b).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// The longest client nonce accepted, in characters.
pub const MAX_NONCE: usize = 256;

/// The client's first message → the server's first message. `server_nonce` must be
/// printable ASCII without commas (base64 of random bytes).
pub fn server_first(
    verifier: &Verifier,
    client_first: &[u8],
    server_nonce: &str,
) -> Result<(Exchange, String), ScramError> {
    let msg = text(client_first)?;
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("GS2 flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Malformed("authzid is not supported"));
    }
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty())
        .ok_or(ScramError::Malformed("no client nonce"))?;
    // Clients send 18 to 32 characters; an over-long nonce (PgBouncer CVE-2021-3935's kind)
    // is refused rather than echoed back.
    if client_nonce.len() > MAX_NONCE {
        return Err(ScramError::Malformed("client nonce too long"));
    }
    if !client_nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("client nonce is not printable ASCII"));
    }
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&verifier.salt),
        verifier.iterations
    );
    let exchange = Exchange {
        client_first_bare: bare.to_owned(),
        server_first: server_first.clone(),
        nonce,
        gs2_header: format!("{flag},{authzid},"),
    };
    Ok((exchange, server_first))
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, ScramError> {
    // HMAC accepts keys of any length; the error arm cannot happen.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| ScramError::Verifier)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// The client's final message → the server's final message (`v=…`), or why not.
pub fn server_final(
    verifier: &Verifier,
    exchange: &Exchange,
    client_final: &[u8],
) -> Result<String, ScramError> {
    let msg = text(client_final)?;
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    let mut binding = None;
    let mut nonce = None;
    for attr in without_proof.split(',') {
        if let Some(c) = attr.strip_prefix("c=") {
            binding = Some(c);
        } else if let Some(r) = attr.strip_prefix("r=") {
            nonce = Some(r);
        }
    }
    let expected_binding = STANDARD.encode(exchange.gs2_header.as_bytes());
    if binding != Some(expected_binding.as_str()) {
        return Err(ScramError::ChannelBinding);
    }
    if nonce != Some(exchange.nonce.as_str()) {
        return Err(ScramError::Nonce);
    }
    let proof = STANDARD
        .decode(proof)
        .map_err(|_| ScramError::Malformed("proof is not base64"))?;
    let auth_message = format!(
        "{},{},{}",
        exchange.client_first_bare, exchange.server_first, without_proof
    );
    let signature = hmac(&verifier.stored_key, auth_message.as_bytes())?;
    if proof.len() != signature.len() {
        return Err(ScramError::Proof);
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
    let stored = Sha256::digest(&client_key);
    // Compare without an early exit.
    let diff = stored
        .iter()
        .zip(&verifier.stored_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(ScramError::Proof);
    }
    let server_signature = hmac(&verifier.server_key, auth_message.as_bytes())?;
    Ok(format!("v={}", STANDARD.encode(server_signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A full exchange against postgres-protocol's client, as tokio-postgres would run it.
    fn login(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let verifier = Verifier::from_password(server_password).unwrap();
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (exchange, first) = server_first(&verifier, client.message(), "c2VydmVyTm9uY2U")?;
        client
            .update(first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let last = server_final(&verifier, &exchange, client.message())?;
        client
            .finish(last.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected the server signature"))
    }

    #[test]
    fn the_right_password_logs_in_and_the_client_verifies_the_server() {
        assert_eq!(login("s3cret p@ss", "s3cret p@ss"), Ok(()));
        assert_eq!(login("ünïcode", "ünïcode"), Ok(()));
    }

    #[test]
    fn a_verifier_of_any_iteration_count_is_postgresqls_and_logs_in() {
        // The same salt and 4096 iterations: what PostgreSQL (and postgres-protocol) store.
        for password in ["s3cret p@ss", "ünïcode", "I\u{00AD}X"] {
            let theirs = Verifier::parse(&postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            ))
            .unwrap();
            let ours = Verifier::derive(password, theirs.salt.clone(), 4096).unwrap();
            assert!(theirs == ours, "{password:?}");
        }
        for iterations in [1, 2, 16] {
            let verifier = Verifier::with_iterations("pw", iterations).unwrap();
            assert_eq!(verifier.iterations, iterations);
            let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
            let (exchange, first) = server_first(&verifier, client.message(), "srv").unwrap();
            assert!(first.ends_with(&format!(",i={iterations}")), "{first}");
            client.update(first.as_bytes()).unwrap();
            let last = server_final(&verifier, &exchange, client.message()).unwrap();
            client.finish(last.as_bytes()).unwrap();
        }
        assert!(Verifier::with_iterations("pw", 0).is_err());
    }

    #[test]
    fn a_wrong_password_is_refused() {
        assert_eq!(login("right", "wrong"), Err(ScramError::Proof));
    }

    #[test]
    fn malformed_and_oversized_client_messages_are_refused_without_panicking() {
        let v = Verifier::from_password("pw").unwrap();
        let long = format!("n,,n=,r={}", "A".repeat(MAX_NONCE + 1));
        assert!(
            server_first(&v, long.as_bytes(), "srv").is_err(),
            "over-long nonce"
        );
        for first in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"n,,n=,r=",
            b"x,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,n=,r=a\x01b",
            b"\xff\xfe",
        ] {
            assert!(server_first(&v, first, "srv").is_err(), "{first:?}");
        }
        let (exchange, _) = server_first(&v, b"n,,n=,r=abc", "srv").unwrap();
        for last in [
            &b""[..],
            b"c=biws",
            b"c=biws,r=abcsrv",
            b"c=biws,r=wrong,p=AAAA",
            b"c=biws,r=abcsrv,p=!!!not base64",
            b"c=biws,r=abcsrv,p=AAAA",
        ] {
            assert!(server_final(&v, &exchange, last).is_err(), "{last:?}");
        }
    }

    #[test]
    fn malformed_and_channel_bound_messages_are_refused() {
        let v = Verifier::from_password("pw").unwrap();
        assert_eq!(
            server_first(&v, b"p=tls-server-end-point,,n=,r=abc", "x").unwrap_err(),
            ScramError::ChannelBinding
        );
        assert!(server_first(&v, b"garbage", "x").is_err());
        assert!(server_first(&v, b"n,,n=,", "x").is_err());
        assert!(server_first(&v, &[0xff, 0xfe], "x").is_err());
        let (ex, _) = server_first(&v, b"n,,n=,r=abc", "def").unwrap();
        assert_eq!(
            server_final(&v, &ex, b"c=biws,r=abcXXX,p=AAAA").unwrap_err(),
            ScramError::Nonce
        );
        assert!(server_final(&v, &ex, b"c=biws,r=abcdef").is_err());
        assert_eq!(
            server_final(&v, &ex, b"c=biws,r=abcdef,p=AAAA").unwrap_err(),
            ScramError::Proof
        );
    }

    #[test]
    fn verifiers_parse_as_postgres_stores_them() {
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(Verifier::parse(&text).is_ok());
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA").is_err());
        assert_eq!(
            format!("{:?}", Verifier::from_password("pw").unwrap()),
            "Verifier(..)"
        );
    }
}
