//! The session loop of one client: read its messages and forward them to a server connection
//! bound at the first message of a transaction (with the prelude that makes the connection
//! this client's), and forward what the server answers until the transaction ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::relay::{self, Relay, Sink};
use super::transaction::{Prelude, prelude_sql};
use super::{Bound, ClientError, State, fatal, shrink};
use crate::pgwire::WireError;
use crate::pgwire::frame::{self, body};
use crate::pgwire::messages;
use crate::pgwire::sqlstate::{
    ADMIN_SHUTDOWN, CONNECTION_FAILURE, PROTOCOL_VIOLATION, TOO_MANY_CONNECTIONS,
};
use crate::pgwire::tracker::Tracker;
use crate::pooler::config::Mode;
use crate::pooler::pool::{ClientInfo, Pool, PoolError};
use crate::pooler::prepared::Prepared;
use crate::pooler::state::{self, Scan};

pub(super) struct Session {
    pub(super) socket: TcpStream,
    pub(super) buf: BytesMut,
    pub(super) pool: Arc<Pool>,
    /// The client's session settings as the pooler knows them: its startup settings and what
    /// its SET statements left, carried to whichever server connection it gets.
    pub(super) settings: BTreeMap<String, String>,
    shutdown: watch::Receiver<bool>,
    pub(super) state: State,
    pub(super) limit: usize,
    /// The cancel key this client was given.
    pub(super) key: (i32, i32),
    /// The settings of the startup packet, what RESET ALL goes back to.
    pub(super) startup: BTreeMap<String, String>,
    /// Named statements (transaction mode, unless turned off).
    pub(super) prepared: Option<Prepared>,
    /// What this transaction's SQL may have done to the session.
    pub(super) scan: Scan,
    /// What the admin console shows of this client.
    pub(super) info: Arc<ClientInfo>,
    /// When the transaction bound now began (its server connection was bound).
    pub(super) xact_started: Option<Instant>,
    /// When the oldest query the server has not answered with ReadyForQuery was sent.
    query_started: Option<Instant>,
}

pub(super) type Ended = Result<(), (TcpStream, ClientError)>;

