//! dbconn on a node, as a user installs it: `helm install` of the chart runs the operator as
//! its two pods (leader election, the webhook behind its Service, the certificate issued and
//! the caBundle patched inside the cluster, probes passing), and an app Deployment and a Job
//! query PostgreSQL through their injected sidecars, over TLS, as the connection's role (the
//! app is testbed/images/query-loop.sh in the bed's psql image).
//! Everything runs on the bed's node (testbed/src/node.rs, docs/testbed.md) from the images
//! scripts/bed-images.sh built of this checkout.
//!
//! One test, in steps: the release's webhook and operator are cluster-wide, so they exist only
//! while this test runs and are removed when it ends, failed or not.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    READY, apply_yaml, bed, get, helm, install_crds, kubectl, kubectl_ok, namespace, secret,
    unique, wait_for,
};

/// Removes what the test installed: the app namespace (while the operator still runs, so
/// its finalizers are handled), then the release and the DatabaseServer.
struct Installed {
    release: String,
    system: String,
    app: String,
    server: String,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.app, "--timeout=90s"]);
        let _ = std::panic::catch_unwind(|| {
            helm(&[
                "uninstall",
                &self.release,
                "-n",
                &self.system,
                "--wait",
                "--timeout",
                "90s",
            ])
        });
        let _ = kubectl(&["delete", "databaseserver", &self.server, "--wait=false"]);
    }
}

