//! One client connection: the startup exchange (SSLRequest and GSSENCRequest answered 'N',
//! authentication against the Secret's password, ParameterStatus and BackendKeyData as
//! PostgreSQL sends them), then the session loop that binds a server connection at the first
//! message of a transaction and releases it at ReadyForQuery 'I' (transaction mode) or at the
//! end (session mode). Messages are forwarded as the bytes they arrived as, whole frames at a
//! time, one write per batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::config::{ClientAuth, Mode};
use super::pool::{Lease, Pool, PoolError};
use super::prepared::{Cache, Prepared};
use super::server::{ServerConn, ServerError, read_message};
use super::state::{self, PINS, Scan};
use crate::pgwire::frame::{self, Startup, body};
use crate::pgwire::messages::{self, IDLE, auth};
use crate::pgwire::tracker::Tracker;
use crate::pgwire::{WireError, scram};
use crate::postgres::quote::{Ident, literal};

/// Startup parameters that are not session settings.
const NOT_SETTINGS: [&str; 4] = ["user", "database", "replication", "options"];

/// Session settings PostgreSQL reports with ParameterStatus; a client's own value replaces
/// the server's in what the client is told at startup.
const REPORTED: [&str; 5] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
];

/// How long a client has to finish its startup and authentication.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a client session ended early.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client closed the connection")]
    Gone,
    /// Sent to the client as a FATAL ErrorResponse.
    #[error("{message}")]
    Fatal { code: &'static str, message: String },
}

fn fatal(code: &'static str, message: impl Into<String>) -> ClientError {
    ClientError::Fatal {
        code,
        message: message.into(),
    }
}

/// Serves one client until it leaves, breaks the protocol or the pooler shuts down.
pub async fn serve(mut socket: TcpStream, pool: Arc<Pool>, shutdown: watch::Receiver<bool>) {
    let _ = socket.set_nodelay(true);
    pool.metrics.clients_active.inc();
    let mut buf = BytesMut::with_capacity(8192);
    // A client that never finishes its startup must not hold a max_clients slot for ever.
    let started = tokio::time::timeout(STARTUP_TIMEOUT, startup(&mut socket, &mut buf, &pool))
        .await
        .unwrap_or_else(|_| Err(fatal("08006", "the startup exchange timed out")));
    let outcome = match started {
        Ok((settings, key)) => {
            let ended = Session::new(socket, buf, pool.clone(), settings, shutdown, key)
                .run()
                .await;
            pool.forget(key);
            ended
        }
        Err(e) => Err((socket, e)),
    };
    if let Err((mut socket, e)) = outcome {
        match &e {
            ClientError::Fatal { code, message } => {
                let mut out = Vec::new();
                messages::error_response(&mut out, "FATAL", code, message);
                let _ = socket.write_all(&out).await;
                pool.metrics.error("client_rejected");
                tracing::debug!(%message, "client rejected");
            }
            ClientError::Wire(w) => {
                let mut out = Vec::new();
                messages::error_response(&mut out, "FATAL", "08P01", &w.to_string());
                let _ = socket.write_all(&out).await;
                pool.metrics.error("protocol");
                tracing::info!(error = %w, "client broke the protocol");
            }
            ClientError::Io(_) | ClientError::Gone => {}
        }
    }
    pool.metrics.clients_active.dec();
}

