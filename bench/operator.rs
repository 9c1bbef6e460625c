//! `make bench-operator`: 1,000 DatabaseConnections against one PostgreSQL on a fresh test
//! bed. Prints how long the operator (release build) takes to make them all Ready, its
//! reconcile rate and peak memory, and how long they take to settle after the server
//! restarts, next to the goals. Not a test: nothing here asserts a timing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use dbconn::api::DatabaseConnection;

const NS: &str = "bench";

/// How many DatabaseConnections (`BENCH_CONNECTIONS`, 1,000 unless set), and whether the
/// outage phase runs (`BENCH_OUTAGE=0` skips it), read once at start.
static SETTINGS: std::sync::OnceLock<(usize, bool)> = std::sync::OnceLock::new();

fn settings() -> anyhow::Result<(usize, bool)> {
    let count = match std::env::var("BENCH_CONNECTIONS") {
        Err(_) => 1000,
        Ok(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            anyhow::anyhow!("BENCH_CONNECTIONS={v:?}: expected a positive number")
        })?,
    };
    let outage = match std::env::var("BENCH_OUTAGE").as_deref() {
        Err(_) | Ok("1") => true,
        Ok("0") => false,
        Ok(v) => anyhow::bail!("BENCH_OUTAGE={v:?}: expected 0 or 1"),
    };
    Ok((count, outage))
}

fn count() -> usize {
    SETTINGS.get().map_or(1000, |s| s.0)
}

fn outage_phase() -> bool {
    SETTINGS.get().is_none_or(|s| s.1)
}
/// The longest wait between retries while the server is down.
const MAX_BACKOFF: u64 = 30;

fn main() -> anyhow::Result<()> {
    let _ = SETTINGS.set(settings()?);
    let dir = std::env::temp_dir().join(format!("dbconn-bench-operator-{}", std::process::id()));
    eprintln!("starting a fresh test bed in {}", dir.display());
    let bed = testbed::Bed::start(&dir, Some(std::process::id()))?;
    let result = tokio::runtime::Runtime::new()?.block_on(run(&bed));
    bed.stop()?;
    result
}

async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

fn kubectl(bed: &testbed::Bed, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", bed.kube.kubeconfig.display()))
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "kubectl {args:?} failed");
    Ok(())
}

