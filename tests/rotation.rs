//! Password rotation without the pooler: the role alternates with its alternate login
//! (`<role>_alt`), so apps that hold the old `uri` (pods started before a rotation) keep
//! working until the next rotation, while new pods read the new login from the Secret.
//! Deployments that opted in are restarted. The operator runs with the chart's RBAC alone,
//! and the role's name is hostile (quotes, spaces, capitals, unicode, a reserved word).
//! (Rotation with the pooler, through running pods, is in tests/node.rs.)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use support::{
    READY, admin_and_ca, annotate, apply_yaml, bed, connection, database, get, kubectl_ok,
    mount_secret, namespace, operator_with_chart_rbac, psql_uri, secret_data, try_apply, unique,
    wait_for,
};

/// New connections with `uri`, one every 50 ms, as pods that start sessions do, until
/// stopped; counts successes and failures (the first failure's message kept).
struct Loop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(uri: String) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU32::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes of queries even if never stopped.
            for _ in 0..12_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match psql_uri(&uri, "INSERT INTO items VALUES (1) RETURNING n") {
                    Ok(_) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => f.lock().expect("lock").push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Loop {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the loop: (successes, failures).
    fn finish(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("loop thread");
        }
        let failed = std::mem::take(&mut *self.failed.lock().expect("lock"));
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn deployment(ns: &str, name: &str, annotation: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{dbconn.io/rollout-on-rotation: \"{annotation}\"}}\n\
         spec:\n  replicas: 0\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n\
         \x20   spec: {{containers: [{{name: app, image: dbconn.local/psql:dev}}]}}\n"
    )
}

/// Rotates now while a pod started before (a loop on `uri`) runs, and waits until the status
/// records it; asserts the loop never failed. The Secret's data after.
fn rotate_under_load(
    ns: &str,
    name: &str,
    request: &str,
    uri: &str,
) -> std::collections::BTreeMap<String, String> {
    let before = Loop::start(uri.to_owned());
    std::thread::sleep(Duration::from_millis(500));
    annotate(ns, name, &format!("dbconn.io/rotate={request}"));
    wait_for(
        "dbconn",
        ns,
        name,
        "{.status.rotation.lastRequest}",
        request,
        90,
    );
    wait_for("dbconn", ns, name, READY, "True", 90);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = before.finish();
    assert!(
        failed.is_empty(),
        "a pod started before rotation {request} failed: {failed:?}"
    );
    assert!(ok >= 5, "{ok} queries");
    secret_data(ns, name)
}

fn whoami(uri: &str) -> Result<String, String> {
    psql_uri(uri, "SELECT current_user || ' ' || session_user")
}

#[test]
fn without_the_pooler_rotation_alternates_logins_and_pods_keep_theirs_until_the_next() {
    let (op, _system, _user) = operator_with_chart_rbac("rotation");
    let ns = namespace("rot");
    admin_and_ca(&ns);
    let db = database("rot");
    bed()
        .postgres
        .psql(&db, "CREATE TABLE items (n int NOT NULL)")
        .expect("table");
    let tag = db.rsplit('_').next().expect("suffix").to_owned();
    let role = format!("Rot \"{tag}\" é select");
    let alt = format!("{role}_alt");
    let name = unique("rot");
    let server = format!(
        "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
        bed().postgres.port
    );
    let yaml = |role: &str| {
        let role = serde_json::to_string(role).expect("json");
        connection(
            &ns,
            &name,
            &server,
            &format!(
                "  database: {db}\n  role: {{name: {role}, rotation: {{periodSeconds: 86400}}}}\n  access: readWrite\n  deletionPolicy: Delete\n"
            ),
        )
    };

    // The alternate must fit PostgreSQL's 63 bytes: a longer role.name is refused at apply.
    let long = "r".repeat(60);
    let (accepted, refused) = try_apply(&yaml(&long));
    assert!(!accepted, "a 60-byte role.name was accepted");
    assert!(refused.contains("must be at most 59 bytes"), "{refused}");

    apply_yaml(&deployment(&ns, "web", &name));
    apply_yaml(&deployment(&ns, "other", "some-other-connection"));
    apply_yaml(&yaml(&role));
    wait_for("dbconn", &ns, &name, READY, "True", 90);
    let first = secret_data(&ns, &name);
    assert_eq!(first["username"], role);
    let _mounted = mount_secret(&name, &first);
    assert_eq!(whoami(&first["uri"]), Ok(format!("{role} {role}")));

    // Rotation 1: the alternate gets a password and the Secret names it. A pod started
    // before (a loop on the first uri) never fails.
    let second = rotate_under_load(&ns, &name, "1", &first["uri"]);
    assert_eq!(second["username"], alt);
    assert_ne!(second["password"], first["password"]);
    // Sessions of the alternate run as the role: the same privileges, the same owner.
    assert_eq!(whoami(&second["uri"]), Ok(format!("{role} {alt}")));
    assert_eq!(
        psql_uri(
            &second["uri"],
            "WITH i AS (INSERT INTO items VALUES (2) RETURNING n) SELECT n FROM i"
        ),
        Ok("2".into())
    );
    assert_eq!(
        whoami(&first["uri"]),
        Ok(format!("{role} {role}")),
        "the old login lasts until the next rotation"
    );
    let restarted = |d: &str| {
        get(
            &ns,
            "deployment",
            d,
            "{.spec.template.metadata.annotations.dbconn\\.io/rotated-at}",
        )
    };
    assert!(
        !restarted("web").is_empty(),
        "the opted-in Deployment restarts"
    );
    assert_eq!(
        restarted("other"),
        "",
        "a Deployment of another connection does not"
    );

    // Rotation 2: back to the role, with a new password. Pods on the alternate keep working;
    // the first password stops working.
    let third = rotate_under_load(&ns, &name, "2", &second["uri"]);
    assert_eq!(third["username"], role);
    assert_ne!(third["password"], first["password"]);
    assert_eq!(whoami(&third["uri"]), Ok(format!("{role} {role}")));
    let old = whoami(&first["uri"]).expect_err("the first password after two rotations");
    assert!(old.contains("password authentication failed"), "{old}");

    // No password in Events, status or the operator's log.
    let events = kubectl_ok(&["-n", &ns, "get", "events", "-o", "json"]);
    assert!(events.contains("RolledOut"), "{events}");
    let status = get(&ns, "dbconn", &name, "{.status}");
    let log = op.log_text();
    for p in [&first, &second, &third].map(|d| d["password"].clone()) {
        assert!(!events.contains(&p) && !status.contains(&p) && !log.contains(&p));
    }

    // Deletion drops both logins.
    kubectl_ok(&[
        "-n",
        &ns,
        "delete",
        "dbconn",
        &name,
        "--wait=true",
        "--timeout=60s",
    ]);
    let left = bed()
        .postgres
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_roles WHERE rolname IN ({}, {})",
                dbconn::postgres::quote::literal(&role),
                dbconn::postgres::quote::literal(&alt)
            ),
        )
        .expect("roles");
    assert_eq!(left.trim(), "0");
}