/// Turns a client away before its startup (too many clients) with a FATAL error.
pub async fn refuse(mut socket: TcpStream, pool: Arc<Pool>, code: &str, message: &str) {
    pool.metrics.error("client_refused");
    let mut buf = BytesMut::with_capacity(512);
    // Read the startup packet first so the client sees the error, not a reset.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match frame::startup(&buf) {
                Ok(Some((Startup::Ssl | Startup::GssEnc, n))) => {
                    buf.advance(n);
                    socket.write_all(b"N").await?;
                }
                Ok(None) => {
                    if fill(&mut socket, &mut buf).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let mut out = Vec::new();
    messages::error_response(&mut out, "FATAL", code, message);
    let _ = socket.write_all(&out).await;
}

async fn fill(socket: &mut TcpStream, buf: &mut BytesMut) -> Result<(), ClientError> {
    buf.reserve(8192);
    if socket.read_buf(buf).await? == 0 {
        return Err(ClientError::Gone);
    }
    Ok(())
}

/// Reads one typed message during authentication.
async fn read_auth_message(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<(u8, BytesMut), ClientError> {
    loop {
        if let Some((tag, n)) = frame::frame(buf, 64 * 1024)? {
            return Ok((tag, buf.split_to(n)));
        }
        fill(socket, buf).await?;
    }
}

/// The startup exchange; returns the client's session settings.
async fn startup(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &Arc<Pool>,
) -> Result<(BTreeMap<String, String>, (i32, i32)), ClientError> {
    let params = loop {
        match frame::startup(buf)? {
            None => fill(socket, buf).await?,
            Some((packet, n)) => {
                buf.advance(n);
                match packet {
                    // TLS for clients is off: loopback never leaves the pod.
                    Startup::Ssl | Startup::GssEnc => socket.write_all(b"N").await?,
                    Startup::Cancel { pid, key } => {
                        pool.cancel((pid, key)).await;
                        return Err(ClientError::Gone);
                    }
                    Startup::Params { minor, params } => {
                        // A newer minor version or protocol options: say what is spoken, as
                        // PostgreSQL does, before authentication.
                        let options: Vec<&str> = params
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .filter(|k| k.starts_with("_pq_."))
                            .collect();
                        if minor > 0 || !options.is_empty() {
                            let mut out = Vec::new();
                            messages::negotiate_protocol_version(
                                &mut out,
                                frame::PROTOCOL_3_0,
                                &options,
                            );
                            socket.write_all(&out).await?;
                        }
                        break params;
                    }
                }
            }
        }
    };
    let creds = pool.credentials();
    let want = &creds.upstream;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let user = get("user").ok_or_else(|| fatal("28000", "no user in the startup message"))?;
    let database = get("database").unwrap_or(user);
    if user != want.user {
        return Err(fatal(
            "28000",
            format!("this pooler serves user {:?}, not {user:?}", want.user),
        ));
    }
    if database != want.dbname {
        return Err(fatal(
            "3D000",
            format!(
                "this pooler serves database {:?}, not {database:?}",
                want.dbname
            ),
        ));
    }
    if get("replication").is_some_and(|r| r != "false" && r != "0") {
        return Err(fatal("08P01", "replication connections are not pooled"));
    }
    authenticate(socket, buf, pool, user).await?;

    let mut settings: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if let Some(options) = get("options") {
        settings.extend(parse_options(options).map_err(|m| fatal("22023", m))?);
    }
    // The first client before any server login: learn the server's parameters now, so the
    // client is told server_version, standard_conforming_strings and the rest.
    if pool.server_params().is_empty() {
        let lease = pool
            .checkout()
            .await
            .map_err(|e| fatal("57P03", format!("cannot reach the server yet: {e}")))?;
        lease.release();
    }
    let mut out = Vec::with_capacity(512);
    messages::authentication(&mut out, auth::OK, &[]);
    let mut shown = pool.server_params();
    for k in REPORTED {
        if let Some(v) = settings.get(k) {
            shown.insert(k.to_owned(), v.clone());
        }
    }
    shown.entry("application_name".into()).or_default();
    for (k, v) in &shown {
        messages::parameter_status(&mut out, k, v);
    }
    let mut key = [0u8; 8];
    getrandom::fill(&mut key).map_err(|e| fatal("58000", format!("random: {e}")))?;
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]) & i32::MAX;
    let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    messages::backend_key_data(&mut out, pid, secret);
    messages::ready_for_query(&mut out, IDLE);
    socket.write_all(&out).await?;
    pool.serving((pid, secret), None);
    Ok((settings, (pid, secret)))
}