async fn run(bed: &testbed::Bed) -> anyhow::Result<()> {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    kubectl(
        bed,
        &["apply", "--server-side", "-f", &crds.display().to_string()],
    )?;
    kubectl(
        bed,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/databaseconnections.dbconn.io",
        ],
    )?;
    let client = client(&bed.kube.kubeconfig).await?;
    for ns in [NS, "dbconn-system"] {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let ca = std::fs::read_to_string(&bed.ca_cert)?;
    for (name, data) in [
        (
            "admin",
            serde_json::json!({"username": "postgres", "password": bed.postgres.superuser_password}),
        ),
        ("db-ca", serde_json::json!({"ca.crt": ca})),
    ] {
        let s: Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "stringData": data}),
        )?;
        secrets.create(&PostParams::default(), &s).await?;
    }

    let conns = Api::<DatabaseConnection>::namespaced(client.clone(), NS);
    let started = Instant::now();
    stream::iter(0..count())
        .map(|i| {
            let conns = conns.clone();
            let port = bed.postgres.port;
            async move {
                let c: DatabaseConnection = serde_json::from_value(serde_json::json!({
                    "apiVersion": "dbconn.io/v1alpha1", "kind": "DatabaseConnection",
                    "metadata": {"name": format!("app-{i:04}")},
                    "spec": {
                        "server": {"host": "localhost", "port": port,
                                   "adminSecretRef": {"name": "admin"},
                                   "tls": {"sslmode": "verify-full", "caSecretRef": {"name": "db-ca"}}},
                        "database": "postgres",
                        "role": {"name": format!("bench_app_{i:04}")},
                        "access": "readOnly",
                    }
                }))?;
                conns.create(&PostParams::default(), &c).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!(
        "created {} DatabaseConnections in {:.1}s; starting the operator",
        count(),
        started.elapsed().as_secs_f64()
    );

    let log = bed.dir.join("bench-operator.log");
    let pid_file = bed.dir.join("bench-operator.pid");
    let m = measure(&conns, bed, &log, &pid_file).await?;
    print_table(&m);
    Ok(())
}

/// Starts the operator (default re-validation period) under a watchdog that stops it when
/// this process ends, however it ends. Returns the watchdog; the operator's pid is in `pid`.
fn start_operator(
    bed: &testbed::Bed,
    http_port: u16,
    log: &Path,
    pid: &Path,
) -> anyhow::Result<Child> {
    let script = "log=$1; pidfile=$2; owner=$3; shift 3; \
                  \"$0\" operator \"$@\" >>\"$log\" 2>&1 & op=$!; echo $op >\"$pidfile\"; \
                  while kill -0 \"$owner\" 2>/dev/null && kill -0 $op 2>/dev/null; do sleep 1; done; kill $op 2>/dev/null";
    let _ = std::fs::remove_file(pid);
    Ok(Command::new("setsid")
        .args(["sh", "-c", script, env!("CARGO_BIN_EXE_dbconn")])
        .arg(log)
        .arg(pid)
        .arg(std::process::id().to_string())
        .args([
            "--max-backoff-seconds",
            &MAX_BACKOFF.to_string(),
            "--no-leader-election",
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
        ])
        .env("KUBECONFIG", &bed.kube.kubeconfig)
        .env("POD_NAMESPACE", "dbconn-system")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// The operator's pid, once its watchdog has started it.
fn operator_pid(pid: &Path) -> anyhow::Result<u32> {
    for _ in 0..100 {
        if let Some(p) = std::fs::read_to_string(pid)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("the operator did not start")
}

fn stop(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

struct Measured {
    all_ready: Duration,
    /// API requests per connection during the first pass, by "VERB resource".
    calls: Vec<(String, f64)>,
    /// Reconciles per connection during the first pass.
    per_connection: f64,
    reconciles: f64,
    peak_rss_mib: f64,
    /// The outage phase: how long it lasted and how long all took to be Ready again.
    outage: Option<(Duration, Duration)>,
}

fn is_ready(c: &DatabaseConnection) -> bool {
    c.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|x| x.type_ == "Ready" && x.status == "True")
    })
}

/// Follows the connections with a watch (not a list per poll: listing 1,000 objects every
/// second would load the apiserver the operator shares the machine with) until
/// `done(ready)` holds, at most `limit`; returns the time it took.
async fn until(
    conns: &Api<DatabaseConnection>,
    limit: Duration,
    what: &str,
    done: impl Fn(usize) -> bool,
) -> anyhow::Result<Duration> {
    use kube::runtime::{WatchStreamExt, watcher};
    let started = Instant::now();
    let mut ready = std::collections::BTreeMap::<String, bool>::new();
    let mut stream =
        std::pin::pin!(watcher(conns.clone(), watcher::Config::default()).touched_objects());
    let mut last = usize::MAX;
    let mut synced = false;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
        if let Ok(Some(obj)) = next {
            let obj = obj?;
            ready.insert(
                obj.metadata.name.clone().unwrap_or_default(),
                is_ready(&obj),
            );
        }
        if ready.len() >= count() {
            synced = true;
        }
        let n = ready.values().filter(|r| **r).count();
        if synced && done(n) {
            return Ok(started.elapsed());
        }
        if n / 100 != last / 100 {
            eprintln!(
                "  {:>5.1}s  {n} Ready ({what})",
                started.elapsed().as_secs_f64()
            );
            last = n;
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{what}: only {n} of {} Ready after {limit:?}",
            count()
        );
    }
}

async fn measure(
    conns: &Api<DatabaseConnection>,
    bed: &testbed::Bed,
    log: &Path,
    pid_file: &Path,
) -> anyhow::Result<Measured> {
    let http_port = testbed::free_port()?;
    let apiserver = client(&bed.kube.kubeconfig).await?;
    let calls_before = api_calls(&apiserver).await?;
    let _watchdog = start_operator(bed, http_port, log, pid_file)?;
    let pid = operator_pid(pid_file)?;
    let all_ready = until(conns, Duration::from_secs(900), "first reconcile", |n| {
        n == count()
    })
    .await?;
    let calls_after = api_calls(&apiserver).await?;
    let calls: Vec<(String, f64)> = calls_after
        .iter()
        .map(|(k, after)| {
            let before = calls_before.get(k).copied().unwrap_or(0.0);
            (k.clone(), (after - before) / count() as f64)
        })
        .filter(|(_, per)| *per >= 0.005)
        .collect();
    // Printed now as well: the outage phase that follows can take minutes.
    for (call, per) in &calls {
        eprintln!("  apiserver requests per connection, first pass: {call:<36} {per:>8.2}");
    }
    let reconciles = reconciles_total(http_port)?;
    let peak_rss_mib = peak_rss_kib(pid)? / 1024.0;
    let mut measured = Measured {
        all_ready,
        calls,
        per_connection: reconciles / count() as f64,
        reconciles: reconciles / all_ready.as_secs_f64(),
        peak_rss_mib,
        outage: None,
    };
    if !outage_phase() {
        stop(pid);
        return Ok(measured);
    }

    // A server outage met by an operator restart (a rollout, a node drain): the new
    // operator reconciles all 1,000 while PostgreSQL is down, backs off, and must bring
    // every connection back once the server returns.
    bed.postgres.stop()?;
    stop(pid);
    let down = Instant::now();
    let http_port = testbed::free_port()?;
    let _watchdog = start_operator(bed, http_port, log, pid_file)?;
    let pid = operator_pid(pid_file)?;
    until(conns, Duration::from_secs(600), "server down", |n| n == 0).await?;
    bed.postgres.start()?;
    let outage = down.elapsed();
    let settle = until(conns, Duration::from_secs(900), "after restart", |n| {
        n == count()
    })
    .await?;
    stop(pid);
    measured.outage = Some((outage, settle));
    Ok(measured)
}

/// The apiserver's request counters (apiserver_request_total), summed by verb and resource.
async fn api_calls(client: &Client) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = client
        .request_text(hyper::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut calls = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let (labels, value) = line.rsplit_once(' ').unwrap_or_default();
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let resource = match label("subresource").as_str() {
            "" => label("resource"),
            sub => format!("{}/{sub}", label("resource")),
        };
        *calls
            .entry(format!("{} {resource}", label("verb")))
            .or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(calls)
}

fn reconciles_total(port: u16) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("dbconn_reconciles_total{kind=\"DatabaseConnection\"}"))
        .ok_or_else(|| anyhow::anyhow!("no reconcile counter in /metrics"))?;
    Ok(line.rsplit(' ').next().unwrap_or("0").parse()?)
}

