//! `dbconn operator`: controller wiring for DatabaseConnections and DatabaseServers, leader
//! election, backoff, and the operations endpoint.

mod backoff;
pub mod budget;
mod connection;
mod error;
mod leader;
pub mod metrics;
pub mod policy;
pub mod resolve;
pub mod rollout;
pub mod rotation;
pub mod secret;
mod server;
pub mod sessions;
mod slots;
pub mod status;
pub mod template;

use connection::cleanup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};

pub use error::Error;
pub use leader::LeaseSettings;

use crate::api::{DatabaseConnection, DatabaseServer};
use crate::http::{Reply, Routes, serve};
use backoff::Backoff;
use metrics::Metrics;

/// Operator settings, parsed once at start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the operator runs; DatabaseServer Secrets and the leader Lease live here.
    pub namespace: String,
    /// This replica's name: in the Lease, Events and the server's application_name.
    pub identity: String,
    /// How often a Ready connection is checked again (repairs drift).
    pub revalidate: Duration,
    /// The longest wait between retries of a failing reconcile.
    pub max_backoff: Duration,
    /// Reconciles of each kind that may run at once (each holds up to two server sessions).
    pub concurrency: u16,
    /// Of those, how many may be for connections of one namespace.
    pub namespace_concurrency: u16,
    /// Leader election; `None` runs as the only replica.
    pub lease: Option<LeaseSettings>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub http: SocketAddr,
    /// After SIGTERM: how long the webhook is still served, `/readyz` failing, before the
    /// process stops (Service endpoints and kube-proxy catch up meanwhile).
    pub shutdown_delay: Duration,
    /// The pod-injection webhook, served by every replica; `None` serves none.
    pub webhook: Option<crate::webhook::Settings>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Pods that asked for injection (label dbconn.io/inject=true), for the backstop.
    pub pods: reflector::Store<Pod>,
    /// Every DatabaseConnection, as the webhook sees them (and, for markers written before
    /// they named their connection, to tell whether a role's owner still exists).
    pub connections: reflector::Store<DatabaseConnection>,
    /// Every DatabaseServer.
    servers: reflector::Store<DatabaseServer>,
    /// What the watches behind `pods`, `connections` and `servers` see, for the controllers.
    pod_events: Events<Pod>,
    connection_events: Events<DatabaseConnection>,
    server_events: Events<DatabaseServer>,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Metrics,
    backoff: Backoff,
    /// The generation and desired privilege set each connection last converged to, in this
    /// process: a later reconcile with both unchanged that still has to change privileges
    /// found drift (new tables matched by `*` change the set, so they are not drift).
    converged: std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>,
    /// Servers that did not answer within the connect time-out, until when they are not
    /// tried again: a dead server must not hold every reconcile slot for its time-out.
    silent: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// DatabaseConnection reconcile slots: one tenant (with many connections, or a server
    /// that stalls) never holds more than `namespace_concurrency` of them.
    slots: slots::Slots,
    /// Administrative sessions kept between reconciles, per endpoint.
    pub sessions: sessions::Sessions,
}

impl Context {
    /// Records that `obj` converged at its current generation to the desired set hashed as
    /// `desired`; true when it had already converged to exactly that before.
    fn converged_again<K: Resource<DynamicType = ()>>(&self, obj: &K, desired: u64) -> bool {
        let state = (obj.meta().generation.unwrap_or_default(), desired);
        let mut map = self.converged.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key(obj), state) == Some(state)
    }

    /// Connects through `attempt`, unless `server` timed out recently: then fails at once
    /// with that time-out. A time-out keeps the server out for `SILENT_FOR`.
    async fn guarded<T>(
        &self,
        server: &str,
        attempt: impl Future<Output = Result<T, crate::postgres::ConnectError>>,
    ) -> Result<T, crate::postgres::ConnectError> {
        use crate::postgres::ConnectError;
        let now = Instant::now();
        let until = self
            .silent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .copied();
        if let Some(until) = until.filter(|u| *u > now) {
            return Err(ConnectError::Timeout(
                format!(
                    "{server} (not tried again for {}s after it timed out)",
                    (until - now).as_secs()
                ),
                SILENT_FOR,
            ));
        }
        let result = attempt.await;
        let mut silent = self.silent.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err(ConnectError::Timeout(..)) => {
                silent.insert(server.to_owned(), Instant::now() + SILENT_FOR);
            }
            _ => {
                silent.remove(server);
            }
        }
        result
    }

    fn forget<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.converged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(obj));
    }
}

