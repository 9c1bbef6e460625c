//! The chart installed into the bed's real kube-apiserver, the operator run out of cluster
//! with the chart's ServiceAccount token (so a missing RBAC verb fails here), its webhook
//! registered through the chart on a loopback URL, and Pods created through the apiserver:
//! what is stored is what the kubelet would run.

mod support;

use std::time::{Duration, Instant};

use support::{
    Operator, READY, admin_and_ca, apply_yaml, bed, connection, database, get, helm, kubectl,
    kubectl_ok, namespace, token_kubeconfig, try_apply, unique, wait_for,
};

/// A helm release, uninstalled when dropped (even when the test fails): its webhook
/// configuration is cluster-wide and would refuse every later opted-in pod on this bed.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ =
            std::panic::catch_unwind(|| helm(&["uninstall", &self.name, "-n", &self.namespace]));
    }
}

fn pod(ns: &str, name: &str, labels: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\n  annotations: {{{annotations}}}\n\
         spec:\n{spec}"
    )
}

const APP: &str = "  containers:\n    - name: app\n      image: shop/app:1.0\n";

fn init_names(ns: &str, pod: &str) -> String {
    get(ns, "pod", pod, "{.spec.initContainers[*].name}")
}

#[test]
fn the_chart_installs_and_its_webhook_injects_opted_in_pods() {
    support::install_crds();
    let release = unique("dbc");
    let system = namespace("dbconn-sys");
    let port = testbed::free_port().expect("port");
    let url = format!("https://127.0.0.1:{port}/mutate-pods");
    let _installed = Release {
        name: release.clone(),
        namespace: system.clone(),
    };
    helm(&[
        "install",
        &release,
        "charts/dbconn",
        "-n",
        &system,
        "--skip-crds",
        "--set",
        &format!("webhook.url={url}"),
        "--set",
        "webhook.timeoutSeconds=5",
    ]);
    let full = format!("{release}-dbconn");
    // Every object of the chart is there.
    for (kind, ns_flag) in [
        ("deployment", true),
        ("serviceaccount", true),
        ("service", true),
        ("poddisruptionbudget", true),
        ("role", true),
        ("rolebinding", true),
        ("clusterrole", false),
        ("clusterrolebinding", false),
        ("mutatingwebhookconfiguration", false),
    ] {
        let mut args = vec!["get", kind, "-o", "name"];
        if ns_flag {
            args.extend(["-n", system.as_str()]);
        }
        let names = kubectl_ok(&args);
        assert!(names.contains(&release), "{kind}: {names}");
    }
    assert_eq!(
        get(&system, "deployment", &full, "{.spec.replicas}"),
        "2",
        "two replicas with leader election"
    );

    // The operator out of cluster, as the chart's ServiceAccount.
    let token = kubectl_ok(&["create", "token", &full, "-n", &system, "--duration", "1h"]);
    let kubeconfig = token_kubeconfig(token.trim());
    let kc = kubeconfig.to_str().expect("path").to_owned();
    let addr = format!("127.0.0.1:{port}");
    let lease = format!("{full}-operator");
    let secret_name = format!("{full}-webhook-tls");
    let service = format!("{full}-webhook");
    let env = [
        ("KUBECONFIG", kc.as_str()),
        ("POD_NAMESPACE", system.as_str()),
        ("DBCONN_WEBHOOK_ADDR", addr.as_str()),
        ("DBCONN_WEBHOOK_EXTRA_NAMES", "127.0.0.1"),
        ("DBCONN_WEBHOOK_CONFIG", full.as_str()),
        ("DBCONN_WEBHOOK_SECRET", secret_name.as_str()),
        ("DBCONN_WEBHOOK_SERVICE", service.as_str()),
        ("DBCONN_POOLER_IMAGE", "registry.example/dbconn:test"),
    ];
    let op = Operator::start_with("inject", &["--lease-name", &lease], &env);

    // A Ready connection with the pooler on, in an application namespace.
    let ns = namespace("shop");
    admin_and_ca(&ns);
    let db = database("inject");
    let server = format!(
        "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
        bed().postgres.port
    );
    apply_yaml(&connection(
        &ns,
        "orders",
        &server,
        &format!(
            "  database: {db}\n  role: {{name: {db}_app}}\n  access: readWrite\n  pooler: {{enabled: true}}\n"
        ),
    ));
    apply_yaml(&connection(
        &ns,
        "unready",
        "    host: 127.0.0.1\n    port: 1\n    adminSecretRef: {name: admin}\n    tls: {sslmode: disable}",
        &format!(
            "  database: {db}\n  role: {{name: unready_app}}\n  pooler: {{enabled: true, port: 6433}}\n"
        ),
    ));
    wait_for("dbconn", &ns, "orders", READY, "True", 120);

    // The operator issued the webhook certificate and gave its CA to the configuration.
    let deadline = Instant::now() + Duration::from_secs(60);
    while kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration",
        &full,
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ])
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "caBundle never set:\n{}",
            op.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The metrics the chart's alerts read: each connection's Ready (the unreachable one 0),
    // and when the webhook's certificate expires (the operator issues it for a year).
    let want = [
        format!("dbconn_connection_ready{{namespace=\"{ns}\",name=\"orders\"}} 1"),
        format!("dbconn_connection_ready{{namespace=\"{ns}\",name=\"unready\"}} 0"),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (_, text) = op.get("/metrics");
        let expiry: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("dbconn_webhook_certificate_expiry_timestamp_seconds "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let year = 365.0 * 86400.0;
        if want.iter().all(|w| text.contains(w.as_str())) && (expiry - now - year).abs() < 86400.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "operator metrics: {text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        metrics.contains("dbconn_reconcile_errors_total"),
        "{metrics}"
    );

    // An opted-in Pod gets the sidecar first, as a native sidecar, with its probe, mount and
    // the URL in the app container. Retried until the webhook answers (it starts serving once
    // its certificate is loaded).
    let injected = pod(
        &ns,
        "web",
        "dbconn.io/inject: \"true\"",
        "dbconn.io/connections: orders",
        APP,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = try_apply(&injected);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{out}\n{}", op.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(init_names(&ns, "web"), "dbconn-orders");
    let first = |path: &str| {
        get(
            &ns,
            "pod",
            "web",
            &format!("{{.spec.initContainers[0].{path}}}"),
        )
    };
    assert_eq!(first("restartPolicy"), "Always");
    assert_eq!(first("image"), "registry.example/dbconn:test");
    assert_eq!(first("startupProbe.httpGet.path"), "/readyz");
    assert_eq!(first("volumeMounts[0].mountPath"), "/var/run/dbconn/orders");
    assert_eq!(first("volumeMounts[0].readOnly"), "true");
    assert_eq!(first("securityContext.readOnlyRootFilesystem"), "true");
    assert_eq!(first("securityContext.capabilities.drop[0]"), "ALL");
    assert_eq!(
        first("securityContext.seccompProfile.type"),
        "RuntimeDefault"
    );
    assert_eq!(first("resources.requests.memory"), "16Mi");
    assert_eq!(
        get(
            &ns,
            "pod",
            "web",
            "{.spec.volumes[?(@.name==\"dbconn-orders\")].secret.secretName}"
        ),
        "orders"
    );
    assert_eq!(
        get(
            &ns,
            "pod",
            "web",
            "{.spec.containers[0].env[?(@.name==\"DATABASE_URL\")].valueFrom.secretKeyRef.key}"
        ),
        "uri"
    );
    assert_eq!(
        get(
            &ns,
            "pod",
            "web",
            "{.metadata.annotations.dbconn\\.io/injected}"
        ),
        "orders"
    );
    // The Secret's uri points at the sidecar's port.
    let uri = support::secret_value(&ns, "orders", "uri");
    assert!(uri.contains("@127.0.0.1:6432/"), "{uri}");

    // A Job's pod (restartPolicy Never) too; a pod that already has the sidecar gets no
    // second one.
    let job = pod(
        &ns,
        "nightly",
        "dbconn.io/inject: \"true\", job-name: nightly",
        "dbconn.io/connections: orders",
        &format!("  restartPolicy: Never\n{APP}"),
    );
    assert!(try_apply(&job).0);
    assert_eq!(init_names(&ns, "nightly"), "dbconn-orders");
    let stored = kubectl_ok(&["get", "pod", "web", "-n", &ns, "-o", "json"]);
    let mut again: serde_json::Value = serde_json::from_str(&stored).expect("json");
    again["metadata"] = serde_json::json!({
        "name": "web-again", "namespace": ns,
        "labels": {"dbconn.io/inject": "true"},
        "annotations": {"dbconn.io/connections": "orders"},
    });
    again.as_object_mut().expect("object").remove("status");
    assert!(try_apply(&again.to_string()).0);
    assert_eq!(init_names(&ns, "web-again"), "dbconn-orders");

    // Not opted in, or in an excluded namespace: untouched.
    assert!(
        try_apply(&pod(
            &ns,
            "plain",
            "app: plain",
            "dbconn.io/connections: orders",
            APP
        ))
        .0
    );
    assert_eq!(init_names(&ns, "plain"), "");
    assert!(
        try_apply(&pod(
            &system,
            "own",
            "dbconn.io/inject: \"true\"",
            "dbconn.io/connections: orders",
            APP
        ))
        .0
    );
    assert_eq!(init_names(&system, "own"), "");

    // Bad requests are refused with the reason.
    for (name, conns, want) in [
        (
            "missing",
            "nope",
            "DatabaseConnection \"nope\" does not exist",
        ),
        ("unready", "unready", "is not Ready"),
    ] {
        let (ok, out) = try_apply(&pod(
            &ns,
            name,
            "dbconn.io/inject: \"true\"",
            &format!("dbconn.io/connections: {conns}"),
            APP,
        ));
        assert!(!ok && out.contains(want), "{name}: {out}");
    }

    // The webhook down: failurePolicy Fail refuses opted-in pods.
    op.kill();
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out) = try_apply(&pod(
        &ns,
        "while-down",
        "dbconn.io/inject: \"true\"",
        "dbconn.io/connections: orders",
        APP,
    ));
    assert!(!ok && out.contains("failed calling webhook"), "{out}");

    // With failurePolicy Ignore and failure mode admit: a pod created while the webhook was
    // down runs without its sidecar, and the operator lists it on the connection with an
    // Event; a pod naming a connection that is not Ready is admitted with a warning.
    helm(&[
        "upgrade",
        &release,
        "charts/dbconn",
        "-n",
        &system,
        "--skip-crds",
        "--reuse-values",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "webhook.failureMode=admit",
    ]);
    let (ok, out) = try_apply(&pod(
        &ns,
        "unguarded",
        "dbconn.io/inject: \"true\"",
        "dbconn.io/connections: orders",
        APP,
    ));
    assert!(ok, "{out}");
    assert_eq!(init_names(&ns, "unguarded"), "");
    let mut env_admit = env.to_vec();
    env_admit.push(("DBCONN_WEBHOOK_FAILURE_MODE", "admit"));
    let op = Operator::start_with("inject-admit", &["--lease-name", &lease], &env_admit);
    wait_for(
        "dbconn",
        &ns,
        "orders",
        "{.status.uninjectedPods}",
        "[\"unguarded\"]",
        90,
    );
    let events = kubectl_ok(&[
        "get",
        "events",
        "-n",
        &ns,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("PodsNotInjected"), "{events}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let (ok, out) = try_apply(&pod(
            &ns,
            "warned",
            "dbconn.io/inject: \"true\"",
            "dbconn.io/connections: unready",
            APP,
        ));
        if ok && out.contains("dbconn did not inject") {
            break out;
        }
        kubectl(&["delete", "pod", "warned", "-n", &ns, "--wait=false"]);
        assert!(Instant::now() < deadline, "{out}\n{}", op.log_text());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(out.contains("is not Ready"), "{out}");
    drop(op);
}