async fn authenticate(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &Pool,
    user: &str,
) -> Result<(), ClientError> {
    let failed = || {
        fatal(
            "28P01",
            format!("password authentication failed for user {user:?}"),
        )
    };
    let creds = pool.credentials();
    let mut out = Vec::with_capacity(256);
    match pool.settings.client_auth {
        ClientAuth::Trust => Ok(()),
        ClientAuth::Md5 => {
            let mut salt = [0u8; 4];
            getrandom::fill(&mut salt).map_err(|e| fatal("58000", format!("random: {e}")))?;
            messages::authentication(&mut out, auth::MD5, &salt);
            socket.write_all(&out).await?;
            let (tag, msg) = read_auth_message(socket, buf).await?;
            if tag != b'p' {
                return Err(WireError::Malformed("expected a password message").into());
            }
            let (given, _) = frame::cstr(body(&msg))?;
            let expected = postgres_protocol::authentication::md5_hash(
                user.as_bytes(),
                creds.upstream.password.as_bytes(),
                salt,
            );
            if given == expected {
                Ok(())
            } else {
                Err(failed())
            }
        }
        ClientAuth::Scram => {
            let verifier = creds.verifier.as_ref().ok_or_else(failed)?;
            messages::auth_sasl(&mut out);
            socket.write_all(&out).await?;
            let (tag, msg) = read_auth_message(socket, buf).await?;
            if tag != b'p' {
                return Err(WireError::Malformed("expected SASLInitialResponse").into());
            }
            let (mechanism, data) = messages::parse_sasl_initial(body(&msg))?;
            if mechanism != "SCRAM-SHA-256" {
                return Err(fatal(
                    "28000",
                    format!("SASL mechanism {mechanism:?} is not supported"),
                ));
            }
            let mut nonce = [0u8; 18];
            getrandom::fill(&mut nonce).map_err(|e| fatal("58000", format!("random: {e}")))?;
            let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
            let (exchange, first) =
                scram::server_first(verifier, data, &nonce).map_err(|e| match e {
                    scram::ScramError::ChannelBinding => fatal("28000", e.to_string()),
                    _ => failed(),
                })?;
            out.clear();
            messages::authentication(&mut out, auth::SASL_CONTINUE, first.as_bytes());
            socket.write_all(&out).await?;
            let (tag, msg) = read_auth_message(socket, buf).await?;
            if tag != b'p' {
                return Err(WireError::Malformed("expected SASLResponse").into());
            }
            let last =
                scram::server_final(verifier, &exchange, body(&msg)).map_err(|_| failed())?;
            out.clear();
            messages::authentication(&mut out, auth::SASL_FINAL, last.as_bytes());
            socket.write_all(&out).await?;
            Ok(())
        }
    }
}

/// A server connection bound to this client, and what it still owes.
struct Bound {
    lease: Lease,
    tracker: Tracker,
}

/// Where a client session stands.
enum State {
    /// No server connection: between transactions (transaction mode) or before the first.
    Idle,
    Bound(Box<Bound>),
}

struct Session {
    socket: TcpStream,
    buf: BytesMut,
    pool: Arc<Pool>,
    settings: BTreeMap<String, String>,
    shutdown: watch::Receiver<bool>,
    state: State,
    limit: usize,
    /// The cancel key this client was given.
    key: (i32, i32),
    /// The settings of the startup packet, what RESET ALL goes back to.
    startup: BTreeMap<String, String>,
    /// Named statements (transaction mode, unless turned off).
    prepared: Option<Prepared>,
    /// What this transaction's SQL may have done to the session.
    scan: Scan,
    /// The server connection stays with this client between transactions.
    pinned: bool,
}

type Ended = Result<(), (TcpStream, ClientError)>;