/// How long a server that timed out is not tried again.
const SILENT_FOR: Duration = Duration::from_secs(20);

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    ObjectRef::from_obj(obj).to_string()
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let wait = ctx.backoff.failed(&key(&*obj));
    tracing::warn!(
        object = %key(&*obj),
        reason = error.reason(),
        %error,
        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "reconcile failed"
    );
    Action::requeue(wait)
}

/// Runs one reconcile with metrics, and forgets the object's failures when it succeeds.
async fn measured<K, F>(kind: &str, obj: &K, ctx: &Context, run: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = run.await;
    let reason = result.as_ref().err().map(Error::reason);
    ctx.metrics
        .reconciled(kind, started.elapsed().as_secs_f64(), reason);
    if result.is_ok() {
        ctx.backoff.succeeded(&key(obj));
    }
    result
}

async fn reconcile_connection(
    conn: Arc<DatabaseConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _slot = ctx
        .slots
        .acquire(&conn.namespace().unwrap_or_default())
        .await;
    // The wait may have been long: act on the connection as it is now, or not at all if it
    // is gone (a change made meanwhile has started another run, after this one).
    let Some(conn) = ctx.connections.get(&ObjectRef::from_obj(&*conn)) else {
        return Ok(Action::await_change());
    };
    // Boxed: a reconcile waiting for its slot holds a pointer, not the whole reconcile's state.
    let work = Box::pin(async {
        let has = conn.finalizers().iter().any(|f| f == cleanup::FINALIZER);
        match (conn.metadata.deletion_timestamp.is_some(), has) {
            (true, true) => {
                ctx.forget(&*conn);
                let action = cleanup::cleanup(conn.clone(), ctx.clone()).await?;
                set_finalizer(&ctx, &conn, false).await?;
                Ok(action)
            }
            (true, false) => Ok(Action::await_change()),
            // The finalizer is added by the reconcile once the connection is authorized.
            (false, _) => connection::reconcile(conn.clone(), ctx.clone()).await,
        }
    });
    measured("DatabaseConnection", &*conn, &ctx, work).await
}

