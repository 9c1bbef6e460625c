//! Keeps a password away from a server that has not proven who it is. A server a tenant
//! names (an inline server) may ask for the password in cleartext or as an MD5 hash, which
//! hands it, or a replayable hash of it, to whoever runs that host. Unless sslmode is
//! verify-ca or verify-full, dbconn answers such a request by closing the connection: the
//! password goes only through SCRAM-SHA-256, which proves knowledge of it without revealing
//! it (PostgreSQL docs, "Password Authentication" and "SASL Authentication").
//!
//! [`AuthWatch`] reads the server's side of the startup as it streams past (pure), and
//! [`AuthGuard`] puts it under tokio-postgres: the refused request becomes a read error before
//! tokio-postgres sees it, so nothing is ever written in reply.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The server asked for the password in a form that reveals it, made guessing it cheap, or
/// let the client in without asking for one when a password proof was required.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server {0}")]
pub struct InsecureAuthRequest(pub &'static str);

/// The fewest PBKDF2 iterations a server may ask of SCRAM: PostgreSQL's default. Fewer make
/// an offline guess at the password from a captured exchange cheap.
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;

/// What the watch refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Policy {
    /// Cleartext and MD5 requests, and SCRAM with fewer than MIN_SCRAM_ITERATIONS.
    pub refuse_insecure: bool,
    /// AuthenticationOk before the server asked for any password (trust, or a certificate
    /// alone): the login proves nothing about the password.
    pub require_password: bool,
}

/// Where the watch starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The one-byte answer to SSLRequest comes first (`S`: TLS follows underneath, nothing
    /// more to watch here; `N`: the startup continues in plain text).
    SslResponse,
    /// Backend messages from the first byte.
    Messages,
}

/// The server's side of the startup, byte by byte, until authentication is over. Pure.
#[derive(Debug)]
pub struct AuthWatch {
    state: State,
    policy: Policy,
    /// The server asked for a password (in any form).
    asked: bool,
}

#[derive(Debug)]
enum State {
    SslResponse,
    /// Collecting a message's type, length and (for `R`) its 4-byte code.
    Head {
        buf: [u8; 9],
        have: usize,
    },
    /// Skipping the rest of a message.
    Body {
        left: usize,
    },
    /// Collecting a SASLContinue's data (the server-first-message), up to its end.
    ScramFirst {
        data: Vec<u8>,
        left: usize,
    },
    /// Authentication is over (or TLS took over below): nothing more to check.
    Done,
}

/// The longest server-first-message kept to read its iteration count.
const SCRAM_FIRST_LIMIT: usize = 1024;

fn head() -> State {
    State::Head {
        buf: [0; 9],
        have: 0,
    }
}

impl AuthWatch {
    pub fn new(start: Start, policy: Policy) -> Self {
        let state = match start {
            Start::SslResponse => State::SslResponse,
            Start::Messages => head(),
        };
        Self {
            state,
            policy,
            asked: false,
        }
    }

    /// Whether anything is left to watch.
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Reads the next bytes from the server; an error for a request the policy refuses.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InsecureAuthRequest> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::SslResponse => {
                    // 'S': TLS below us; 'N': plain text goes on; anything else fails in
                    // tokio-postgres.
                    self.state = if bytes[0] == b'N' {
                        head()
                    } else {
                        State::Done
                    };
                    bytes = &bytes[1..];
                }
                State::Body { left } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = head();
                    }
                }
                State::ScramFirst { data, left } => {
                    let n = (*left).min(bytes.len());
                    let keep = n.min(SCRAM_FIRST_LIMIT.saturating_sub(data.len()));
                    data.extend_from_slice(&bytes[..keep]);
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        let iterations = scram_iterations(data);
                        if self.policy.refuse_insecure
                            && iterations.is_none_or(|i| i < MIN_SCRAM_ITERATIONS)
                        {
                            return Err(InsecureAuthRequest(
                                "asked for SCRAM with fewer than 4096 iterations",
                            ));
                        }
                        self.state = head();
                    }
                }
                State::Head { buf, have } => {
                    // 5 bytes of header, and for an Authentication message 4 more: its code.
                    let want = if *have >= 1 && buf[0] == b'R' { 9 } else { 5 };
                    let n = (want - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if (*have == 5 && buf[0] == b'R') || *have < want {
                        continue;
                    }
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    let left = len.saturating_sub(*have - 1);
                    let code = (buf[0] == b'R')
                        .then(|| u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]));
                    self.state = match code {
                        Some(0) if self.policy.require_password && !self.asked => {
                            return Err(InsecureAuthRequest(
                                "let the role in without asking for its password (trust or a certificate in pg_hba.conf), which proves nothing about the password",
                            ));
                        }
                        Some(0) => State::Done,
                        Some(3) if self.policy.refuse_insecure => {
                            return Err(InsecureAuthRequest("asked for the password in cleartext"));
                        }
                        Some(5) if self.policy.refuse_insecure => {
                            return Err(InsecureAuthRequest(
                                "asked for the password as an MD5 hash",
                            ));
                        }
                        Some(11) if left > 0 => {
                            self.asked = true;
                            State::ScramFirst {
                                data: Vec::new(),
                                left,
                            }
                        }
                        Some(3 | 5 | 10 | 11) => {
                            self.asked = true;
                            if left == 0 {
                                head()
                            } else {
                                State::Body { left }
                            }
                        }
                        _ if left == 0 => head(),
                        _ => State::Body { left },
                    };
                }
            }
        }
        Ok(())
    }

    /// Whether the server asked for a password before letting the client in.
    pub fn asked_password(&self) -> bool {
        self.asked
    }
}

