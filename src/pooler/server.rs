//! One server connection: TCP, TLS as the sslmode says (the operator's rustls connector
//! configuration), the startup and authentication exchange (SCRAM-SHA-256, md5 or cleartext,
//! as the server asks), and the parameters it reports.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::config::Upstream;
use crate::api::SslMode;
use crate::pgwire::WireError;
use crate::pgwire::frame::{body, frame};
use crate::pgwire::messages::{self, auth};

/// The largest message accepted from the server during startup.
const STARTUP_LIMIT: usize = 1 << 20;

/// Why a server connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to the server timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server does not offer TLS, and sslmode {0} requires it")]
    NoTls(&'static str),
    #[error("the server refused the login: {message} (SQLSTATE {code})")]
    Refused { code: String, message: String },
    #[error("the server asked for an authentication method dbconn does not support ({0})")]
    AuthMethod(i32),
    #[error("SCRAM with the server failed: {0}")]
    Scram(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("I/O with the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server broke the protocol: {0}")]
    Protocol(#[from] WireError),
}

impl ServerError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerError::Connect { .. } => "unreachable",
            ServerError::Timeout(_) => "timeout",
            ServerError::Tls(_) | ServerError::NoTls(_) => "tls",
            ServerError::Refused { .. } | ServerError::AuthMethod(_) | ServerError::Scram(_) => {
                "auth"
            }
            ServerError::Closed | ServerError::Io(_) | ServerError::Protocol(_) => "io",
        }
    }
}

/// Plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An authenticated server connection, ready for queries.
pub struct ServerConn {
    pub stream: Stream,
    /// Bytes read from the server and not yet forwarded.
    pub buf: BytesMut,
    /// ParameterStatus values the server reported.
    pub params: BTreeMap<String, String>,
    /// Session settings the pooler made on behalf of clients (name → value).
    pub applied: BTreeMap<String, String>,
    /// The clients' named statements prepared on it (transaction mode).
    pub statements: super::prepared::Cache,
    /// The server's BackendKeyData, for cancelling its queries.
    pub key: (i32, i32),
    pub tls: bool,
    pub created: Instant,
    pub idle_since: Instant,
    /// Which upstream configuration it was made with (credentials may have changed since).
    pub generation: u64,
    /// The cancel key of the client that used it last; `None` while its session is as new.
    pub last_client: Option<(i32, i32)>,
    /// A transaction on it may have changed session state unseen (see `state::plain`): it
    /// is reset before another client gets it.
    pub dirty: bool,
}

impl ServerConn {
    /// False when the server has closed it or sent something while it sat idle (a
    /// shutdown's FATAL, say): such a connection must not be handed out.
    pub fn alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.tcp_try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn tcp_try_read(&self, probe: &mut [u8]) -> std::io::Result<usize> {
        self.stream.tcp().try_read(probe)
    }
}

/// Connects and logs in, as the sslmode prescribes, within `timeout`.
pub async fn connect(
    u: &Upstream,
    application_name: &str,
    timeout: Duration,
    generation: u64,
) -> Result<ServerConn, ServerError> {
    let attempt = async {
        match u.sslmode {
            SslMode::Disable => open(u, application_name, Wire::Plain).await,
            SslMode::Allow => match open(u, application_name, Wire::Plain).await {
                Err(ServerError::Refused { .. }) => open(u, application_name, Wire::Tls).await,
                other => other,
            },
            SslMode::Prefer => open(u, application_name, Wire::TlsThenPlain).await,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                open(u, application_name, Wire::Tls).await
            }
        }
    };
    let mut conn = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ServerError::Timeout(timeout))??;
    conn.generation = generation;
    Ok(conn)
}

#[derive(Clone, Copy)]
enum Wire {
    Plain,
    Tls,
    TlsThenPlain,
}

async fn open(u: &Upstream, application_name: &str, wire: Wire) -> Result<ServerConn, ServerError> {
    let addr = format!("{}:{}", u.host, u.port);
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|source| ServerError::Connect {
            addr: addr.clone(),
            source,
        })?;
    tcp.set_nodelay(true)?;
    let stream = negotiate(u, tcp, wire).await?;
    let tls = matches!(stream, Stream::Tls(_));
    let now = Instant::now();
    let mut conn = ServerConn {
        stream,
        buf: BytesMut::with_capacity(16 * 1024),
        params: BTreeMap::new(),
        applied: BTreeMap::new(),
        statements: Default::default(),
        key: (0, 0),
        tls,
        created: now,
        idle_since: now,
        generation: 0,
        last_client: None,
        dirty: false,
    };
    login(&mut conn, u, application_name).await?;
    Ok(conn)
}

/// SSLRequest and TLS as `wire` says, on a fresh TCP connection.
async fn negotiate(u: &Upstream, mut tcp: TcpStream, wire: Wire) -> Result<Stream, ServerError> {
    Ok(match wire {
        Wire::Plain => Stream::Plain(tcp),
        Wire::Tls | Wire::TlsThenPlain => {
            let mut req = Vec::with_capacity(8);
            messages::ssl_request(&mut req);
            tcp.write_all(&req).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            match (answer[0], wire) {
                (b'S', _) => Stream::Tls(Box::new(tls(u, tcp).await?)),
                (b'N', Wire::TlsThenPlain) => Stream::Plain(tcp),
                (b'N', _) => return Err(ServerError::NoTls(u.sslmode.as_str())),
                _ => {
                    return Err(ServerError::Protocol(WireError::Malformed(
                        "unexpected answer to SSLRequest",
                    )));
                }
            }
        }
    })
}