/// Adds or removes dbconn's finalizer (nothing when it already is as asked), guarded by the
/// resourceVersion it was read at.
async fn set_finalizer(ctx: &Context, conn: &DatabaseConnection, on: bool) -> Result<(), Error> {
    let api = Api::<DatabaseConnection>::namespaced(
        ctx.client.clone(),
        &conn.namespace().unwrap_or_default(),
    );
    let mut current = std::borrow::Cow::Borrowed(conn);
    // The cached object may be a step behind (its own status update): read it again once.
    for attempt in 0..2 {
        if current.finalizers().iter().any(|f| f == cleanup::FINALIZER) == on {
            return Ok(());
        }
        let mut finalizers: Vec<String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != cleanup::FINALIZER)
            .cloned()
            .collect();
        if on {
            finalizers.push(cleanup::FINALIZER.to_owned());
        }
        let patch = serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": current.resource_version()}
        });
        match api
            .patch(
                &conn.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt == 0 => {
                current = std::borrow::Cow::Owned(api.get(&conn.name_any()).await?);
            }
            other => {
                other?;
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn reconcile_server(server: Arc<DatabaseServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(
        "DatabaseServer",
        &*server,
        &ctx,
        server::reconcile(server.clone(), ctx.clone()),
    )
    .await
}

/// Runs the operator until SIGTERM/SIGINT: the operations endpoint always, the controllers
/// while this replica leads (always, without leader election).
pub async fn run(client: Client, settings: Settings) -> anyhow::Result<()> {
    let reporter = Reporter {
        controller: "dbconn".into(),
        instance: Some(settings.identity.clone()),
    };
    // Every replica keeps these caches: the webhook answers from them without a network call.
    // They are the operator's only watches of pods and connections: the controllers, while
    // this replica leads, follow the same events (`follow`).
    let (pods, pod_events, pod_watch) = cache(
        Api::<Pod>::all(client.clone()),
        injection_requests(),
        slim_pod,
    );
    let (connections, connection_events, connection_watch) = cache(
        Api::<DatabaseConnection>::all(client.clone()),
        watcher::Config::default(),
        |c| slim_meta(&mut c.metadata),
    );
    let (servers, server_events, server_watch) = cache(
        Api::<DatabaseServer>::all(client.clone()),
        watcher::Config::default(),
        |s| slim_meta(&mut s.metadata),
    );
    let caches = tokio::spawn(async move {
        futures::join!(pod_watch, connection_watch, server_watch);
    });
    let ctx = Arc::new(Context {
        pods,
        connections: connections.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        backoff: Backoff::new(Duration::from_secs(1), settings.max_backoff),
        metrics: Metrics::default(),
        converged: Default::default(),
        silent: Default::default(),
        pod_events,
        connection_events,
        servers,
        server_events,
        slots: slots::Slots::new(settings.concurrency, settings.namespace_concurrency),
        sessions: sessions::Sessions::new(usize::from(settings.concurrency)),
        settings,
    });
    let readiness = Arc::new(Readiness {
        certificate_expiry: ctx.metrics.webhook_certificate_expiry.clone(),
        ..Readiness::default()
    });
    {
        let (readiness, pods, connections) =
            (readiness.clone(), ctx.pods.clone(), ctx.connections.clone());
        tokio::spawn(async move {
            if pods.wait_until_ready().await.is_ok() && connections.wait_until_ready().await.is_ok()
            {
                readiness.synced.store(true, Ordering::Relaxed);
                tracing::info!("pod and connection caches synced");
            }
        });
    }
    if ctx.settings.webhook.is_none() {
        readiness.certified.store(true, Ordering::Relaxed);
    }
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(ctx.settings.http)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", ctx.settings.http))?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    let expiry = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sessions::IDLE_TIMEOUT / 3);
            loop {
                tick.tick().await;
                ctx.sessions.expire();
            }
        })
    };
    let http = tokio::spawn(serve(
        listener,
        routes(ctx.clone(), ready.clone(), readiness.clone()),
    ));
    let webhook = match ctx.settings.webhook.clone() {
        Some(settings) => {
            let listener = tokio::net::TcpListener::bind(settings.addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the webhook on {}: {e}", settings.addr))?;
            let serving = crate::webhook::run(
                listener,
                client.clone(),
                ctx.settings.namespace.clone(),
                settings,
                connections,
                ctx.recorder.clone(),
                readiness.clone(),
            );
            Some(tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %format!("{e:#}"), "the webhook stopped");
                }
            }))
        }
        None => None,
    };

    let shutdown = {
        let readiness = readiness.clone();
        async move {
            crate::shutdown::signal().await;
            readiness.stopping.store(true, Ordering::Relaxed);
        }
    };
    tokio::pin!(shutdown);
    let result = match ctx.settings.lease.clone() {
        None => {
            ready.store(true, Ordering::Relaxed);
            ctx.metrics.leader.set(1);
            tokio::select! {
                () = controllers(ctx.clone()) => Ok(()),
                () = &mut shutdown => Ok(()),
            }
        }
        Some(lease) => {
            leader::lead(
                &client,
                &ctx.settings.namespace,
                &ctx.settings.identity,
                &lease,
                &mut shutdown,
                || {
                    ready.store(true, Ordering::Relaxed);
                    controllers(ctx.clone())
                },
                |leading| {
                    ctx.metrics.leader.set(i64::from(leading));
                },
            )
            .await
        }
    };
    if readiness.stopping.load(Ordering::Relaxed) && !ctx.settings.shutdown_delay.is_zero() {
        // Not ready, yet still answering: Services drop this replica before it goes away.
        tracing::info!(
            seconds = ctx.settings.shutdown_delay.as_secs(),
            "serving the webhook while Services stop sending here"
        );
        tokio::time::sleep(ctx.settings.shutdown_delay).await;
    }
    http.abort();
    caches.abort();
    expiry.abort();
    ctx.sessions.clear();
    if let Some(w) = webhook {
        w.abort();
    }
    tracing::info!("dbconn operator stopped");
    result
}