/// The `i=` attribute of a SCRAM server-first-message (RFC 5802 section 7).
fn scram_iterations(first: &[u8]) -> Option<u32> {
    std::str::from_utf8(first)
        .ok()?
        .split(',')
        .find_map(|a| a.strip_prefix("i="))?
        .parse()
        .ok()
}

/// A stream that fails its read when the server asks for the password insecurely.
pub struct AuthGuard<S> {
    inner: S,
    watch: AuthWatch,
}

impl<S> AuthGuard<S> {
    pub fn new(inner: S, start: Start, policy: Policy) -> Self {
        Self {
            inner,
            watch: AuthWatch::new(start, policy),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let ready = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &ready
            && !this.watch.done()
            && let Err(refused) = this.watch.feed(&buf.filled()[before..])
        {
            // The request stays unread: tokio-postgres fails before it can answer.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                refused,
            )));
        }
        ready
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for AuthGuard<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose stream is watched above the encryption.
pub struct GuardedConnect<T>(pub T, pub Policy);

impl<S, T> TlsConnect<S> for GuardedConnect<T>
where
    T: TlsConnect<S>,
    T::Stream: Unpin,
    T::Future: Send + 'static,
{
    type Stream = AuthGuard<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let (pending, policy) = (self.0.connect(stream), self.1);
        Box::pin(async move { Ok(AuthGuard::new(pending.await?, Start::Messages, policy)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        refuse_insecure: true,
        require_password: false,
    };

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn auth(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        message(b'R', &body)
    }

    /// Feeds `bytes` split at every position into two reads.
    fn every_split(
        policy: Policy,
        start: Start,
        bytes: &[u8],
    ) -> Vec<Result<(), InsecureAuthRequest>> {
        (0..=bytes.len())
            .map(|at| {
                let mut w = AuthWatch::new(start, policy);
                w.feed(&bytes[..at]).and_then(|()| w.feed(&bytes[at..]))
            })
            .collect()
    }

    fn scram(iterations: &str) -> Vec<u8> {
        let mut s = auth(10, b"SCRAM-SHA-256\0\0");
        s.extend(auth(
            11,
            format!("r=abc,s=c2FsdA==,i={iterations}").as_bytes(),
        ));
        s.extend(auth(12, b"v=xyz"));
        s.extend(auth(0, b""));
        s
    }

    #[test]
    fn cleartext_and_md5_requests_are_refused_however_they_arrive() {
        let notice = message(b'N', b"SNOTICE\0\0");
        for (code, rest, what) in [
            (3, &b""[..], "asked for the password in cleartext"),
            (5, &b"salt"[..], "asked for the password as an MD5 hash"),
        ] {
            let mut stream = notice.clone();
            stream.extend(auth(code, rest));
            for r in every_split(STRICT, Start::Messages, &stream) {
                assert_eq!(r, Err(InsecureAuthRequest(what)));
            }
            let mut plain = vec![b'N'];
            plain.extend(&stream);
            for r in every_split(STRICT, Start::SslResponse, &plain) {
                assert_eq!(r, Err(InsecureAuthRequest(what)));
            }
        }
    }

    #[test]
    fn scram_passes_and_after_authentication_ok_nothing_is_read() {
        let mut stream = scram("4096");
        // After AuthenticationOk the bytes are no longer parsed: even an `R 3` look-alike.
        stream.extend(auth(3, b""));
        for r in every_split(STRICT, Start::Messages, &stream) {
            assert_eq!(r, Ok(()));
        }
        let mut w = AuthWatch::new(Start::Messages, STRICT);
        w.feed(&stream).unwrap();
        assert!(w.done() && w.asked_password());
    }

    #[test]
    fn scram_with_few_or_no_iterations_is_refused() {
        for i in ["1", "4095", "", "x"] {
            for r in every_split(STRICT, Start::Messages, &scram(i)) {
                assert_eq!(
                    r,
                    Err(InsecureAuthRequest(
                        "asked for SCRAM with fewer than 4096 iterations"
                    )),
                    "i={i}"
                );
            }
        }
        for r in every_split(Policy::default(), Start::Messages, &scram("1")) {
            assert_eq!(
                r,
                Ok(()),
                "outside the guard's policy the same exchange passes"
            );
        }
    }

    #[test]
    fn a_login_without_a_password_request_proves_nothing() {
        let proof = Policy {
            refuse_insecure: false,
            require_password: true,
        };
        for r in every_split(proof, Start::Messages, &auth(0, b"")) {
            assert!(r.is_err());
        }
        for r in every_split(proof, Start::Messages, &scram("4096")) {
            assert_eq!(r, Ok(()));
        }
    }

    #[test]
    fn tls_underneath_ends_the_watch_on_the_raw_stream() {
        let mut w = AuthWatch::new(Start::SslResponse, STRICT);
        w.feed(b"S\x16\x03\x01garbage").unwrap();
        assert!(w.done());
        // An ErrorResponse instead of authentication is left to tokio-postgres.
        let e = message(b'E', b"SFATAL\0C28000\0Mno\0\0");
        for r in every_split(STRICT, Start::Messages, &e) {
            assert_eq!(r, Ok(()));
        }
    }
}
