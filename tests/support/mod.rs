//! The harness every integration test shares: the running test bed (attached through
//! `DBCONN_BED`, or started once for this test binary with a watchdog that stops it when the
//! binary exits), kubectl against the bed's apiserver, and unique names for isolation.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub use testbed::Bed;

pub mod pooler;

/// The bed for this test binary.
pub fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| match std::env::var_os("DBCONN_BED") {
        Some(dir) => Bed::load(Path::new(&dir)).expect("DBCONN_BED names a running bed"),
        None => {
            let dir = std::env::temp_dir().join(format!("dbconn-bed-test-{}", std::process::id()));
            Bed::start(&dir, Some(std::process::id()))
                .expect("starting the test bed (run scripts/setup.sh first)")
        }
    })
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique within this bed: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs kubectl against the bed.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg(format!("--kubeconfig={}", bed().kube.kubeconfig.display()))
        .arg("--request-timeout=30s")
        .args(args)
        .output()
        .expect("running kubectl")
}

/// Runs kubectl and returns stdout, panicking with stderr when it fails.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies the committed CRDs and waits until they are Established (idempotent).
pub fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo().join("crds");
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().expect("utf-8 path"),
        ]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/databaseconnections.dbconn.io",
            "crd/databaseservers.dbconn.io",
        ]);
    });
}

/// Creates a namespace with a unique name. On a bed with a node, waits for its `default`
/// ServiceAccount (the controller manager makes it; until then the apiserver refuses pods).
pub fn namespace(prefix: &str) -> String {
    let ns = unique(prefix);
    kubectl_ok(&["create", "namespace", &ns]);
    if bed().node.is_some() {
        kubectl_eventually(&["get", "serviceaccount", "default", "-n", &ns], 30);
    }
    ns
}

/// A `dbconn operator` process started by a test, watched by a watchdog that stops it when
/// the test binary exits, even after a panic.
pub struct Operator {
    /// Its name in the Lease and in the server's application_name.
    pub identity: String,
    pub log: PathBuf,
    pid_file: PathBuf,
    /// Port of /healthz, /readyz and /metrics on 127.0.0.1.
    pub http_port: u16,
}

impl Operator {
    /// Starts an operator with test-friendly timings plus `extra` flags.
    pub fn start(name: &str, extra: &[&str]) -> Operator {
        Operator::start_with(name, extra, &[])
    }

    /// As `start`, with environment variables that win over the defaults (KUBECONFIG,
    /// POD_NAMESPACE, …).
    pub fn start_with(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        install_crds();
        kubectl(&["create", "namespace", "dbconn-system"]);
        let tag = unique(name);
        let log = std::env::temp_dir().join(format!("dbconn-operator-{tag}.log"));
        let pid_file = std::env::temp_dir().join(format!("dbconn-operator-{tag}.pid"));
        let http_port = testbed::free_port().expect("port");
        let http = format!("127.0.0.1:{http_port}");
        let lease = format!("dbconn-test-{tag}");
        let mut args: Vec<&str> = vec![
            "--revalidate-seconds",
            "20",
            "--max-backoff-seconds",
            "16",
            "--lease-seconds",
            "5",
            "--lease-name",
            &lease,
            "--http-addr",
            &http,
            // Stop at once on SIGTERM: only the chart's pods need to drain.
            "--shutdown-delay-seconds",
            "0",
        ];
        // Later flags win: a test may override the defaults above.
        args.extend_from_slice(extra);
        let script = "log=$1; pidfile=$2; owner=$3; shift 3; \
                      \"$0\" operator \"$@\" >\"$log\" 2>&1 & op=$!; echo $op >\"$pidfile\"; \
                      while kill -0 \"$owner\" 2>/dev/null && kill -0 $op 2>/dev/null; do sleep 1; done; kill $op 2>/dev/null";
        let mut watchdog = Command::new("setsid")
            .args(["sh", "-c", script, env!("CARGO_BIN_EXE_dbconn")])
            .arg(&log)
            .arg(&pid_file)
            .arg(std::process::id().to_string())
            .args(&args)
            .env("KUBECONFIG", &bed().kube.kubeconfig)
            .env("POD_NAMESPACE", "dbconn-system")
            .env("POD_NAME", &tag)
            .env("RUST_LOG", "info,dbconn=debug")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting dbconn operator");
        // Reaped in the background; it ends with the operator or with this process.
        std::thread::spawn(move || watchdog.wait());
        Operator {
            identity: tag,
            log,
            pid_file,
            http_port,
        }
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id, once started.
    pub fn pid(&self) -> u32 {
        for _ in 0..100 {
            if let Some(pid) = std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the operator did not start");
    }

    /// Kills it at once (SIGKILL): no chance to release its Lease.
    pub fn kill(&self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid().to_string()])
            .status();
    }