/// What `/readyz` waits for besides the controllers: this replica can answer admission.
#[derive(Default)]
pub struct Readiness {
    /// The connection and pod caches the webhook answers from hold every object.
    pub synced: AtomicBool,
    /// The webhook has a serving certificate (or there is no webhook).
    pub certified: AtomicBool,
    /// When that certificate expires, in Unix seconds (the metric
    /// `dbconn_webhook_certificate_expiry_timestamp_seconds`).
    pub certificate_expiry: prometheus_client::metrics::gauge::Gauge,
    /// SIGTERM came: Services should send elsewhere.
    pub stopping: AtomicBool,
}

impl Readiness {
    /// `None` when ready, else what it waits for.
    fn waiting_for(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            Some("stopping\n")
        } else if !self.synced.load(Ordering::Relaxed) {
            Some("loading the connection and pod caches\n")
        } else if !self.certified.load(Ordering::Relaxed) {
            Some("waiting for the webhook certificate\n")
        } else {
            None
        }
    }
}

fn routes(ctx: Arc<Context>, ready: Arc<AtomicBool>, readiness: Arc<Readiness>) -> Routes {
    Arc::new(move |path: &str| match path {
        "/healthz" => Reply::text(200, "ok\n"),
        "/readyz" => match readiness.waiting_for() {
            Some(why) => Reply::text(503, why),
            // Ready once watching (leader) or waiting for the Lease (standby): both can serve.
            None if ready.load(Ordering::Relaxed) || ctx.settings.lease.is_some() => {
                Reply::text(200, "ok\n")
            }
            None => Reply::text(503, "starting\n"),
        },
        "/metrics" => ctx.metrics.reply(),
        _ => Reply::not_found(),
    })
}

/// Both controllers, until their streams end.
async fn controllers(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    // Connections: the controller starts every reconcile due, and each waits for its slot
    // (slots.rs), so a namespace's backlog queues behind its own share.
    let unbounded = controller::Config::default().concurrency(0);
    let config = controller::Config::default().concurrency(ctx.settings.concurrency);
    // Status-only updates (dbconn's own) do not start a reconcile: only what the user
    // changes (spec, annotations, deletion) does, besides the owned and watched objects.
    let store = ctx.connections.clone();
    let changes =
        follow(&ctx.connection_events, &store).filter(changed(store.clone(), user_change));
    let connections = Controller::for_shared_stream(changes, store.clone()).with_config(unbounded);
    let by_server = store.clone();
    // No watch of Secrets outside the operator's namespace (least privilege: the operator
    // cannot list or watch Secret data there): a changed or deleted connection Secret, or a
    // referenced one, is seen at the next re-validation or when the connection changes.
    let connections = connections
        .watches_shared_stream(follow(&ctx.server_events, &ctx.servers), move |server| {
            let name = server.name_any();
            by_server
                .state()
                .into_iter()
                .filter(|c| c.spec.server_ref.as_deref() == Some(name.as_str()))
                .map(|c| ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        })
        .watches_shared_stream(
            follow(&ctx.pod_events, &ctx.pods).filter(changed(ctx.pods.clone(), pod_change)),
            |pod| {
                let ns = pod.namespace().unwrap_or_default();
                crate::inject::requested(&pod)
                    .into_iter()
                    .map(|name| ObjectRef::new(&name).within(&ns))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile_connection, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection reconcile");
            }
        });
    let servers = Controller::for_shared_stream(
        follow(&ctx.server_events, &ctx.servers),
        ctx.servers.clone(),
    )
    .with_config(config);
    // A DatabaseServer's Secrets live in the operator's namespace: a rotated admin password
    // or CA is checked at once (and its connections follow the server's status).
    let server_store = servers.store();
    let servers = servers
        .watches(
            Api::<Secret>::namespaced(client.clone(), &ctx.settings.namespace),
            watcher::Config::default(),
            move |secret| {
                let name = secret.name_any();
                server_store
                    .state()
                    .into_iter()
                    .filter(|s| server_secrets(s).any(|n| n == name))
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile_server, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "server reconcile");
            }
        });
    tracing::info!("controllers started");
    futures::join!(connections, servers);
}