/// Forwards the complete server messages in `buf` to the client in one write, feeding the
/// tracker and, in transaction mode, the statement bookkeeping (which drops the answers to
/// messages the pooler added and makes up those to messages it left out). Server messages
/// are bounded only by the server.
async fn drain_server(
    buf: &mut BytesMut,
    tracker: &mut Tracker,
    mut statements: Option<(&mut Prepared, &mut Cache)>,
    client: &mut TcpStream,
) -> Result<(), ClientError> {
    let malformed = |_| fatal("08P01", "the server sent a malformed message");
    let mut end = 0;
    // Set once the bytes to send differ from the bytes received.
    let mut edited: Option<Vec<u8>> = None;
    while let Some((tag, n)) = frame::frame(&buf[end..], usize::MAX >> 1).map_err(malformed)? {
        tracker.server(tag, buf.get(end + 5).copied().unwrap_or(IDLE));
        let mut forward = true;
        let mut replies = Vec::new();
        if let Some((p, cache)) = statements.as_mut() {
            forward = p
                .server(tag, cache)
                .map_err(|e| fatal("08P01", e.to_string()))?;
            p.replies(&mut replies);
        }
        if (!forward || !replies.is_empty()) && edited.is_none() {
            edited = Some(buf[..end].to_vec());
        }
        if let Some(out) = edited.as_mut() {
            if forward {
                out.extend_from_slice(&buf[end..end + n]);
            }
            out.extend_from_slice(&replies);
        }
        end += n;
    }
    match edited {
        Some(out) => client.write_all(&out).await?,
        None if end > 0 => client.write_all(&buf[..end]).await?,
        None => {}
    }
    buf.advance(end);
    Ok(())
}

impl Session {
    fn new(
        socket: TcpStream,
        buf: BytesMut,
        pool: Arc<Pool>,
        settings: BTreeMap<String, String>,
        shutdown: watch::Receiver<bool>,
        key: (i32, i32),
    ) -> Self {
        let limit = pool.settings.max_message_bytes;
        let prepared = (pool.settings.mode == Mode::Transaction
            && pool.settings.max_prepared_statements > 0)
            .then(|| Prepared::new(pool.settings.max_prepared_statements));
        Session {
            socket,
            buf,
            pool,
            startup: settings.clone(),
            settings,
            shutdown,
            state: State::Idle,
            limit,
            key,
            prepared,
            scan: Scan::default(),
            pinned: false,
        }
    }

    async fn run(mut self) -> Ended {
        let result = self.serve().await;
        self.finish().await;
        match result {
            Ok(()) | Err(ClientError::Gone) | Err(ClientError::Io(_)) => Ok(()),
            Err(e) => Err((self.socket, e)),
        }
    }

    /// Whether a shutdown may end this session now: no server connection, or (session mode)
    /// one that is between statements.
    fn interruptible(&self) -> bool {
        match &self.state {
            State::Idle => true,
            State::Bound(b) => {
                (self.pool.settings.mode == Mode::Session || self.pinned) && b.tracker.quiet()
            }
        }
    }

    async fn serve(&mut self) -> Result<(), ClientError> {
        // Messages pipelined behind the startup packet are already here.
        if !self.buf.is_empty() && self.forward_client().await? {
            return Ok(());
        }
        loop {
            let bound = matches!(self.state, State::Bound(_));
            let interruptible = self.interruptible();
            tokio::select! {
                read = async {
                    self.buf.reserve(8192);
                    self.socket.read_buf(&mut self.buf).await
                } => {
                    if read? == 0 {
                        return Err(ClientError::Gone);
                    }
                    if self.forward_client().await? {
                        return Ok(());
                    }
                }
                read = async {
                    match &mut self.state {
                        State::Bound(b) => {
                            let c = b.lease.conn();
                            c.buf.reserve(16 * 1024);
                            c.stream.read_buf(&mut c.buf).await
                        }
                        State::Idle => std::future::pending().await,
                    }
                }, if bound => {
                    let n = read.unwrap_or(0);
                    if n == 0 {
                        return Err(self.server_lost());
                    }
                    self.pool.metrics.bytes_from_server.inc_by(n as u64);
                    self.forward_server().await?;
                }
                _ = self.shutdown.changed(), if interruptible => {
                    return Err(fatal("57P01", "the pooler is shutting down"));
                }
            }
        }
    }

