//! The pool of server connections: at most `pool_size` exist; a client waits for one up to
//! `query_wait_timeout`. A `Lease` returns its connection on `release`, and closes it when
//! dropped without one (a dirty connection is never handed to another client).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::{Settings, Upstream};
use super::metrics::Metrics;
use super::server::{self, ServerConn, ServerError};

/// A BackendKeyData: process id and secret key.
pub type BackendKey = (i32, i32);

/// Why a client got no server connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "no server connection became free within query_wait_timeout ({wait:?}); the pool holds {size}"
    )]
    WaitTimeout { wait: Duration, size: usize },
    #[error("cannot connect to the server: {0}")]
    Connect(#[from] ServerError),
}

/// What the pooler connects with, swapped as a whole when the Secret changes.
pub struct Credentials {
    pub upstream: Arc<Upstream>,
    pub verifier: Option<crate::pgwire::scram::Verifier>,
    pub generation: u64,
}

/// Spellings of one reported setting a pool remembers (see `Pool::spelling`).
const SPELLINGS: usize = 64;

pub struct Pool {
    pub settings: Arc<Settings>,
    credentials: RwLock<Arc<Credentials>>,
    idle: Mutex<Vec<ServerConn>>,
    permits: Arc<Semaphore>,
    /// The parameters the server reported last, shown to clients at startup.
    server_params: RwLock<BTreeMap<String, String>>,
    /// How the server spells a reported setting's value a client gave otherwise
    /// (`timezone=asia/tokyo` is `Asia/Tokyo`): name → value as given → as the server
    /// reports it. At most `SPELLINGS` values per name (the names are the server's reported
    /// settings, a dozen or so).
    spellings: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Whether the last attempt to log in upstream worked.
    ready: AtomicBool,
    generation: AtomicU64,
    /// Which backend serves which client, and the cancels on their way to a backend.
    cancels: Mutex<Cancels>,
    /// Signalled when a cancel is done (the server has acted on it).
    cancel_done: tokio::sync::Notify,
    /// The statement clock: when each Parse happened, so a server's copy of a statement is
    /// known to be as new as a client's Parse (see `prepared`).
    statement_clock: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// The logged-in clients by cancel key, for the admin console and maxwait.
    clients: Mutex<std::collections::HashMap<BackendKey, Arc<ClientInfo>>>,
    /// Totals for the console's SHOW STATS (the histograms keep no sums one can read).
    pub totals: Totals,
    /// While true (the console's PAUSE), no server connection is handed out.
    paused: tokio::sync::watch::Sender<bool>,
    /// The console's RELOAD: read the mounted Secret now.
    pub reload: tokio::sync::Notify,
    /// When the pool started: the clock of `ClientInfo::waiting_since`.
    epoch: Instant,
}

/// An idle server connection, as SHOW SERVERS and SHOW PREPARED say it.
pub struct IdleServer {
    pub pid: i32,
    pub tls: bool,
    pub age: Duration,
    pub idle: Duration,
    /// Another client's session is on it: reset before the next client (sv_used).
    pub used: bool,
    /// Named statements prepared on it.
    pub statements: usize,
}

/// Sums since start, in microseconds where they are times.
#[derive(Default)]
pub struct Totals {
    pub xact_us: AtomicU64,
    pub query_us: AtomicU64,
    pub wait_us: AtomicU64,
}

/// A logged-in client as the console shows it. Its state changes by atomics on the hot path;
/// the map it sits in is locked only when a client comes or goes.
pub struct ClientInfo {
    pub addr: Option<std::net::SocketAddr>,
    pub application_name: String,
    pub connect_time: std::time::SystemTime,
    state: std::sync::atomic::AtomicU8,
    /// Microseconds since the pool's epoch when it started waiting; 0 when not waiting.
    waiting_since: AtomicU64,
    /// The server backend serving it, while it has one (0 when none).
    server_pid: std::sync::atomic::AtomicI32,
}

