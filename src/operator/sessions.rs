//! Administrative sessions kept open between reconciles.
//!
//! Opening one costs the server a backend (a fork and its catalog caches), a TLS handshake
//! and a SCRAM exchange, and the operator as much again; a reconcile needs one or two. So
//! sessions that served a reconcile that succeeded are kept, per endpoint, for the next one.
//!
//! A session is reused only for an equal [`Endpoint`]: the same host, port, database, user,
//! password, sslmode and TLS material. A changed admin password or CA opens new sessions, and
//! a tenant's inline server is never reached through a session another namespace opened
//! unless it names the same server with the same credentials (which would log in anyway).
//! A session that saw an error is closed, never kept: it may sit in an aborted transaction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::postgres::{ConnectError, Endpoint, Session, connect};

/// How long an idle session is kept. Short: a server's `idle_session_timeout` or a
/// restart ends sessions, and a rotated admin password should stop being used soon.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A session idle for longer is checked with an empty query before it is lent again.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long that check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the server still answers on `session`, within CHECK_TIMEOUT.
async fn answers(session: &Session) -> bool {
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, session.client.simple_query("")).await,
        Ok(Ok(_))
    )
}

pub struct Sessions {
    idle: Mutex<HashMap<Endpoint, Vec<(Session, Instant)>>>,
    /// Idle sessions kept per endpoint (each counts against the server's max_connections
    /// and the admin role's CONNECTION LIMIT).
    max_idle: usize,
}

/// A session lent to one reconcile. Dropped, it closes; [`Sessions::put_back`] keeps it.
pub struct Lent {
    session: Session,
    endpoint: Endpoint,
}

impl std::ops::Deref for Lent {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl Sessions {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::default(),
            max_idle,
        }
    }

    /// An idle session to `endpoint` if one is kept and open, else a new one.
    ///
    /// # Errors
    /// Those of [`connect`], when a new session has to be opened.
    pub async fn get(&self, endpoint: Endpoint) -> Result<Lent, ConnectError> {
        while let Some((session, idle_for)) = self.take(&endpoint) {
            // A session idle for a while may be gone without its socket knowing (a failover,
            // a NAT that forgot it): one round trip says, rather than a reconcile's time-out.
            if idle_for < CHECK_AFTER || answers(&session).await {
                return Ok(Lent { session, endpoint });
            }
        }
        let session = connect(&endpoint).await?;
        Ok(Lent { session, endpoint })
    }

    /// The most recently used idle session to `endpoint` (the others expire sooner), and
    /// how long it was idle.
    fn take(&self, endpoint: &Endpoint) -> Option<(Session, Duration)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.get_mut(endpoint)?;
        let now = Instant::now();
        while let Some((session, since)) = kept.pop() {
            let idle_for = now.duration_since(since);
            if !session.client.is_closed() && idle_for < IDLE_TIMEOUT {
                return Some((session, idle_for));
            }
        }
        idle.remove(endpoint);
        None
    }

    /// Keeps `lent` for the next reconcile. Only a session whose every statement succeeded
    /// (no transaction left open) may come back.
    pub fn put_back(&self, lent: Lent) {
        if lent.session.client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.entry(lent.endpoint).or_default();
        if kept.len() < self.max_idle {
            kept.push((lent.session, Instant::now()));
        }
    }

    /// Closes the sessions idle for longer than [`IDLE_TIMEOUT`]; returns how many are kept.
    pub fn expire(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|_, kept| {
            kept.retain(|(s, since)| {
                !s.client.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
            });
            !kept.is_empty()
        });
        idle.values().map(Vec::len).sum()
    }

    /// Closes every idle session (at shutdown, so the server sees them end).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