impl Session {
    pub(super) fn new(
        socket: TcpStream,
        buf: BytesMut,
        pool: Arc<Pool>,
        settings: BTreeMap<String, String>,
        shutdown: watch::Receiver<bool>,
        key: (i32, i32),
        info: Arc<ClientInfo>,
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
            info,
            xact_started: None,
            query_started: None,
        }
    }

    pub(super) async fn run(mut self) -> Ended {
        let result = self.serve().await;
        self.finish().await;
        match result {
            Ok(()) | Err(ClientError::Gone) | Err(ClientError::Io(_)) => Ok(()),
            Err(e) => Err((self.socket, e)),
        }
    }

    /// Whether a shutdown may end this session now: no server connection, or (session mode,
    /// or pinned) one that is between statements.
    fn interruptible(&self) -> bool {
        match &self.state {
            State::Idle => true,
            State::Bound(b) => {
                (self.pool.settings.mode == Mode::Session || b.pin.is_some())
                    && b.tracker.quiet()
                    && b.relay.settled()
            }
        }
    }

    async fn serve(&mut self) -> Result<(), ClientError> {
        // Messages pipelined behind the startup packet are already here.
        if !self.buf.is_empty() && self.forward_or_refuse().await? {
            return Ok(());
        }
        // One wait for the shutdown for the whole session, polled only while interruptible:
        // a new one each turn would register with the watch and leave it again every turn.
        let mut shutdown = self.shutdown.clone();
        let shutdown = shutdown.changed();
        tokio::pin!(shutdown);
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
                    if self.forward_or_refuse().await? {
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
                    self.forward_server().await?;
                }
                _ = &mut shutdown, if interruptible => {
                    return Err(fatal(ADMIN_SHUTDOWN, "the pooler is shutting down"));
                }
            }
        }
    }

    /// As `forward_client`; for a message over the limit, the error goes out at once and the
    /// rest of the message is read and dropped (for a while) before the session ends, so a
    /// client still writing it reads the error instead of a reset.
    async fn forward_or_refuse(&mut self) -> Result<bool, ClientError> {
        let result = self.forward_client().await;
        let Err(ClientError::Wire(e @ WireError::TooLong { len, .. })) = &result else {
            return result;
        };
        let mut out = Vec::new();
        messages::error_response(&mut out, "FATAL", PROTOCOL_VIOLATION, &e.to_string());
        self.socket.write_all(&out).await?;
        self.pool.metrics.error("protocol");
        tracing::info!(error = %e, "client sent a message over the limit");
        let mut left = (len + 1).saturating_sub(self.buf.len());
        self.buf.clear();
        let mut scratch = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while left > 0 {
                match self.socket.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        Err(ClientError::Gone)
    }

    /// Forwards the complete client messages in the buffer; true when the client said goodbye.
    async fn forward_client(&mut self) -> Result<bool, ClientError> {
        let mut end = 0;
        let mut tags = Vec::new();
        let mut terminate = false;
        loop {
            // A tag a client may not send is refused at once, without waiting for a body its
            // "length" may never bring (a second StartupMessage, say).
            if self
                .buf
                .get(end)
                .is_some_and(|t| !messages::frontend_tag(*t))
            {
                return Err(WireError::Malformed("unexpected message type from a client").into());
            }
            let Some((tag, n)) = frame::frame(&self.buf[end..], self.limit)? else {
                break;
            };
            match tag {
                b'X' => {
                    terminate = true;
                    break;
                }
                _ => tags.push((tag, end, n)),
            }
            end += n;
        }
        if end == 0 {
            return Ok(terminate);
        }
        self.pool.metrics.received_bytes.inc_by(end as u64);
        let syncs = tags.iter().filter(|t| matches!(t.0, b'Q' | b'S')).count();
        self.pool.metrics.queries.inc_by(syncs as u64);
        if syncs > 0 && self.query_started.is_none() {
            self.query_started = Some(Instant::now());
        }
        if self.pool.settings.mode == Mode::Transaction {
            self.scan_client(&tags)?;
        }
        let prelude = match self.state {
            State::Idle => self.bind().await?,
            State::Bound(_) => None,
        };
        // What names a statement on the server: needed only to prepare one.
        let context = if self.prepared.is_some() && tags.iter().any(|t| t.0 == b'P') {
            self.statement_context()
        } else {
            Vec::new()
        };
        let now = self.pool.statement_tick();
        let State::Bound(b) = &mut self.state else {
            return Ok(terminate);
        };
        if b.tracker.idle() {
            // A pinned connection starting its next transaction: cancels reach it again.
            self.pool.serving(self.key, Some(b.lease.conn().key));
            self.xact_started.get_or_insert_with(Instant::now);
        }
        for (tag, _, _) in &tags {
            b.tracker.client(*tag);
        }
        let Bound {
            lease,
            tracker,
            relay,
            ..
        } = &mut **b;
        let conn = lease.conn();
        // The prelude first; named statements renamed for the server, added where it lacks
        // them.
        let edited = match (self.prepared.as_mut(), prelude) {
            (None, None) => None,
            (p, prelude) => {
                let mut out = prelude.unwrap_or_default();
                out.reserve(end + 64);
                match p {
                    Some(p) => {
                        for &(tag, at, n) in &tags {
                            p.client(
                                tag,
                                &self.buf[at..at + n],
                                &context,
                                now,
                                &mut conn.statements,
                                &mut out,
                            )?;
                        }
                        self.pool.metrics.prepares.inc_by(p.take_parses_sent());
                    }
                    None => out.extend_from_slice(&self.buf[..end]),
                }
                Some(out)
            }
        };
        let bytes: &[u8] = edited.as_deref().unwrap_or(&self.buf[..end]);
        // Write to the server while still passing its answers on, so a long pipeline that
        // fills both directions' socket buffers cannot deadlock.
        // Then flush: TLS may hold the last records of a large write until flushed.
        let (mut rd, mut wr) = tokio::io::split(&mut conn.stream);
        let mut written = 0;
        let mut flushed = false;
        let mut lost = false;
        while !flushed {
            tokio::select! {
                n = async {
                    if written < bytes.len() {
                        wr.write(&bytes[written..]).await
                    } else {
                        wr.flush().await.map(|()| 0)
                    }
                } => match n {
                    Err(_) => { lost = true; break; }
                    Ok(0) if written < bytes.len() => { lost = true; break; }
                    Ok(0) => flushed = true,
                    Ok(n) => written += n,
                },
                n = async {
                    conn.buf.reserve(16 * 1024);
                    rd.read_buf(&mut conn.buf).await
                } => match n {
                    Ok(0) | Err(_) => { lost = true; break; }
                    Ok(_) => {
                        let sink = Sink {
                            tracker,
                            statements: self.prepared.as_mut().map(|p| (p, &mut conn.statements)),
                            params: &mut conn.params,
                        };
                        let sent = relay::drain(&mut conn.buf, relay, sink, self.limit, &mut self.socket).await?;
                        self.pool.metrics.sent_bytes.inc_by(sent as u64);
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
        shrink(&mut self.buf);
        Ok(terminate)
    }

    /// What names a server-side statement besides its text and types: the settings that
    /// change how its text is read (search_path, standard_conforming_strings). A search_path
    /// this transaction changed is not known yet: such statements are this client's alone.
    fn statement_context(&self) -> Vec<u8> {
        let mut c = Vec::new();
        for name in ["search_path", "standard_conforming_strings"] {
            if self.scan.settings.iter().any(|s| s == name) {
                c.extend_from_slice(format!("client:{}:{}", self.key.0, self.key.1).as_bytes());
            } else if let Some(v) = self.settings.get(name) {
                c.extend_from_slice(v.as_bytes());
            }
            c.push(0);
        }
        c
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

    /// Binds a server connection; returns the prelude (a simple query) that makes it this
    /// client's, to be sent ahead of the client's first message: when another client used it
    /// last, a reset of everything a session can carry, however it was set; when prepared
    /// statements may have gone stale (DDL), DEALLOCATE ALL; then this client's settings.
    async fn bind(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        self.pool.waiting(&self.info);
        let mut lease = self.pool.checkout().await;
        let pid = lease.as_mut().ok().map(|l| l.conn().key.0);
        self.pool.waited(&self.info, pid);
        self.xact_started = Some(Instant::now());
        let mut lease = lease.map_err(|e| match e {
            PoolError::WaitTimeout { .. } => {
                self.pool.metrics.error("query_wait_timeout");
                fatal(TOO_MANY_CONNECTIONS, e.to_string())
            }
            PoolError::Connect(s) => fatal(
                CONNECTION_FAILURE,
                format!("cannot connect to the server: {s}"),
            ),
        })?;
        let conn = lease.conn();
        let Prelude { sql, reset } = prelude_sql(
            conn,
            self.key,
            &self.settings,
            self.pool.settings.server_reset,
        );
        if reset {
            self.pool.metrics.resets.inc();
        }
        self.pool.metrics.transactions.inc();
        self.pool.serving(self.key, Some(conn.key));
        let mut relay = Relay::default();
        let prelude = sql.map(|sql| {
            relay.prelude = 1;
            let mut out = Vec::with_capacity(sql.len() + 8);
            messages::query(&mut out, &sql);
            out
        });
        self.state = State::Bound(Box::new(Bound {
            lease,
            tracker: Tracker::default(),
            relay,
            pin: None,
        }));
        Ok(prelude)
    }

    /// Forwards what the server sent; releases the connection when the transaction is over.
    async fn forward_server(&mut self) -> Result<(), ClientError> {
        let State::Bound(b) = &mut self.state else {
            return Ok(());
        };
        let Bound {
            lease,
            tracker,
            relay,
            ..
        } = &mut **b;
        let conn = lease.conn();
        let sink = Sink {
            tracker,
            statements: self.prepared.as_mut().map(|p| (p, &mut conn.statements)),
            params: &mut conn.params,
        };
        let sent = relay::drain(&mut conn.buf, relay, sink, self.limit, &mut self.socket).await?;
        self.pool.metrics.sent_bytes.inc_by(sent as u64);
        if tracker.quiet()
            && let Some(started) = self.query_started.take()
        {
            let took = started.elapsed();
            self.pool.metrics.query_duration.observe(took.as_secs_f64());
            self.pool.totals.query_us.fetch_add(
                u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let done = tracker.idle()
            && relay.settled()
            && conn.buf.is_empty()
            && self.prepared.as_ref().is_none_or(Prepared::settled);
        if done && self.pool.settings.mode == Mode::Transaction {
            self.end_transaction().await;
        }
        Ok(())
    }

    /// The server connection died: the client gets an error, the connection is dropped.
    pub(super) fn server_lost(&mut self) -> ClientError {
        self.unpin();
        self.state = State::Idle;
        self.pool.bound(&self.info, None);
        self.query_started = None;
        if let Some(p) = self.prepared.as_mut() {
            p.reset();
        }
        self.pool.serving(self.key, None);
        self.pool.metrics.error("server_lost");
        fatal(
            CONNECTION_FAILURE,
            "the server closed the connection unexpectedly",
        )
    }
}