/// What a client is doing, as SHOW CLIENTS says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Between transactions, with no server connection.
    Idle = 0,
    Waiting = 1,
    /// Bound to a server connection.
    Active = 2,
}

impl ClientInfo {
    pub fn new(addr: Option<std::net::SocketAddr>, application_name: String) -> ClientInfo {
        ClientInfo {
            addr,
            application_name,
            connect_time: std::time::SystemTime::now(),
            state: Default::default(),
            waiting_since: Default::default(),
            server_pid: Default::default(),
        }
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn server_pid(&self) -> Option<i32> {
        Some(self.server_pid.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }
}

/// Cancel bookkeeping, under one lock so a cancel and a release never cross.
#[derive(Default)]
struct Cancels {
    /// Each client's cancel key (the BackendKeyData the pooler gave it) → the key of the
    /// server backend running its statements, while it has one.
    /// (Ordered maps: a few comparisons of two integers cost less than hashing them, twice
    /// per transaction.)
    serving: BTreeMap<BackendKey, Option<BackendKey>>,
    /// Backends with cancels in flight, and how many.
    in_flight: BTreeMap<BackendKey, usize>,
}

impl Pool {
    pub fn new(settings: Arc<Settings>, credentials: Credentials, metrics: Arc<Metrics>) -> Pool {
        metrics
            .pool_size
            .set(i64::try_from(settings.pool_size).unwrap_or(i64::MAX));
        Pool {
            permits: Arc::new(Semaphore::new(settings.pool_size)),
            generation: AtomicU64::new(credentials.generation),
            credentials: RwLock::new(Arc::new(credentials)),
            settings,
            idle: Mutex::new(Vec::new()),
            server_params: RwLock::new(BTreeMap::new()),
            spellings: Mutex::default(),
            ready: AtomicBool::new(false),
            cancels: Mutex::new(Cancels::default()),
            cancel_done: tokio::sync::Notify::new(),
            statement_clock: AtomicU64::new(0),
            metrics,
            clients: Mutex::default(),
            totals: Totals::default(),
            paused: tokio::sync::watch::Sender::new(false),
            reload: tokio::sync::Notify::new(),
            epoch: Instant::now(),
        }
    }

    /// A client logged in.
    pub fn join(&self, key: BackendKey, info: Arc<ClientInfo>) {
        self.lock_clients().insert(key, info);
        self.metrics.cl_active.inc();
    }

    /// A client left.
    pub fn leave(&self, key: BackendKey) {
        if self.lock_clients().remove(&key).is_some() {
            self.metrics.cl_active.dec();
        }
    }

    fn lock_clients(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<BackendKey, Arc<ClientInfo>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The logged-in clients, with their cancel keys.
    pub fn clients(&self) -> Vec<(BackendKey, Arc<ClientInfo>)> {
        self.lock_clients()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// A client starts waiting for a server connection.
    pub fn waiting(&self, client: &ClientInfo) {
        let since = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        client.waiting_since.store(since.max(1), Ordering::Relaxed);
        client
            .state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
        self.metrics.cl_active.dec();
        self.metrics.cl_waiting.inc();
    }

    /// A client's wait is over: bound to `server` (its pid), or not (`None`: it failed).
    pub fn waited(&self, client: &ClientInfo, server: Option<i32>) {
        client.waiting_since.store(0, Ordering::Relaxed);
        self.bound(client, server);
        self.metrics.cl_waiting.dec();
        self.metrics.cl_active.inc();
    }

    /// A client is bound to the server backend `server`, or (None) has none.
    pub fn bound(&self, client: &ClientInfo, server: Option<i32>) {
        let state = match server {
            Some(_) => ClientState::Active,
            None => ClientState::Idle,
        };
        client.state.store(state as u8, Ordering::Relaxed);
        client
            .server_pid
            .store(server.unwrap_or(0), Ordering::Relaxed);
    }

    /// Sets the gauges read from the pool's state (sv_idle, sv_used, maxwait): every second,
    /// and before each scrape of /metrics.
    pub fn refresh_gauges(&self) {
        let (idle, used) = {
            let idle = self.lock_idle();
            let used = idle.iter().filter(|c| self.needs_reset(c)).count();
            (idle.len(), used)
        };
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.sv_idle.set(gauge(idle - used));
        self.metrics.sv_used.set(gauge(used));
        self.metrics.maxwait.set(self.maxwait().as_secs_f64());
    }

    /// How long the longest-waiting client has waited now.
    pub fn maxwait(&self) -> Duration {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let oldest = self
            .lock_clients()
            .values()
            .map(|c| c.waiting_since.load(Ordering::Relaxed))
            .filter(|s| *s != 0)
            .min();
        oldest.map_or(Duration::ZERO, |s| {
            Duration::from_micros(now.saturating_sub(s))
        })
    }

    /// The console's PAUSE (true) and RESUME (false).
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Server connections lent to clients now.
    pub fn lent(&self) -> usize {
        self.settings
            .pool_size
            .saturating_sub(self.permits.available_permits())
    }

    /// The console's RECONNECT: every server connection is replaced, idle ones now, lent
    /// ones when their client is done with them.
    pub fn reconnect(&self) {
        let creds = self.credentials();
        self.set_credentials(creds.upstream.clone(), creds.verifier.clone());
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<ServerConn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The idle server connections, as the console shows them.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let now = Instant::now();
        self.lock_idle()
            .iter()
            .map(|c| IdleServer {
                pid: c.key.0,
                tls: c.tls,
                age: now.duration_since(c.created),
                idle: now.duration_since(c.idle_since),
                used: self.needs_reset(c),
                statements: c.statements.len(),
            })
            .collect()
    }

    /// Whether an idle connection carries another client's session, to be reset before the
    /// next client's transaction (see client/transaction.rs).
    fn needs_reset(&self, c: &ServerConn) -> bool {
        c.last_client.is_some()
            && (c.dirty || self.settings.server_reset == super::config::ServerReset::Always)
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New credentials: new server connections use them; old ones retire when next idle.
    pub fn replace_credentials(
        &self,
        upstream: Upstream,
        verifier: Option<crate::pgwire::scram::Verifier>,
    ) {
        self.set_credentials(Arc::new(upstream), verifier);
    }

    /// A new generation of credentials: idle connections of older ones close now, lent ones
    /// when released (`checkin` keeps only the current generation).
    fn set_credentials(
        &self,
        upstream: Arc<Upstream>,
        verifier: Option<crate::pgwire::scram::Verifier>,
    ) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.credentials.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Credentials {
            upstream,
            verifier,
            generation,
        });
        self.lock_idle().retain(|c| c.generation == generation);
    }

    /// The next tick of the statement clock.
    pub fn statement_tick(&self) -> u64 {
        self.statement_clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn cancels(&self) -> std::sync::MutexGuard<'_, Cancels> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records which server backend (if any) serves the client with cancel key `client`;
    /// `None` for `server` clears it, `forget` removes the client.
    pub fn serving(&self, client: (i32, i32), server: Option<(i32, i32)>) {
        self.cancels().serving.insert(client, server);
    }

    pub fn forget(&self, client: (i32, i32)) {
        self.cancels().serving.remove(&client);
    }

    /// A CancelRequest with a client's key: forwarded to the backend serving that client
    /// now; nothing when it has none (an idle client) or the key is unknown. Until the server
    /// has acted on it, that backend's connection goes to no other client (`checkin` waits),
    /// so a cancel that arrives late never stops another client's query.
    pub async fn cancel(&self, client: (i32, i32)) {
        let target = {
            let mut c = self.cancels();
            let target = c.serving.get(&client).copied().flatten();
            if let Some(t) = target {
                *c.in_flight.entry(t).or_default() += 1;
            }
            target
        };
        let Some(target) = target else {
            return;
        };
        let creds = self.credentials();
        let sent = server::cancel(&creds.upstream, target, self.settings.connect_timeout).await;
        {
            let mut c = self.cancels();
            if let Some(n) = c.in_flight.get_mut(&target) {
                *n -= 1;
                if *n == 0 {
                    c.in_flight.remove(&target);
                }
            }
        }
        self.cancel_done.notify_waiters();
        if let Err(e) = sent {
            self.metrics.error("cancel");
            tracing::warn!(error = %e, "forwarding a cancel request");
        }
    }

    /// Whether a cancel is on its way to `backend`.
    fn cancelling(&self, backend: BackendKey) -> bool {
        self.cancels().in_flight.contains_key(&backend)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// How the server spells `value` of the reported setting `name`, if a login has asked it.
    pub fn spelling(&self, name: &str, value: &str) -> Option<String> {
        self.spellings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)?
            .get(value)
            .cloned()
    }

    /// Remembers how the server spells `value` of `name` (forgetting that name's once
    /// `SPELLINGS` are kept: clients give few spellings, and a client giving many costs a
    /// round trip each).
    pub fn remember_spelling(&self, name: &str, value: &str, spelled: String) {
        let mut spellings = self.spellings.lock().unwrap_or_else(|e| e.into_inner());
        let values = spellings.entry(name.to_owned()).or_default();
        if values.len() >= SPELLINGS {
            values.clear();
        }
        values.insert(value.to_owned(), spelled);
    }

    /// Runs `f` on the server's parameters (ParameterStatus of the last server login; empty
    /// before the first), read in place: a client login reads them without a copy.
    pub fn with_server_params<R>(&self, f: impl FnOnce(&BTreeMap<String, String>) -> R) -> R {
        f(&self.server_params.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn fresh(&self, c: &ServerConn, generation: u64, now: Instant) -> bool {
        c.generation == generation
            && now.duration_since(c.created) < self.settings.server_lifetime
            && c.alive()
    }

    /// A server connection for one transaction (or session), waiting for a free slot.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, PoolError> {
        let wait = self.settings.query_wait_timeout;
        let started = Instant::now();
        // A free permit while not paused is taken at once, without a timer or a watch (a
        // permit is only free when nobody queues for one: tokio hands a released permit to
        // the first waiter).
        let free = (!*self.paused.borrow())
            .then(|| self.permits.clone().try_acquire_owned().ok())
            .flatten();
        let permit = match free {
            Some(permit) => permit,
            None => {
                let mut paused = self.paused.subscribe();
                let timed_out = || PoolError::WaitTimeout {
                    wait,
                    size: self.settings.pool_size,
                };
                tokio::time::timeout(wait, async {
                    // The console's PAUSE holds every new checkout until RESUME.
                    let _ = paused.wait_for(|p| !*p).await;
                    self.permits.clone().acquire_owned().await
                })
                .await
                .map_err(|_| timed_out())?
                .map_err(|_| timed_out())?
            }
        };
        let waited = started.elapsed();
        self.metrics.wait.observe(waited.as_secs_f64());
        self.totals.wait_us.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let generation = self.generation.load(Ordering::SeqCst);
        let now = Instant::now();
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if self.fresh(&c, generation, now) {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let conn = match reused {
            Some(c) => c,
            None => self.connect_within(started + wait).await?,
        };
        self.metrics.sv_active.inc();
        Ok(Lease {
            conn: Some(conn),
            permit: Some(permit),
            pool: self.clone(),
        })
    }

    /// Connects, and while the server refuses the password, tries again (with the credentials
    /// re-read each time) until `deadline`: a password changed on the server before the
    /// mounted Secret caught up must not fail clients during the gap.
    async fn connect_within(&self, deadline: Instant) -> Result<ServerConn, ServerError> {
        const PAUSE: Duration = Duration::from_millis(250);
        loop {
            match self.connect().await {
                Err(ServerError::Refused { code, .. })
                    if code == "28P01" && Instant::now() + PAUSE < deadline =>
                {
                    tokio::time::sleep(PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Makes one new server connection with the current credentials; when the server
    /// refuses the password and a rotation's next one is staged, with that one.
    pub async fn connect(&self) -> Result<ServerConn, ServerError> {
        let creds = self.credentials();
        let attempt = |upstream| {
            server::connect(
                upstream,
                &self.settings.application_name,
                self.settings.connect_timeout,
                creds.generation,
            )
        };
        let mut result = attempt(&creds.upstream).await;
        if let (Err(ServerError::Refused { code, .. }), Some(next)) =
            (&result, &creds.upstream.password_next)
            && code == "28P01"
        {
            let mut upstream = (*creds.upstream).clone();
            upstream.password = next.clone();
            tracing::info!("the server refused the password; using the rotation's next one");
            result = attempt(&upstream).await;
        }
        match &result {
            Ok(c) => {
                tracing::debug!(tls = c.tls, pid = c.key.0, "server connection opened");
                self.ready.store(true, Ordering::Relaxed);
                self.metrics.server_connects.inc();
                *self
                    .server_params
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = c.params.clone();
            }
            Err(e) => {
                self.ready.store(false, Ordering::Relaxed);
                self.metrics.error(e.kind());
                tracing::warn!(error = %e, "server connection failed");
            }
        }
        result
    }

    fn checkin(&self, mut conn: ServerConn) {
        conn.idle_since = Instant::now();
        let generation = self.generation.load(Ordering::SeqCst);
        if conn.generation == generation && conn.buf.is_empty() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }

    /// Closes idle connections past their idle time-out or lifetime (keeping `min_idle`),
    /// and opens connections until `min_idle` are open (idle or lent). Run periodically.
    pub async fn maintain(self: &Arc<Self>) {
        let generation = self.generation.load(Ordering::SeqCst);
        let now = Instant::now();
        let idle_count = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let keep = self.settings.min_idle;
            let mut kept = Vec::with_capacity(idle.len());
            // Newest last: keep the most recently used.
            for c in idle.drain(..).rev() {
                let expired = now.duration_since(c.idle_since) >= self.settings.server_idle_timeout
                    && kept.len() >= keep;
                if !expired
                    && c.generation == generation
                    && now.duration_since(c.created) < self.settings.server_lifetime
                    && c.alive()
                {
                    kept.push(c);
                }
            }
            kept.reverse();
            *idle = kept;
            idle.len()
        };
        self.refresh_gauges();
        // min_idle counts every open connection, lent or idle: never more than pool_size.
        let lent = self
            .settings
            .pool_size
            .saturating_sub(self.permits.available_permits());
        let open = idle_count + lent;
        for _ in open..self.settings.min_idle.min(self.settings.pool_size) {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let Ok(conn) = self.connect().await else {
                break;
            };
            self.checkin(conn);
            drop(permit);
        }
    }
}

/// A server connection lent to one client.
pub struct Lease {
    conn: Option<ServerConn>,
    /// The pool slot it holds; given up with the connection.
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
}

impl Lease {
    pub fn conn(&mut self) -> &mut ServerConn {
        // Present until release() or drop consumes the lease.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a lease always holds a connection"))
    }

    /// Returns a clean connection to the pool; with a cancel on its way to it, only once the
    /// server has acted on that cancel (the slot stays taken meanwhile).
    pub fn release(mut self) {
        let Some(c) = self.conn.take() else {
            return;
        };
        if !self.pool.cancelling(c.key) {
            self.pool.checkin(c);
            return;
        }
        let pool = self.pool.clone();
        // The slot goes with the connection: the pool never opens one more meanwhile.
        let permit = self.permit.take();
        pool.metrics.sv_active.inc();
        tokio::spawn(async move {
            loop {
                let done = pool.cancel_done.notified();
                if !pool.cancelling(c.key) {
                    break;
                }
                done.await;
            }
            pool.checkin(c);
            pool.metrics.sv_active.dec();
            drop(permit);
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.metrics.sv_active.dec();
        if self.conn.is_some() {
            // Not released: in a transaction, or broken. Close it.
            self.pool.metrics.error("server_discarded");
        }
    }
}