/// Asks the server to cancel what backend `target` (pid, secret key) is running, over the
/// same TLS settings as the pool's connections, and returns once the server has acted on it
/// (it closes the connection after signalling the backend).
pub async fn cancel(
    u: &Upstream,
    target: (i32, i32),
    timeout: Duration,
) -> Result<(), ServerError> {
    let attempt = async {
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|source| ServerError::Connect {
                addr: format!("{}:{}", u.host, u.port),
                source,
            })?;
        let wire = match u.sslmode {
            SslMode::Disable | SslMode::Allow => Wire::Plain,
            SslMode::Prefer => Wire::TlsThenPlain,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Wire::Tls,
        };
        let mut stream = negotiate(u, tcp, wire).await?;
        let mut packet = Vec::with_capacity(16);
        messages::cancel_request(&mut packet, target.0, target.1);
        stream.write_all(&packet).await?;
        stream.flush().await?;
        // The server closes the connection once it has signalled the backend: only then is
        // the cancel done (and the backend's connection safe to give to another client).
        let mut rest = [0u8; 256];
        while !matches!(stream.read(&mut rest).await, Ok(0) | Err(_)) {}
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ServerError::Timeout(timeout))?
}

async fn tls(
    u: &Upstream,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ServerError> {
    // allow and prefer encrypt without verifying, as libpq does (client_config knows).
    let config = crate::postgres::tls::client_config(u.sslmode, &u.tls)
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .ok_or_else(|| ServerError::Tls("TLS asked for with sslmode disable".into()))?;
    let name = u.tls.server_name.clone().unwrap_or_else(|| u.host.clone());
    let name = ServerName::try_from(name.clone())
        .map_err(|_| ServerError::Tls(format!("bad server name {name:?}")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ServerError::Tls(e.to_string()))
}

/// Reads one whole message from the server into a new buffer: (tag, frame).
pub async fn read_message(
    conn: &mut ServerConn,
    limit: usize,
) -> Result<(u8, BytesMut), ServerError> {
    loop {
        if let Some((tag, n)) = frame(&conn.buf, limit)? {
            return Ok((tag, conn.buf.split_to(n)));
        }
        conn.buf.reserve(8192);
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(ServerError::Closed);
        }
    }
}

async fn login(
    conn: &mut ServerConn,
    u: &Upstream,
    application_name: &str,
) -> Result<(), ServerError> {
    let mut out = Vec::with_capacity(256);
    messages::startup_message(
        &mut out,
        &[
            ("user", &u.user),
            ("database", &u.dbname),
            ("application_name", application_name),
        ],
    );
    conn.stream.write_all(&out).await?;
    let mut scram: Option<ScramSha256> = None;
    // A SCRAM exchange proves the server too; it must finish before AuthenticationOk.
    let mut scram_done = false;
    loop {
        let (tag, msg) = read_message(conn, STARTUP_LIMIT).await?;
        let b = body(&msg);
        out.clear();
        match tag {
            b'R' => {
                let (code, data) = messages::parse_authentication(b)?;
                match code {
                    auth::OK if scram.is_some() && !scram_done => {
                        return Err(ServerError::Scram(
                            "the server skipped SCRAM's final message".into(),
                        ));
                    }
                    auth::OK => {}
                    auth::CLEARTEXT => messages::password(&mut out, &u.password),
                    auth::MD5 => {
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(WireError::Malformed("md5 salt"))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            u.user.as_bytes(),
                            u.password.as_bytes(),
                            salt,
                        );
                        messages::password(&mut out, &hash);
                    }
                    auth::SASL => {
                        let offered = data.split(|c| *c == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offered {
                            return Err(ServerError::AuthMethod(code));
                        }
                        let s =
                            ScramSha256::new(u.password.as_bytes(), ChannelBinding::unsupported());
                        messages::sasl_initial_response(&mut out, "SCRAM-SHA-256", s.message());
                        scram = Some(s);
                    }
                    auth::SASL_CONTINUE => {
                        let s = scram
                            .as_mut()
                            .ok_or(WireError::Malformed("SASL out of order"))?;
                        s.update(data)
                            .map_err(|e| ServerError::Scram(e.to_string()))?;
                        messages::sasl_response(&mut out, s.message());
                    }
                    auth::SASL_FINAL => {
                        let s = scram
                            .as_mut()
                            .ok_or(WireError::Malformed("SASL out of order"))?;
                        s.finish(data)
                            .map_err(|e| ServerError::Scram(e.to_string()))?;
                        scram_done = true;
                    }
                    other => return Err(ServerError::AuthMethod(other)),
                }
                if !out.is_empty() {
                    conn.stream.write_all(&out).await?;
                }
            }
            b'E' => {
                let (code, message) = messages::parse_error(b);
                return Err(ServerError::Refused { code, message });
            }
            b'S' => {
                let (name, value) = messages::parse_parameter_status(b)?;
                conn.params.insert(name.to_owned(), value.to_owned());
            }
            b'K' => conn.key = messages::parse_backend_key_data(b)?,
            b'Z' => return Ok(()),
            // NoticeResponse and anything else harmless during startup.
            _ => {}
        }
    }
}