    /// GET a path of its operations endpoint: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    /// Polls `/readyz` until it answers 200, for at most `seconds`: ready once its caches
    /// have listed everything, which under load can trail its start (and its election) by a
    /// few seconds. Panics with the last answer and its log when it never is.
    pub fn assert_ready_within(&self, seconds: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let (code, body) = self.get("/readyz");
            if code == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz still answers {code} after {seconds} s: {body}\noperator log:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1: (status code, body); (0, error) when unreachable.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The operator shared by this test binary's tests.
pub fn operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| Operator::start("shared", &[]))
}

/// Starts the shared operator (once) and returns its log file.
pub fn operator_log() -> &'static Path {
    &operator().log
}

/// Polls a jsonpath of an object until it equals `want` (at most `secs` seconds).
pub fn wait_for(kind: &str, ns: &str, name: &str, jsonpath: &str, want: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let out = kubectl(&[
            "get",
            kind,
            "-n",
            ns,
            name,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ]);
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got == want {
            return got;
        }
        if std::time::Instant::now() > deadline {
            let dump = kubectl_ok(&["get", kind, "-n", ns, name, "-o", "yaml"]);
            panic!(
                "{kind} {ns}/{name}: {jsonpath} is {got:?}, not {want:?} after {secs}s:\n{dump}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Applies a YAML document given as text.
pub fn apply_yaml(yaml: &str) {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", bed().kube.kubeconfig.display()))
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply` of a manifest that may be refused: (success, stdout + stderr).
pub fn try_apply(yaml: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("manifest")));
    std::fs::write(&path, yaml).expect("write");
    let out = kubectl(&["apply", "-f", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs kubectl until it succeeds (for example while the apiserver still publishes a new
/// CRD's OpenAPI), at most `secs` seconds.
pub fn kubectl_eventually(args: &[&str], secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let out = kubectl(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// jsonpath of a DatabaseConnection's Ready status.
pub const READY: &str = r#"{.status.conditions[?(@.type=="Ready")].status}"#;

/// jsonpath of one field (`reason`, `message`, `status`) of a condition.
pub fn condition(kind: &str, field: &str) -> String {
    format!(r#"{{.status.conditions[?(@.type=="{kind}")].{field}}}"#)
}

/// Waits until a DatabaseConnection's condition has the reason `want`; returns its message.
pub fn wait_reason(ns: &str, name: &str, kind: &str, want: &str, secs: u64) -> String {
    wait_for("dbconn", ns, name, &condition(kind, "reason"), want, secs);
    get(ns, "dbconn", name, &condition(kind, "message"))
}

/// One jsonpath of an object.
pub fn get(ns: &str, kind: &str, name: &str, jsonpath: &str) -> String {
    kubectl_ok(&[
        "-n",
        ns,
        "get",
        kind,
        name,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

/// Creates (or replaces) a generic Secret from literal key/value pairs.
pub fn secret(ns: &str, name: &str, data: &[(&str, &str)]) {
    use std::fmt::Write;
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData:\n"
    );
    for (k, v) in data {
        // JSON strings are YAML flow scalars: any byte sequence survives.
        let _ = writeln!(yaml, "  {k:?}: {}", json_string(v));
    }
    apply_yaml(&yaml);
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One key of a Secret, decoded.
pub fn secret_value(ns: &str, name: &str, key: &str) -> String {
    use base64::Engine;
    let b64 = get(
        ns,
        "secret",
        name,
        &format!("{{.data.{}}}", key.replace('.', "\\.")),
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

/// Runs psql with the given environment; stdout on success, stderr on failure.
pub fn psql_env(sql: &str, env: &[(&str, String)]) -> Result<String, String> {
    psql(None, sql, env)
}

/// Runs psql with a connection URI.
pub fn psql_uri(uri: &str, sql: &str) -> Result<String, String> {
    psql(Some(uri), sql, &[])
}

fn psql(conninfo: Option<&str>, sql: &str, env: &[(&str, String)]) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .args(conninfo)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// psql with the Secret's PG* keys (the file paths point at the bed's files here, where the
/// chart would mount the Secret's).
pub fn psql_as_secret(ns: &str, secret: &str, sql: &str) -> Result<String, String> {
    let mut env: Vec<(&str, String)> = [
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGSSLMODE",
    ]
    .into_iter()
    .map(|k| (k, secret_value(ns, secret, k)))
    .collect();
    env.push(("PGSSLROOTCERT", bed().ca_cert.display().to_string()));
    psql_env(sql, &env)
}

/// Admin credentials (username/password keys) and the bed's CA, as Secrets in `ns`.
pub fn admin_and_ca(ns: &str) {
    let pg = &bed().postgres;
    secret(
        ns,
        "admin",
        &[
            ("username", "postgres"),
            ("password", &pg.superuser_password),
        ],
    );
    let ca = std::fs::read_to_string(&bed().ca_cert).expect("CA");
    secret(ns, "db-ca", &[("ca.crt", &ca)]);
}

/// A DatabaseConnection with the given `server:` block (indented by four spaces).
pub fn connection(ns: &str, name: &str, server: &str, rest: &str) -> String {
    format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  server:\n{server}\n{rest}"
    )
}

/// A fresh database; its name is safe to use unquoted.
pub fn database(prefix: &str) -> String {
    let db = unique(prefix).replace('-', "_");
    bed()
        .postgres
        .psql("postgres", &format!("CREATE DATABASE {db}"))
        .expect("create database");
    db
}

/// Changes an annotation so the operator reconciles now instead of at its next re-check.
pub fn poke(ns: &str, name: &str) {
    annotate(ns, name, &format!("test.dbconn.io/poke={}", unique("p")));
}

/// Sets `key=value` on a DatabaseConnection.
pub fn annotate(ns: &str, name: &str, key_value: &str) {
    kubectl_ok(&[
        "-n",
        ns,
        "annotate",
        "--overwrite",
        "dbconn",
        name,
        key_value,
    ]);
}

/// A TCP relay on 127.0.0.1 in front of the bed's PostgreSQL that a test can switch off
/// (new connections are closed at once and open ones cut) and on again: a server outage
/// without stopping the server other tests use.
pub struct Relay {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (flag, conns) = (up.clone(), open.clone());
        // The thread ends with the test binary; it only ever serves loopback.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut list = conns.lock().expect("relay list");
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        list.push(c);
                    }
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        Relay { port, up, open }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().expect("relay list").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(from: &std::net::TcpStream, to: &std::net::TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Waits until an object is gone (at most `secs` seconds).
pub fn wait_deleted(kind: &str, ns: &str, name: &str, secs: u64) {
    let out = kubectl(&[
        "-n",
        ns,
        "wait",
        "--for=delete",
        &format!("{kind}/{name}"),
        &format!("--timeout={secs}s"),
    ]);
    if !out.status.success() {
        let dump = kubectl(&["-n", ns, "get", kind, name, "-o", "yaml"]);
        panic!(
            "{kind} {ns}/{name} still exists after {secs}s: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&dump.stdout)
        );
    }
}

/// Runs the helm that `make setup` built against the bed; stdout, panicking on failure.
pub fn helm(args: &[&str]) -> String {
    let cache = std::env::var_os("DBCONN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").expect("HOME")).join(".cache/dbconn"));
    let out = Command::new(cache.join("bin/helm"))
        .args(args)
        .env("KUBECONFIG", &bed().kube.kubeconfig)
        .current_dir(repo())
        .output()
        .expect("helm (make setup installs it)");
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig for the bed's apiserver that authenticates with `token`.
pub fn token_kubeconfig(token: &str) -> PathBuf {
    let server = kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("sa")));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: bed, user: sa}}\ncurrent-context: sa\n",
        ca = bed().ca_cert.display()
    );
    std::fs::write(&path, yaml).expect("kubeconfig");
    path
}

/// The operator as the chart installs it, run out of cluster: the chart's ServiceAccount,
/// ClusterRole and Role (nothing else) in a fresh release namespace, and a token of that
/// ServiceAccount, so a verb the chart does not grant fails here. Returns the operator and
/// its namespace (where DatabaseServer Secrets go) and its ServiceAccount's user name.
pub fn operator_with_chart_rbac(name: &str) -> (Operator, String, String) {
    install_crds();
    let release = unique("rbac");
    let system = namespace("dbconn-sys");
    let rbac = helm(&[
        "template",
        &release,
        "charts/dbconn",
        "-n",
        &system,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ]);
    apply_yaml(&rbac);
    let full = format!("{release}-dbconn");
    let token = kubectl_ok(&["create", "token", &full, "-n", &system, "--duration", "2h"]);
    let kubeconfig = token_kubeconfig(token.trim());
    let kc = kubeconfig.to_str().expect("path").to_owned();
    let lease = format!("{full}-operator");
    let op = Operator::start_with(
        name,
        &["--lease-name", &lease],
        &[
            ("KUBECONFIG", kc.as_str()),
            ("POD_NAMESPACE", system.as_str()),
        ],
    );
    let user = format!("system:serviceaccount:{system}:{full}");
    (op, system, user)
}

/// An application namespace acting through a ServiceAccount token that carries only a
/// namespaced Role (DatabaseConnections, Secrets, Pods): the apiserver enforces what a
/// tenant may do.
pub struct Tenant {
    pub ns: String,
    pub kubeconfig: PathBuf,
}

impl Tenant {
    /// A new namespace with these labels, its ServiceAccount `tenant`, Role and token.
    pub fn new(prefix: &str, labels: &[(&str, &str)]) -> Tenant {
        let ns = namespace(prefix);
        for (k, v) in labels {
            kubectl_ok(&["label", "namespace", &ns, &format!("{k}={v}")]);
        }
        apply_yaml(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: tenant, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: tenant, namespace: {ns}}}\nrules:\n\
             - apiGroups: [dbconn.io]\n  resources: [databaseconnections]\n  verbs: [get, list, watch, create, update, patch, delete]\n\
             - apiGroups: [\"\"]\n  resources: [secrets, pods]\n  verbs: [get, list, watch, create, update, patch, delete]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenant, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tenant}}\n\
             subjects: [{{kind: ServiceAccount, name: tenant, namespace: {ns}}}]\n"
        ));
        let token = kubectl_ok(&["create", "token", "tenant", "-n", &ns, "--duration", "2h"]);
        Tenant {
            kubeconfig: token_kubeconfig(token.trim()),
            ns,
        }
    }

    /// kubectl as the tenant, in its namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["--request-timeout=30s", "-n", &self.ns])
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// `kubectl apply` of `yaml` as the tenant: (accepted, stdout and stderr).
    pub fn apply(&self, yaml: &str) -> (bool, String) {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique("tenant")));
        std::fs::write(&path, yaml).expect("write");
        let out = self.kubectl(&["apply", "-f", path.to_str().expect("path")]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// As `apply`, panicking with the apiserver's answer when refused.
    pub fn apply_ok(&self, yaml: &str) {
        let (ok, out) = self.apply(yaml);
        assert!(ok, "the tenant's apply was refused: {out}\n{yaml}");
    }

    /// Creates a Secret as the tenant.
    pub fn secret(&self, name: &str, data: &[(&str, &str)]) {
        use std::fmt::Write;
        let mut yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {}}}\nstringData:\n",
            self.ns
        );
        for (k, v) in data {
            let _ = writeln!(yaml, "  {k:?}: {}", json_string(v));
        }
        self.apply_ok(&yaml);
    }
}

/// Peak and current resident memory of a process, in KiB (VmHWM, VmRSS).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A client that scripts/drivers.sh (make setup) installed under the cache's drivers/.
pub fn installed(path: &str) -> PathBuf {
    let cache = std::env::var_os("DBCONN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dbconn")
        });
    let p = cache.join("drivers").join(path);
    assert!(
        p.exists(),
        "{} is missing: run scripts/drivers.sh (make setup)",
        p.display()
    );
    p
}

/// A connection Secret's data, decoded.
pub fn secret_data(ns: &str, name: &str) -> std::collections::BTreeMap<String, String> {
    use base64::Engine;
    let json = get(ns, "secret", name, "{.data}");
    let data: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&json).expect("secret data");
    data.into_iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .expect("base64");
            (k, String::from_utf8(bytes).expect("utf-8"))
        })
        .collect()
}

/// The Secret's files under /var/run/dbconn/<connection>, as the kubelet mounts them;
/// removed when dropped.
pub struct Mounted(pub PathBuf);

/// Writes a connection Secret's data where the webhook mounts it, so the paths its values
/// name exist on this machine.
pub fn mount_secret(
    connection: &str,
    data: &std::collections::BTreeMap<String, String>,
) -> Mounted {
    let dir = PathBuf::from(dbconn::operator::secret::mount_dir(connection));
    std::fs::create_dir_all(&dir).expect("mount dir");
    for (k, v) in data {
        std::fs::write(dir.join(k), v).expect("secret file");
    }
    Mounted(dir)
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent); // only when empty
        }
    }
}