    /// Forwards the complete client messages in the buffer; true when the client said goodbye.
    async fn forward_client(&mut self) -> Result<bool, ClientError> {
        let mut end = 0;
        let mut tags = Vec::new();
        let mut terminate = false;
        while let Some((tag, n)) = frame::frame(&self.buf[end..], self.limit)? {
            match tag {
                b'X' => {
                    terminate = true;
                    break;
                }
                // Startup-phase and server-only tags have no business here.
                b'p' | b'R' | b'Z' | b'T' | b'K' => {
                    return Err(
                        WireError::Malformed("unexpected message type from a client").into(),
                    );
                }
                _ => tags.push((tag, end, n)),
            }
            end += n;
        }
        if end == 0 {
            return Ok(terminate);
        }
        self.pool.metrics.bytes_from_clients.inc_by(end as u64);
        let syncs = tags.iter().filter(|t| matches!(t.0, b'Q' | b'S')).count();
        self.pool.metrics.queries.inc_by(syncs as u64);
        if self.pool.settings.mode == Mode::Transaction {
            self.scan_client(&tags)?;
        }
        if matches!(self.state, State::Idle) {
            self.bind().await?;
        }
        let State::Bound(b) = &mut self.state else {
            return Ok(terminate);
        };
        if b.tracker.idle() {
            // A pinned connection starting its next transaction: cancels reach it again.
            self.pool.serving(self.key, Some(b.lease.conn().key));
        }
        for (tag, _, _) in &tags {
            b.tracker.client(*tag);
        }
        let conn = b.lease.conn();
        // Named statements are renamed for the server, added where it lacks them.
        let edited = match self.prepared.as_mut() {
            Some(p) => {
                let mut out = Vec::with_capacity(end + 64);
                for &(tag, at, n) in &tags {
                    p.client(tag, &self.buf[at..at + n], &mut conn.statements, &mut out)?;
                }
                self.pool.metrics.prepares.inc_by(p.take_parses_sent());
                Some(out)
            }
            None => None,
        };
        let bytes: &[u8] = edited.as_deref().unwrap_or(&self.buf[..end]);
        // Write to the server while still passing its answers on, so a long pipeline that
        // fills both directions' socket buffers cannot deadlock.
        let (mut rd, mut wr) = tokio::io::split(&mut conn.stream);
        let mut written = 0;
        let mut lost = false;
        while written < bytes.len() {
            tokio::select! {
                n = wr.write(&bytes[written..]) => match n {
                    Ok(0) | Err(_) => { lost = true; break; }
                    Ok(n) => written += n,
                },
                n = async {
                    conn.buf.reserve(16 * 1024);
                    rd.read_buf(&mut conn.buf).await
                } => match n {
                    Ok(0) | Err(_) => { lost = true; break; }
                    Ok(n) => {
                        self.pool.metrics.bytes_from_server.inc_by(n as u64);
                        let statements = self.prepared.as_mut().map(|p| (p, &mut conn.statements));
                        drain_server(&mut conn.buf, &mut b.tracker, statements, &mut self.socket).await?;
                    }
                },
            }
        }
        if lost {
            return Err(self.server_lost());
        }
        // Answers the pooler makes up that are due now (a ParseComplete for a statement the
        // server already has, with nothing before it unanswered).
        if let Some(p) = self.prepared.as_mut() {
            let mut replies = Vec::new();
            p.replies(&mut replies);
            if !replies.is_empty() {
                self.socket.write_all(&replies).await?;
            }
        }
        self.buf.advance(end);
        Ok(terminate)
    }