#[test]
fn helm_install_runs_dbconn_on_the_node_and_apps_query_through_their_sidecars() {
    let node = bed().node.as_ref().expect(
        "this test needs the bed's node: run it with `make test` or scripts/with-bed.sh (not --no-node)",
    );
    install_crds();
    let release = unique("node");
    let system = namespace("dbconn-node");
    let app = namespace("app");
    let full = format!("{release}-dbconn");
    let installed = Installed {
        release: release.clone(),
        system: system.clone(),
        app: app.clone(),
        server: format!("{release}-pg"),
    };

    // Item 4: helm install as a user runs it, the image from the node's containerd.
    helm(&[
        "install",
        &release,
        "charts/dbconn",
        "-n",
        &system,
        "--skip-crds",
        "--set",
        &format!("image.repository={}", image_repository()),
        "--set",
        "image.tag=dev",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "webhook.budgetMode=refuse",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let operators = operator_pods(&system, &release);
    assert_eq!(operators.len(), 2, "two operator pods: {operators:?}");
    for pod in &operators {
        assert_eq!(
            get(&system, "pod", pod, "{.spec.nodeName}"),
            node.name,
            "{pod} runs on the node"
        );
        assert_eq!(
            get(
                &system,
                "pod",
                pod,
                r#"{.status.conditions[?(@.type=="Ready")].status}"#
            ),
            "True",
            "{pod}: its readiness probe passes"
        );
    }
    // Liveness passes too: nothing restarted by the time the app has run (checked below).
    let restarts = |pods: &[String]| -> Vec<String> {
        pods.iter()
            .map(|p| {
                get(
                    &system,
                    "pod",
                    p,
                    "{.status.containerStatuses[0].restartCount}",
                )
            })
            .collect()
    };
    // Leader election between the two pods.
    let holder = wait_lease(&system, &format!("{full}-operator"), &operators);
    // The operator issued the webhook certificate and patched the caBundle in the cluster.
    let ca = get(
        &system,
        "secret",
        &format!("{full}-webhook-tls"),
        "{.data.ca\\.crt}",
    );
    assert!(!ca.is_empty(), "the webhook Secret holds a CA");
    wait_for(
        "mutatingwebhookconfiguration",
        &system,
        &full,
        "{.webhooks[0].clientConfig.caBundle}",
        &ca,
        60,
    );
    assert_eq!(
        get(
            &system,
            "mutatingwebhookconfiguration",
            &full,
            "{.webhooks[0].clientConfig.service.name}"
        ),
        format!("{full}-webhook"),
        "the apiserver calls the webhook through its Service"
    );
    eprintln!("operator pods {operators:?} Ready, leader {holder}, caBundle patched");

    // Item 5: a server, a connection with the pooler, an app that uses it.
    let pg = &bed().postgres;
    secret(
        &system,
        "pg-admin",
        &[
            ("username", "postgres"),
            ("password", &pg.superuser_password),
        ],
    );
    let ca_pem = std::fs::read_to_string(&bed().ca_cert).expect("bed CA");
    secret(&system, "pg-ca", &[("ca.crt", &ca_pem)]);
    kubectl_ok(&["label", "namespace", &app, &format!("dbconn-e2e={release}")]);
    let role = format!("{app}_orders");
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{name: {server}}}\nspec:\n\
         \x20 host: {host}\n  port: {port}\n  database: postgres\n\
         \x20 tls: {{sslmode: verify-full, caSecretRef: {{name: pg-ca, key: ca.crt}}}}\n\
         \x20 adminSecretRef: {{name: pg-admin}}\n\
         \x20 allowedNamespaces: {{matchLabels: {{dbconn-e2e: {release}}}}}\n\
         \x20 tenants:\n  - namespaceSelector: {{matchLabels: {{dbconn-e2e: {release}}}}}\n    databases: [postgres]\n    roleNames: [\"{{namespace}}_*\"]\n\
         ---\napiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: orders, namespace: {app}}}\nspec:\n\
         \x20 serverRef: {server}\n  database: postgres\n  role: {{name: {role}}}\n  access: readWrite\n  pooler: {{enabled: true}}\n",
        server = installed.server,
        host = node.ip,
        port = pg.port,
    ));
    // The operator in its pod reaches the apiserver and PostgreSQL from the pod network.
    wait_for("dbconn", &app, "orders", READY, "True", 120);

    apply_yaml(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {app}}}\nspec:\n\
         \x20 selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata:\n\
         \x20     labels: {{app: web, dbconn.io/inject: \"true\"}}\n      annotations: {{dbconn.io/connections: orders}}\n\
         \x20   spec:\n      containers:\n      - name: web\n        image: {PSQL_IMAGE}\n        imagePullPolicy: Never\n\
         \x20       command: [query-loop]\n",
    ));
    let web = wait_pod(&app, "app=web", 120);
    let line = wait_log(&app, &web, "web", &format!("query ran as {role} "), 120);
    assert!(
        line.contains("via 127.0.0.1 port 6432, server connection TLSv1."),
        "the query went through the sidecar and over TLS to PostgreSQL: {line}"
    );
    eprintln!("app pod {web}: {line}");
    let pod = pod_json(&app, &web);
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "dbconn-orders", "the sidecar: {sidecar}");
    assert_eq!(
        sidecar["restartPolicy"], "Always",
        "a native sidecar: {sidecar}"
    );
    assert!(
        sidecar["startupProbe"].is_object(),
        "its startup probe gates the app: {sidecar}"
    );
    let sidecar_started = started_at(&pod, "initContainerStatuses", "dbconn-orders");
    let app_started = started_at(&pod, "containerStatuses", "web");
    assert!(
        sidecar_started <= app_started,
        "the sidecar started first ({sidecar_started} <= {app_started})"
    );

    assert_eq!(
        restarts(&operators),
        ["0", "0"],
        "the operator pods' liveness probes pass"
    );
    startup_probe_gates_the_app(&app, &role, &line);
    job_with_the_sidecar_completes(&app, &role);
    killed_sidecar_restarts_and_the_app_reconnects(&app, &web, &role, node);
    deleting_the_pod_stops_the_app_then_the_sidecar(&app, &web);
    rotation_keeps_a_client_loop_working(&app, &installed.server);
    budget_refuses_a_pod_that_does_not_fit(&app, &installed.server);
    operator_rollout_loses_no_admission(&system, &release, &app);
    drop(installed);
}