/// Drops from a cached object's metadata what nothing here reads and the apiserver repeats
/// in every object: managedFields and kubectl's last-applied copy of the object. With 10,000
/// connections they were most of the operator's memory.
fn slim_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Keeps of a pod what the connection budget and the injection backstop read: its metadata
/// (the annotation naming its connections), the names of its init containers (the sidecars)
/// and its phase.
fn slim_pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata);
    if let Some(spec) = pod.spec.as_mut() {
        let init = spec.init_containers.take().map(|containers| {
            containers
                .into_iter()
                .map(|c| k8s_openapi::api::core::v1::Container {
                    name: c.name,
                    ..Default::default()
                })
                .collect()
        });
        *spec = k8s_openapi::api::core::v1::PodSpec {
            init_containers: init,
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            ..Default::default()
        };
    }
}

/// What a watch saw, for a controller that starts and stops with the lease.
#[derive(Clone)]
enum Seen<K> {
    /// Created or changed; already in the cache.
    Applied(Arc<K>),
    /// Deleted; already gone from the cache.
    Deleted(Arc<K>),
    /// The watch listed everything again (start, or after the apiserver's history expired):
    /// the cache now holds what it listed.
    Relisted,
}

type Events<K> = tokio::sync::broadcast::Sender<Seen<K>>;

/// Watch events buffered for a controller that falls behind; past that it sees the whole
/// cache again (see `follow`).
const EVENTS_BUFFERED: usize = 1024;

/// A cache of the objects `api` and `config` select, each `slim`med first; what changes in
/// it, for the controllers; and the watch that keeps both, to run. Nobody listening to the
/// changes is fine: a standby replica's caches serve the webhook alone.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
) -> (
    reflector::Store<K>,
    Events<K>,
    impl Future<Output = ()> + Send,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let (events, _) = tokio::sync::broadcast::channel(EVENTS_BUFFERED);
    let changes = events.clone();
    let watch = watcher(api, config)
        .modify(slim)
        .default_backoff()
        .reflect(writer)
        .for_each(move |event| {
            if let Err(e) = &event {
                // The watch retries with backoff; until it lists again the cache is stale
                // (and, before its first list, /readyz says it is loading).
                tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed");
            }
            if changes.receiver_count() > 0 {
                let seen = match event {
                    Ok(watcher::Event::Apply(obj)) => Some(Seen::Applied(Arc::new(obj))),
                    Ok(watcher::Event::Delete(obj)) => Some(Seen::Deleted(Arc::new(obj))),
                    // A relist's objects reach the cache all at once, at its end.
                    Ok(watcher::Event::InitDone) => Some(Seen::Relisted),
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => None,
                };
                if let Some(seen) = seen {
                    let _ = changes.send(seen);
                }
            }
            async {}
        });
    (store, events, watch)
}