/// VmHWM: the process's peak resident set.
fn peak_rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse::<f64>()?)
}

fn print_table(m: &Measured) {
    let ready = m.all_ready.as_secs_f64();
    println!();
    println!(
        "dbconn operator, {} DatabaseConnections, one PostgreSQL, this machine",
        count()
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "measure", "value", "goal", "goal/value"
    );
    println!("{}", "-".repeat(79));
    // The goal is for 1,000 connections; other counts print it scaled.
    let goal = 30.0 * count() as f64 / 1000.0;
    println!(
        "{:<44} {:>9.1}s {:>9.0}s {:>11.2}x",
        "time until all Ready (first reconcile)",
        ready,
        goal,
        goal / ready
    );
    println!(
        "{:<44} {:>10.1} {:>10} {:>12}",
        "reconciles per second (first pass)", m.reconciles, "-", "-"
    );
    println!(
        "{:<44} {:>10.2} {:>10} {:>12}",
        "reconciles per connection (first pass)", m.per_connection, "-", "-"
    );
    println!(
        "{:<44} {:>7.1}MiB {:>7}MiB {:>11.2}x",
        "operator peak RSS",
        m.peak_rss_mib,
        100,
        100.0 / m.peak_rss_mib
    );
    if let Some((outage, settle)) = m.outage {
        println!(
            "{:<44} {:>9.1}s {:>10} {:>12}",
            "outage (server down, operator restarted)",
            outage.as_secs_f64(),
            "-",
            "-"
        );
        println!(
            "{:<44} {:>9.1}s {:>10} {:>12}",
            "all Ready again after the server returned",
            settle.as_secs_f64(),
            "-",
            "-"
        );
    }
    println!();
    println!("apiserver requests per connection during the first pass (every client, by verb):");
    let total: f64 = m.calls.iter().map(|(_, n)| n).sum();
    for (call, per) in &m.calls {
        println!("  {call:<42} {per:>8.2}");
    }
    println!("  {:<42} {total:>8.2}", "all");
}