/// A pod whose sidecar cannot log in yet (pg_hba.conf rejects the role): the sidecar runs,
/// the app does not start until the sidecar's startup probe passes (the role may log in
/// again). The pod is admitted while the connection is Ready and held by a scheduling gate
/// until the server refuses the role.
fn startup_probe_gates_the_app(app: &str, role: &str, ok_line: &str) {
    apply_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: gated\n  namespace: {app}\n  labels: {{dbconn.io/inject: \"true\"}}\n\
         \x20 annotations: {{dbconn.io/connections: orders}}\nspec:\n  schedulingGates: [{{name: dbconn.io/e2e}}]\n\
         \x20 containers:\n  - name: app\n    image: {PSQL_IMAGE}\n\
         \x20   imagePullPolicy: Never\n    command: [query-loop]\n",
    ));
    let rejected = HbaReject::new(role);
    kubectl_ok(&[
        "patch",
        "pod",
        "-n",
        app,
        "gated",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pod_json(app, "gated")["status"]["initContainerStatuses"][0]["state"]["running"]
        .is_object()
    {
        assert!(
            Instant::now() < deadline,
            "the gated pod's sidecar never ran"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Several probe periods (1 s each) while the role cannot log in: the app stays waiting.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        let pod = pod_json(app, "gated");
        assert_eq!(
            pod["status"]["initContainerStatuses"][0]["started"], false,
            "the sidecar cannot log in, its startup probe fails: {}",
            pod["status"]
        );
        assert!(
            pod["status"]["containerStatuses"][0]["state"]["waiting"].is_object(),
            "the app must not start before the sidecar's startup probe passes: {}",
            pod["status"]
        );
    }
    drop(rejected);
    let line = wait_log(app, "gated", "app", &format!("query ran as {role} "), 120);
    assert_eq!(line, ok_line, "the gated app's first query succeeds");
    // The operator saw the refusal too; it is Ready again before the next step's admission.
    wait_for("dbconn", app, "orders", READY, "True", 120);
}

/// A `reject` line for one role at the top of the bed's pg_hba.conf, removed when dropped.
struct HbaReject {
    path: std::path::PathBuf,
    original: String,
}

impl HbaReject {
    fn new(role: &str) -> HbaReject {
        let path = bed().postgres.data_dir.join("pg_hba.conf");
        let original = std::fs::read_to_string(&path).expect("pg_hba.conf");
        let line = format!("host all \"{}\" all reject\n", role.replace('"', "\"\""));
        std::fs::write(&path, format!("{line}{original}")).expect("pg_hba.conf");
        let rejected = HbaReject { path, original };
        rejected.reload();
        rejected
    }

    fn reload(&self) {
        bed()
            .postgres
            .psql("postgres", "SELECT pg_reload_conf()")
            .expect("reload");
        // The postmaster rereads the file on the signal; give it that moment.
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for HbaReject {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.original);
        self.reload();
    }
}

/// The Job's container: a query through the sidecar (DATABASE_URL), then one straight to the
/// server with the Secret's `direct-uri`, read from the Secret the webhook mounted in the
/// container; its `sslrootcert` names the mounted CA, so verify-full holds only if the file is
/// where the Secret says.
const JOB_SCRIPT: &str = r#"set -e
psql "$DATABASE_URL" -Atc "SELECT current_user"
psql "$(cat /var/run/dbconn/orders/direct-uri)" -Atc "SELECT 'direct ' || current_user || ' TLS ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
"#;

/// A Job's pod with the sidecar: its container's queries run, it exits, the kubelet stops
/// the sidecar (exit 0), and the Job completes.
fn job_with_the_sidecar_completes(app: &str, role: &str) {
    apply_yaml(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: report, namespace: {app}}}\nspec:\n  backoffLimit: 0\n  template:\n\
         \x20   metadata:\n      labels: {{dbconn.io/inject: \"true\"}}\n      annotations: {{dbconn.io/connections: orders}}\n\
         \x20   spec:\n      restartPolicy: Never\n      containers:\n      - name: report\n        image: {PSQL_IMAGE}\n\
         \x20       imagePullPolicy: Never\n        command: [/bin/sh, -c, {script}]\n",
        script = serde_json::to_string(JOB_SCRIPT).expect("json"),
    ));
    wait_for(
        "job",
        app,
        "report",
        r#"{.status.conditions[?(@.type=="Complete")].status}"#,
        "True",
        120,
    );
    let pod = wait_pod(app, "job-name=report", 10);
    let json = pod_json(app, &pod);
    let sidecar = &json["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        sidecar["exitCode"], 0,
        "the Job's sidecar stopped cleanly: {sidecar}"
    );
    let logs = kubectl_ok(&["logs", "-n", app, &pod, "-c", "report"]);
    assert_eq!(
        logs.trim(),
        format!("{role}\ndirect {role} TLS true"),
        "the Job's query ran as the role, through the sidecar and then straight to the server"
    );
}

/// SIGKILL to the sidecar's process inside a running pod (through the node's containerd):
/// the kubelet restarts it, and the app's next queries succeed through it.
fn killed_sidecar_restarts_and_the_app_reconnects(
    app: &str,
    web: &str,
    role: &str,
    node: &testbed::NodeInfo,
) {
    let id = get(
        app,
        "pod",
        web,
        "{.status.initContainerStatuses[0].containerID}",
    );
    let id = id.trim_start_matches("containerd://");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&node.containerd_socket)
        .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
        .output()
        .expect("ctr");
    assert!(
        out.status.success(),
        "ctr tasks kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "pod",
        app,
        web,
        "{.status.initContainerStatuses[0].restartCount}/{.status.initContainerStatuses[0].started}",
        "1/true",
        60,
    );
    let pod = pod_json(app, web);
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "the sidecar was killed: {}",
        pod["status"]
    );
    let restarted = started_at(&pod, "initContainerStatuses", "dbconn-orders");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = kubectl_ok(&[
            "logs",
            "-n",
            app,
            web,
            "-c",
            "web",
            &format!("--since-time={restarted}"),
        ]);
        if logs
            .lines()
            .any(|l| l.starts_with(&format!("query ran as {role} ")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successful query since the sidecar restarted at {restarted}:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        get(
            app,
            "pod",
            web,
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0",
        "the app itself kept running"
    );
}

/// `kubectl delete pod`: the app container stops first, then the sidecar, which exits 0
/// before the grace period ends (a SIGKILL at its end would be 137).
fn deleting_the_pod_stops_the_app_then_the_sidecar(app: &str, web: &str) {
    let mut watch = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", bed().kube.kubeconfig.display()))
        .args([
            "get",
            "pod",
            "-n",
            app,
            web,
            "--watch",
            "--output-watch-events",
        ])
        .args(["-o", "json", "--request-timeout=120s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    let stdout = watch.stdout.take().expect("stdout");
    let events = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with('}') && text.contains("\"DELETED\"") {
                break;
            }
        }
        text
    });
    std::thread::sleep(Duration::from_secs(1));
    kubectl_ok(&["delete", "pod", "-n", app, web, "--timeout=60s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let text = events.join().expect("watch reader");
    let last = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .last()
        .expect("watch events");
    assert_eq!(last["type"], "DELETED", "the watch saw the pod go: {last}");
    let pod = &last["object"];
    let terminated = |list: &str, name: &str| {
        pod["status"][list]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == name))
            .map(|c| c["state"]["terminated"].clone())
            .unwrap_or_default()
    };
    let app_end = terminated("containerStatuses", "web");
    let sidecar_end = terminated("initContainerStatuses", "dbconn-orders");
    assert_eq!(
        app_end["exitCode"], 0,
        "the app stopped on SIGTERM: {app_end}"
    );
    assert_eq!(
        sidecar_end["exitCode"], 0,
        "the sidecar exited 0 within the grace period: {sidecar_end}"
    );
    let (app_finished, sidecar_finished) = (
        app_end["finishedAt"].as_str().unwrap_or_default(),
        sidecar_end["finishedAt"].as_str().unwrap_or_default(),
    );
    assert!(
        !app_finished.is_empty() && app_finished <= sidecar_finished,
        "the app stopped first ({app_finished} <= {sidecar_finished})"
    );
}

/// Three rotations of the role's password while an app queries through its sidecar five
/// times a second: no query fails, the app's own password never changes, and the first
/// password no longer logs in to the server afterwards.
fn rotation_keeps_a_client_loop_working(app: &str, server: &str) {
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: rotating, namespace: {app}}}\nspec:\n\
         \x20 serverRef: {server}\n  database: postgres\n  role: {{name: {app}_rotating, rotation: {{propagationSeconds: 20}}}}\n\
         \x20 access: readOnly\n  pooler: {{enabled: true, port: 6441}}\n"
    ));
    wait_for("dbconn", app, "rotating", READY, "True", 120);
    let secret = |key: &str| support::secret_value(app, "rotating", key);
    let (client, first) = (secret("password"), secret("server-password"));
    assert_ne!(
        client, first,
        "the apps' password to the sidecar is not the role's"
    );
    apply_yaml(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: looper, namespace: {app}}}\nspec:\n\
         \x20 selector: {{matchLabels: {{app: looper}}}}\n  template:\n    metadata:\n\
         \x20     labels: {{app: looper, dbconn.io/inject: \"true\"}}\n      annotations: {{dbconn.io/connections: rotating}}\n\
         \x20   spec:\n      containers:\n      - name: loop\n        image: {PSQL_IMAGE}\n        imagePullPolicy: Never\n\
         \x20       command: [query-loop]\n        env: [{{name: QUERY_INTERVAL, value: \"0.2\"}}]\n",
    ));
    let pod = wait_pod(app, "app=looper", 120);
    let role = format!("{app}_rotating");
    wait_log(app, &pod, "loop", &format!("query ran as {role} "), 120);
    for n in 1..=3 {
        kubectl_ok(&[
            "annotate",
            "dbconn",
            "-n",
            app,
            "rotating",
            &format!("dbconn.io/rotate={n}"),
            "--overwrite",
        ]);
        wait_for(
            "dbconn",
            app,
            "rotating",
            "{.status.rotation.lastRequest}",
            &n.to_string(),
            150,
        );
        assert_ne!(
            secret("server-password"),
            first,
            "rotation {n} set a new password"
        );
    }
    // A few more queries on the last password, then the whole log.
    std::thread::sleep(Duration::from_secs(3));
    let logs = kubectl_ok(&["logs", "-n", app, &pod, "-c", "loop"]);
    let ok = format!("query ran as {role} ");
    let failed: Vec<&str> = logs.lines().filter(|l| !l.starts_with(&ok)).collect();
    let served = logs.lines().count() - failed.len();
    assert!(
        failed.is_empty(),
        "{} of {} queries failed across 3 rotations: {failed:?}",
        failed.len(),
        logs.lines().count()
    );
    assert!(
        served >= 50,
        "the loop ran through the rotations ({served} queries)"
    );
    eprintln!("{served} queries through the sidecar across 3 rotations, 0 failed");
    assert_eq!(
        secret("password"),
        client,
        "the apps' password did not change"
    );
    let data = kubectl_ok(&[
        "get",
        "secret",
        "-n",
        app,
        "rotating",
        "-o",
        "jsonpath={.data.server-password-next}",
    ]);
    assert!(data.is_empty(), "no password left staged");
    // The first password is refused by the server now; the current one logs in.
    let login = |password: &str| {
        support::psql_env(
            "SELECT current_user",
            &[
                ("PGHOST", "localhost".to_owned()),
                ("PGPORT", bed().postgres.port.to_string()),
                ("PGDATABASE", "postgres".to_owned()),
                ("PGUSER", role.clone()),
                ("PGPASSWORD", password.to_owned()),
                ("PGSSLMODE", "verify-full".to_owned()),
                ("PGSSLROOTCERT", bed().ca_cert.display().to_string()),
            ],
        )
    };
    let refused = login(&first).expect_err("the first password must not log in");
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );
    assert_eq!(
        login(&secret("server-password")).as_deref(),
        Ok(role.as_str())
    );
}