    /// Notes what the client's SQL may do to the session (transaction mode).
    fn scan_client(&mut self, tags: &[(u8, usize, usize)]) -> Result<(), ClientError> {
        for &(tag, at, n) in tags {
            let msg = body(&self.buf[at..at + n]);
            match tag {
                b'Q' => self.scan.merge(state::scan(frame::cstr(msg)?.0)),
                b'P' => {
                    let (_, rest) = frame::cstr(msg)?;
                    self.scan.merge(state::scan(frame::cstr(rest)?.0));
                }
                b'B' => {
                    let (_, rest) = frame::cstr(msg)?;
                    let (name, _) = frame::cstr(rest)?;
                    if let Some(stmt) = self.prepared.as_ref().and_then(|p| p.get(name)) {
                        self.scan.merge(stmt.effects.clone());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Binds a server connection and brings its session settings in line with this client's.
    async fn bind(&mut self) -> Result<(), ClientError> {
        self.pool.metrics.clients_waiting.inc();
        let lease = self.pool.checkout().await;
        self.pool.metrics.clients_waiting.dec();
        let mut lease = lease.map_err(|e| match e {
            PoolError::WaitTimeout { .. } => {
                self.pool.metrics.error("query_wait_timeout");
                fatal("53300", e.to_string())
            }
            PoolError::Connect(s) => fatal("08006", format!("cannot connect to the server: {s}")),
        })?;
        if let Some(sql) = settings_sql(&self.settings, &lease.conn().applied) {
            run(lease.conn(), &sql, self.limit).await.map_err(|e| {
                fatal(
                    "08006",
                    format!("restoring session settings on the server: {e}"),
                )
            })?;
            lease.conn().applied = self.settings.clone();
        }
        self.pool.metrics.transactions.inc();
        self.pool.serving(self.key, Some(lease.conn().key));
        self.state = State::Bound(Box::new(Bound {
            lease,
            tracker: Tracker::default(),
        }));
        Ok(())
    }

    /// Forwards what the server sent; releases the connection when the transaction is over.
    async fn forward_server(&mut self) -> Result<(), ClientError> {
        let State::Bound(b) = &mut self.state else {
            return Ok(());
        };
        let conn = b.lease.conn();
        let statements = self.prepared.as_mut().map(|p| (p, &mut conn.statements));
        drain_server(&mut conn.buf, &mut b.tracker, statements, &mut self.socket).await?;
        let done = b.tracker.idle()
            && conn.buf.is_empty()
            && self.prepared.as_ref().is_none_or(Prepared::settled);
        if done && self.pool.settings.mode == Mode::Transaction {
            self.end_transaction().await;
        }
        Ok(())
    }

    /// A transaction is over: learns what it left on the session (settings to carry to the
    /// client's next server connection, state that pins this one), then lets the connection
    /// go unless it is pinned.
    async fn end_transaction(&mut self) {
        let scan = std::mem::take(&mut self.scan);
        let State::Bound(b) = &mut self.state else {
            return;
        };
        let conn = b.lease.conn();
        if scan.reset_all {
            conn.applied.clear();
            self.settings = self.startup.clone();
        }
        let look = scan.may_pin || scan.reset_all || self.pinned;
        let names = scan.settings;
        let mut pinned_by = Vec::new();
        if look || !names.is_empty() {
            let row = match run(conn, &state::check_sql(look, &names), self.limit).await {
                Ok(row) => row.unwrap_or_default(),
                Err(e) => {
                    // The connection's state is unknown: it must not serve anyone else.
                    tracing::warn!(error = %e, "reading the session state failed; closing that server connection");
                    self.pool.metrics.error("state_check");
                    self.unpin();
                    self.pool.serving(self.key, None);
                    self.state = State::Idle;
                    return;
                }
            };
            let (pins, values) = row.split_at(if look { PINS.len().min(row.len()) } else { 0 });
            for (name, value) in names.iter().zip(values) {
                match value {
                    Some(v) => {
                        self.settings.insert(name.clone(), v.clone());
                        conn.applied.insert(name.clone(), v.clone());
                    }
                    None => {
                        self.settings.remove(name);
                        conn.applied.remove(name);
                    }
                }
            }
            for ((reason, _), count) in PINS.iter().zip(pins) {
                if count.as_deref().is_some_and(|c| c != "0") {
                    pinned_by.push(*reason);
                }
            }
        }
        // From here a cancel for this client does nothing: it has no statement running.
        self.pool.serving(self.key, None);
        if !pinned_by.is_empty() {
            if !self.pinned {
                self.pinned = true;
                self.pool.metrics.pinned.inc();
                for reason in &pinned_by {
                    self.pool.metrics.pin(reason);
                }
                tracing::debug!(reasons = ?pinned_by, "server connection pinned to its client");
            }
            return;
        }
        self.unpin();
        if let State::Bound(b) = std::mem::replace(&mut self.state, State::Idle) {
            b.lease.release();
        }
    }

    fn unpin(&mut self) {
        if std::mem::take(&mut self.pinned) {
            self.pool.metrics.pinned.dec();
        }
    }

    /// The server connection died: the client gets an error, the connection is dropped.
    fn server_lost(&mut self) -> ClientError {
        self.state = State::Idle;
        self.unpin();
        if let Some(p) = self.prepared.as_mut() {
            p.reset();
        }
        self.pool.serving(self.key, None);
        self.pool.metrics.error("server_lost");
        fatal("08006", "the server closed the connection unexpectedly")
    }

    /// At the end of a session: a clean server connection goes back (reset in session
    /// mode, or when this client pinned it); one in a transaction or mid-statement is
    /// closed, never reused dirty.
    async fn finish(&mut self) {
        let pinned = self.pinned;
        self.unpin();
        let State::Bound(mut b) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        if !b.tracker.idle()
            || !b.lease.conn().buf.is_empty()
            || !self.prepared.as_ref().is_none_or(Prepared::settled)
        {
            return;
        }
        if self.pool.settings.mode == Mode::Session || pinned {
            let conn = b.lease.conn();
            if run(conn, "DISCARD ALL", self.limit).await.is_err() {
                return;
            }
            conn.applied.clear();
            conn.statements.clear();
        }
        b.lease.release();
    }
}

/// The `-c name=value` (or `--name=value`) settings of the startup `options` parameter,
/// with libpq's backslash escapes. Pure.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("options: -c without a setting")?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_owned()
        } else {
            return Err(format!(
                "options: {w:?} is not supported; use -c name=value"
            ));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("options: {setting:?} is not name=value"))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

/// The SET/RESET statements that give `conn` this client's settings; `None` when it has them.
fn settings_sql(
    want: &BTreeMap<String, String>,
    applied: &BTreeMap<String, String>,
) -> Option<String> {
    if applied == want {
        return None;
    }
    let mut sql = String::new();
    for (k, v) in want {
        if applied.get(k) != Some(v) {
            sql.push_str(&format!(
                "SELECT pg_catalog.set_config({}, {}, false);",
                literal(k),
                literal(v)
            ));
        }
    }
    for k in applied.keys().filter(|k| !want.contains_key(*k)) {
        if let Ok(name) = Ident::new(k) {
            sql.push_str(&format!("RESET {name};"));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// Runs `sql` on the server connection and reads through its ReadyForQuery; returns the last
/// row. An error from the server fails it.
async fn run(
    conn: &mut ServerConn,
    sql: &str,
    limit: usize,
) -> Result<Option<Vec<Option<String>>>, ServerError> {
    let mut out = Vec::with_capacity(sql.len() + 8);
    messages::query(&mut out, sql);
    conn.stream.write_all(&out).await?;
    let mut failure = None;
    let mut row = None;
    loop {
        let (tag, msg) = read_message(conn, limit).await?;
        match tag {
            b'E' => {
                let (code, message) = messages::parse_error(body(&msg));
                failure = Some(ServerError::Refused { code, message });
            }
            b'S' => {
                let (k, v) = messages::parse_parameter_status(body(&msg))?;
                conn.params.insert(k.to_owned(), v.to_owned());
            }
            b'D' => row = Some(messages::parse_data_row(body(&msg))?),
            b'Z' => return failure.map_or(Ok(row), Err),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_become_settings() {
        assert_eq!(
            parse_options("-c search_path=app\\,\\ public --statement-timeout=5s").unwrap(),
            vec![
                ("search_path".to_owned(), "app, public".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned())
            ]
        );
        assert_eq!(
            parse_options("-c work_mem=4MB").unwrap(),
            vec![("work_mem".to_owned(), "4MB".to_owned())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn settings_are_set_and_reset_with_quoted_names_and_values() {
        let want = BTreeMap::from([
            ("application_name".to_owned(), "it's me".to_owned()),
            ("search_path".to_owned(), "\"My Schema\", public".to_owned()),
        ]);
        let applied = BTreeMap::from([
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("application_name".to_owned(), "it's me".to_owned()),
        ]);
        let sql = settings_sql(&want, &applied).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('search_path', '\"My Schema\", public', false);RESET \"TimeZone\";"
        );
        assert_eq!(settings_sql(&want, &want), None);
    }
}