/// What a controller follows from the moment it starts: every object in `cache`, then each
/// one the watch sees change or go. After a relist, or when it falls more than
/// `EVENTS_BUFFERED` events behind, it gets the whole cache again rather than miss one.
fn follow<K>(
    events: &Events<K>,
    cache: &reflector::Store<K>,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use tokio::sync::broadcast::error::RecvError;
    // Subscribed before the snapshot is taken: no change falls between the two.
    let rx = events.subscribe();
    let cache = cache.clone();
    let now = cache.state();
    let later = futures::stream::unfold(rx, move |mut rx| {
        let cache = cache.clone();
        async move {
            let objects = match rx.recv().await {
                Ok(Seen::Applied(obj) | Seen::Deleted(obj)) => vec![obj],
                Ok(Seen::Relisted) | Err(RecvError::Lagged(_)) => cache.state(),
                Err(RecvError::Closed) => return None,
            };
            Some((objects, rx))
        }
    });
    futures::stream::iter(now).chain(later.flat_map(futures::stream::iter))
}

/// Passes on an object only when `what` of it differs from when it was last passed on (by
/// UID: a connection deleted and created again under its name is new), or when it is gone
/// from `cache` (deleted). Remembers as many objects as `cache` holds, and a few deleted ones.
fn changed<K>(
    cache: reflector::Store<K>,
    what: fn(&K) -> u64,
) -> impl FnMut(&Arc<K>) -> std::future::Ready<bool>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut seen = std::collections::HashMap::<String, u64>::new();
    move |obj| {
        let uid = obj.meta().uid.clone().unwrap_or_default();
        if cache.get(&ObjectRef::from_obj(&**obj)).is_none() {
            seen.remove(&uid);
            return std::future::ready(true);
        }
        let now = what(obj);
        let changed = seen.insert(uid, now) != Some(now);
        if seen.len() > 2 * cache.len() + 1024 {
            // Forget deleted objects.
            let live: std::collections::HashSet<String> = cache
                .state()
                .iter()
                .filter_map(|o| o.meta().uid.clone())
                .collect();
            seen.retain(|uid, _| live.contains(uid));
        }
        std::future::ready(changed)
    }
}

/// Pods that asked for injection: the webhook's label selector, for the backstop's watches.
fn injection_requests() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}=true", crate::inject::LABEL))
}

/// What of an injected pod its connections' reconciles read (see `slim_pod`).
fn pod_change(p: &Pod) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = user_set(&p.metadata);
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .hash(&mut h);
    for c in p
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
    {
        c.name.hash(&mut h);
    }
    h.finish()
}

/// What a user can change on a DatabaseConnection: its generation (spec, deletion) and
/// annotations (a nudge). Not its status or finalizers: dbconn writes those itself.
fn user_change(c: &DatabaseConnection) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = user_set(&c.metadata);
    c.metadata.generation.hash(&mut h);
    h.finish()
}

/// A hasher fed with what users set on any object and dbconn reads: annotations, deletion.
fn user_set(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> std::collections::hash_map::DefaultHasher {
    use std::hash::Hash;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.annotations.hash(&mut h);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut h);
    h
}