/// A connection whose role may open 6 server connections, with a pool of 5 per pod: the
/// first pod fits (ConnectionBudget NearLimit, status.budget 5 of 6), the second is refused
/// by the webhook (the chart's webhook.budgetMode=refuse) with the reason.
fn budget_refuses_a_pod_that_does_not_fit(app: &str, server: &str) {
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: tight, namespace: {app}}}\nspec:\n\
         \x20 serverRef: {server}\n  database: postgres\n  role: {{name: {app}_tight, connectionLimit: 6}}\n  access: readOnly\n\
         \x20 pooler: {{enabled: true, poolSize: 5, port: 6440}}\n"
    ));
    wait_for("dbconn", app, "tight", READY, "True", 120);
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {app}\n  labels: {{dbconn.io/inject: \"true\"}}\n\
             \x20 annotations: {{dbconn.io/connections: tight}}\nspec:\n  containers:\n  - name: app\n    image: {PSQL_IMAGE}\n\
             \x20   imagePullPolicy: Never\n    command: [query-loop]\n"
        )
    };
    apply_yaml(&pod("tight-1"));
    let budget_reason = r#"{.status.conditions[?(@.type=="ConnectionBudget")].reason}"#;
    wait_for("dbconn", app, "tight", budget_reason, "NearLimit", 60);
    assert_eq!(
        get(
            app,
            "dbconn",
            "tight",
            "{.status.budget.demand}/{.status.budget.limit}/{.status.budget.pods}"
        ),
        "5/6/1",
        "one pod × poolSize 5 of the role's 6"
    );
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("tight")));
    std::fs::write(&path, pod("tight-2")).expect("pod file");
    let out = kubectl(&["apply", "-f", path.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second pod does not fit: {stderr}");
    assert!(
        stderr.contains("does not fit the connection budget")
            && stderr.contains("5 of the 6 allowed are taken"),
        "the refusal says why: {stderr}"
    );
    let events = kubectl_ok(&[
        "get",
        "events",
        "-n",
        app,
        "--field-selector",
        "reason=NearLimit",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("CONNECTION LIMIT is 6"),
        "a Warning Event: {events}"
    );
}

/// Pods admitted (server-side dry run, which calls the webhook) without a pause while the
/// operator Deployment rolls: every one gets its sidecar.
fn operator_rollout_loses_no_admission(system: &str, release: &str, app: &str) {
    let full = format!("{release}-dbconn");
    let pod = std::env::temp_dir().join(format!("{}.yaml", unique("admit")));
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: admitted-\n  namespace: {app}\n  labels: {{dbconn.io/inject: \"true\"}}\n\
             \x20 annotations: {{dbconn.io/connections: orders}}\nspec:\n  containers:\n  - {{name: app, image: {PSQL_IMAGE}}}\n"
        ),
    )
    .expect("pod file");
    let stop = Arc::new(AtomicBool::new(false));
    let admitting = {
        let (stop, pod) = (stop.clone(), pod.clone());
        std::thread::spawn(move || {
            let (mut admitted, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let out = kubectl(&[
                    "create",
                    "--dry-run=server",
                    "-f",
                    pod.to_str().expect("path"),
                    "-o",
                    "jsonpath={.spec.initContainers[0].name}",
                ]);
                let got = String::from_utf8_lossy(&out.stdout);
                if out.status.success() && got == "dbconn-orders" {
                    admitted += 1;
                } else {
                    failures.push(format!("{got}{}", String::from_utf8_lossy(&out.stderr)));
                }
            }
            (admitted, failures)
        })
    };
    let before = operator_pods(system, release);
    kubectl_ok(&["rollout", "restart", "-n", system, "deployment", &full]);
    kubectl_ok(&[
        "rollout",
        "status",
        "-n",
        system,
        "deployment",
        &full,
        "--timeout=180s",
    ]);
    // Until the old pods are gone: their last seconds are where admissions get lost.
    let deadline = Instant::now() + Duration::from_secs(90);
    while operator_pods(system, release)
        .iter()
        .any(|p| before.contains(p))
    {
        assert!(Instant::now() < deadline, "old operator pods remain");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (admitted, failures) = admitting.join().expect("admitting thread");
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed during the rollout: {failures:#?}",
        failures.len(),
        admitted as usize + failures.len()
    );
    assert!(
        admitted >= 10,
        "the rollout was covered by admissions ({admitted})"
    );
    let after = operator_pods(system, release);
    assert_eq!(after.len(), 2, "two new operator pods: {after:?}");
    eprintln!(
        "{admitted} pods admitted with their sidecar during the operator's rollout, none lost"
    );
}

const PSQL_IMAGE: &str = testbed::node::PSQL_IMAGE;

/// `dbconn.local/dbconn` of `dbconn.local/dbconn:dev`.
fn image_repository() -> &'static str {
    testbed::node::DBCONN_IMAGE
        .rsplit_once(':')
        .map(|(repo, _)| repo)
        .unwrap_or(testbed::node::DBCONN_IMAGE)
}

/// The pods of the release's Deployment, terminating ones included.
fn operator_pods(system: &str, release: &str) -> Vec<String> {
    kubectl_ok(&[
        "get",
        "pods",
        "-n",
        system,
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

fn wait_lease(system: &str, lease: &str, pods: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holder = String::from_utf8_lossy(
            &kubectl(&[
                "get",
                "lease",
                "-n",
                system,
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .stdout,
        )
        .into_owned();
        if pods.contains(&holder) {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "lease {lease} is held by {holder:?}, not one of {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The first pod with `selector`, once it exists.
fn wait_pod(ns: &str, selector: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let name = kubectl_ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        if let Some(name) = name.split_whitespace().next() {
            return name.to_owned();
        }
        assert!(Instant::now() < deadline, "no pod {selector} in {ns}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pod_json(ns: &str, pod: &str) -> Value {
    serde_json::from_str(&kubectl_ok(&["get", "pod", "-n", ns, pod, "-o", "json"])).expect("json")
}

/// The RFC 3339 time (seconds) a container's current run started.
fn started_at(pod: &Value, list: &str, name: &str) -> String {
    pod["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .and_then(|c| c["state"]["running"]["startedAt"].as_str())
        .unwrap_or_else(|| panic!("{name} is not running: {}", pod["status"]))
        .to_owned()
}

/// Waits for a log line of a container that starts with `prefix`; returns it.
fn wait_log(ns: &str, pod: &str, container: &str, prefix: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = kubectl(&["logs", "-n", ns, pod, "-c", container]);
        let logs = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = logs.lines().find(|l| l.starts_with(prefix)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{pod} {container}: no line starting {prefix:?} after {secs}s:\n{logs}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
