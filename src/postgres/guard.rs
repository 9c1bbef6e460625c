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

/// The server asked for the password in a form that reveals it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server asked for the password {0}")]
pub struct InsecureAuthRequest(pub &'static str);

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
    /// Authentication is over (or TLS took over below): nothing more to check.
    Done,
}

impl AuthWatch {
    pub fn new(start: Start) -> Self {
        let state = match start {
            Start::SslResponse => State::SslResponse,
            Start::Messages => State::Head {
                buf: [0; 9],
                have: 0,
            },
        };
        Self { state }
    }

    /// Whether anything is left to watch.
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Reads the next bytes from the server; an error for a cleartext or MD5 request.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InsecureAuthRequest> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::SslResponse => {
                    self.state = match bytes[0] {
                        b'N' => State::Head {
                            buf: [0; 9],
                            have: 0,
                        },
                        // 'S' (TLS below us) or anything else (tokio-postgres fails on it).
                        _ => State::Done,
                    };
                    bytes = &bytes[1..];
                }
                State::Body { left } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::Head {
                            buf: [0; 9],
                            have: 0,
                        };
                    }
                }
                State::Head { buf, have } => {
                    // 5 bytes of header, and for an Authentication message 4 more: its code.
                    let want = if *have >= 1 && buf[0] == b'R' { 9 } else { 5 };
                    let n = (want - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 5 && buf[0] == b'R' {
                        continue;
                    }
                    if *have < want {
                        continue;
                    }
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    let consumed = *have - 1;
                    if buf[0] == b'R' {
                        match u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) {
                            0 => {
                                self.state = State::Done;
                                continue;
                            }
                            3 => return Err(InsecureAuthRequest("in cleartext")),
                            5 => return Err(InsecureAuthRequest("as an MD5 hash")),
                            _ => {}
                        }
                    }
                    let left = len.saturating_sub(consumed);
                    self.state = if left == 0 {
                        State::Head {
                            buf: [0; 9],
                            have: 0,
                        }
                    } else {
                        State::Body { left }
                    };
                }
            }
        }
        Ok(())
    }
}

/// A stream that fails its read when the server asks for the password insecurely.
pub struct AuthGuard<S> {
    inner: S,
    watch: AuthWatch,
}

impl<S> AuthGuard<S> {
    pub fn new(inner: S, start: Start) -> Self {
        Self {
            inner,
            watch: AuthWatch::new(start),
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
pub struct GuardedConnect<T>(pub T);

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
        let pending = self.0.connect(stream);
        Box::pin(async move { Ok(AuthGuard::new(pending.await?, Start::Messages)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_split(start: Start, bytes: &[u8]) -> Vec<Result<(), InsecureAuthRequest>> {
        (0..=bytes.len())
            .map(|at| {
                let mut w = AuthWatch::new(start);
                w.feed(&bytes[..at]).and_then(|()| w.feed(&bytes[at..]))
            })
            .collect()
    }

    #[test]
    fn cleartext_and_md5_requests_are_refused_however_they_arrive() {
        let notice = message(b'N', b"SNOTICE\0\0");
        for (code, rest, what) in [
            (3, &b""[..], "in cleartext"),
            (5, &b"salt"[..], "as an MD5 hash"),
        ] {
            let mut stream = notice.clone();
            stream.extend(auth(code, rest));
            for r in every_split(Start::Messages, &stream) {
                assert_eq!(r, Err(InsecureAuthRequest(what)));
            }
            let mut plain = vec![b'N'];
            plain.extend(&stream);
            for r in every_split(Start::SslResponse, &plain) {
                assert_eq!(r, Err(InsecureAuthRequest(what)));
            }
        }
    }

    #[test]
    fn scram_passes_and_after_authentication_ok_nothing_is_read() {
        let mut stream = auth(10, b"SCRAM-SHA-256\0\0");
        stream.extend(auth(11, b"r=abc,s=c2FsdA==,i=4096"));
        stream.extend(auth(12, b"v=xyz"));
        stream.extend(auth(0, b""));
        // After AuthenticationOk the bytes are no longer parsed: even an `R 3` look-alike.
        stream.extend(auth(3, b""));
        for r in every_split(Start::Messages, &stream) {
            assert_eq!(r, Ok(()));
        }
        let mut w = AuthWatch::new(Start::Messages);
        w.feed(&stream).unwrap();
        assert!(w.done());
    }

    #[test]
    fn tls_underneath_ends_the_watch_on_the_raw_stream() {
        let mut w = AuthWatch::new(Start::SslResponse);
        w.feed(b"S\x16\x03\x01garbage").unwrap();
        assert!(w.done());
        // An ErrorResponse instead of authentication is left to tokio-postgres.
        let e = message(b'E', b"SFATAL\0C28000\0Mno\0\0");
        for r in every_split(Start::Messages, &e) {
            assert_eq!(r, Ok(()));
        }
    }
}