/// Names of the Secrets a DatabaseServer reads in the operator's namespace.
fn server_secrets(s: &DatabaseServer) -> impl Iterator<Item = &str> {
    let tls = &s.spec.tls;
    [
        s.spec.admin_secret_ref.as_ref().map(|r| r.name.as_str()),
        tls.ca_secret_ref.as_ref().map(|r| r.name.as_str()),
        tls.client_cert_secret_ref.as_ref().map(|r| r.name.as_str()),
        tls.client_key_secret_ref.as_ref().map(|r| r.name.as_str()),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(name: &str, uid: &str, generation: i64) -> DatabaseConnection {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dbconn.io/v1alpha1", "kind": "DatabaseConnection",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid, "generation": generation},
            "spec": {"serverRef": "main", "database": "app", "role": {"name": "app"}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn controllers_see_user_changes_re_creations_and_deletions_not_status_updates() {
        let (cache, mut writer) = reflector::store::<DatabaseConnection>();
        let mut pass = changed(cache.clone(), user_change);
        let put = |writer: &mut reflector::store::Writer<DatabaseConnection>,
                   c: &DatabaseConnection| {
            writer.apply_watcher_event(&watcher::Event::Apply(c.clone()));
            Arc::new(c.clone())
        };
        let first = put(&mut writer, &connection("orders", "uid-1", 1));
        assert!(pass(&first).await, "new");
        let mut status_only = connection("orders", "uid-1", 1);
        status_only.status = Some(Default::default());
        assert!(
            !pass(&put(&mut writer, &status_only)).await,
            "dbconn's own status update"
        );
        assert!(
            pass(&put(&mut writer, &connection("orders", "uid-1", 2))).await,
            "spec changed"
        );
        let mut nudged = connection("orders", "uid-1", 2);
        nudged
            .annotations_mut()
            .insert("dbconn.io/rotate".into(), "now".into());
        assert!(pass(&put(&mut writer, &nudged)).await, "annotation changed");
        // Deleted, then created again under its name with the same spec: a new object.
        writer.apply_watcher_event(&watcher::Event::Delete(nudged.clone()));
        assert!(pass(&Arc::new(nudged)).await, "deleted");
        assert!(
            pass(&put(&mut writer, &connection("orders", "uid-2", 1))).await,
            "re-created"
        );
    }

    #[tokio::test]
    async fn a_controller_follows_the_cache_then_each_change_and_relists() {
        let (cache, mut writer) = reflector::store::<DatabaseConnection>();
        let (events, _) = tokio::sync::broadcast::channel(4);
        writer.apply_watcher_event(&watcher::Event::Apply(connection("a", "1", 1)));
        let followed = follow(&events, &cache);
        tokio::pin!(followed);
        let name = |c: Option<Arc<DatabaseConnection>>| c.unwrap().name_any();
        assert_eq!(name(followed.next().await), "a", "what the cache held");
        let b = connection("b", "2", 1);
        writer.apply_watcher_event(&watcher::Event::Apply(b.clone()));
        events.send(Seen::Applied(Arc::new(b))).ok();
        assert_eq!(name(followed.next().await), "b", "a change");
        events.send(Seen::Relisted).ok();
        let mut relisted = vec![name(followed.next().await), name(followed.next().await)];
        relisted.sort();
        assert_eq!(relisted, ["a", "b"], "everything again after a relist");
        // Behind by more than the buffer: everything again rather than a gap.
        for i in 0..6 {
            events
                .send(Seen::Applied(Arc::new(connection(
                    &format!("x{i}"),
                    "3",
                    1,
                ))))
                .ok();
        }
        let mut lagged = vec![name(followed.next().await), name(followed.next().await)];
        lagged.sort();
        assert_eq!(lagged, ["a", "b"]);
    }

    #[test]
    fn a_cached_pod_keeps_what_the_budget_and_backstop_read() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "team-a",
                "labels": {"dbconn.io/inject": "true"},
                "annotations": {
                    "dbconn.io/connections": "orders",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {
                "initContainers": [{"name": "dbconn-orders", "image": "dbconn", "args": ["pooler"]}],
                "containers": [{"name": "app", "image": "app", "env": [{"name": "A", "value": "1"}]}]
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        slim_pod(&mut pod);
        assert_eq!(crate::inject::requested(&pod), vec!["orders".to_owned()]);
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod.labels().get("dbconn.io/inject").unwrap(), "true");
        let spec = pod.spec.as_ref().unwrap();
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, ["dbconn-orders"]);
        assert!(spec.init_containers.as_ref().unwrap()[0].image.is_none());
        assert!(spec.containers.is_empty());
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.pod_ip.is_none());
    }
}
