//! Sidecar injection as a pure function: a Pod that asked for connections, and what is known
//! of those connections, in; a JSON patch (or a reason to refuse it) out. The webhook serves
//! it; the golden files under `tests/fixtures/inject/` pin its output.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{DatabaseConnection, PoolMode};

/// The label that sends a Pod to the webhook.
pub const LABEL: &str = "dbconn.io/inject";
/// The annotation naming the connections: `name[,name…]`.
pub const CONNECTIONS: &str = "dbconn.io/connections";
/// The annotation recording what was injected.
pub const INJECTED: &str = "dbconn.io/injected";
/// Per connection, the environment variable that gets its URL: `dbconn.io/env-<name>`.
pub const ENV_PREFIX: &str = "dbconn.io/env-";
/// Where each connection's Secret is mounted in the sidecar.
pub const MOUNT_ROOT: &str = "/var/run/dbconn";

/// The sidecar's image and default resources (chart values), and the per-pod limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub image: String,
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub max_connections: usize,
    /// Refuse a pod whose sidecar would not fit its connection's budget (status.budget);
    /// otherwise it is admitted with a warning.
    pub refuse_over_budget: bool,
}

/// What injection needs to know of one DatabaseConnection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub secret: String,
    pub pooler_enabled: bool,
    pub port: u16,
    pub mode: PoolMode,
    pub pool_size: i32,
    /// `Err` with the reason when the connection is not Ready.
    pub ready: Result<(), String>,
    /// The connection budget the operator last published.
    pub budget: Option<crate::api::ConnectionBudget>,
    /// The sidecar's settings from spec.pooler, as its environment (only those set).
    pub settings: Vec<(&'static str, String)>,
}

/// The SCRAM iteration count of the sidecar's client verifier when dbconn generated the
/// password: enough for any client that checks a minimum of its own, and ~1/256 of the
/// login cost of PostgreSQL's 4096.
pub const GENERATED_PASSWORD_ITERATIONS: u32 = 16;

/// spec.pooler's settings as the sidecar's environment variables (`dbconn pooler` reads
/// them; the bounds are the same on both sides, src/pooler/limits.rs).
fn pooler_env(p: &crate::api::PoolerSpec) -> Vec<(&'static str, String)> {
    [
        ("DBCONN_MAX_CLIENTS", p.max_clients),
        (
            "DBCONN_QUERY_WAIT_TIMEOUT_SECONDS",
            p.query_wait_timeout_seconds,
        ),
        (
            "DBCONN_SERVER_IDLE_TIMEOUT_SECONDS",
            p.server_idle_timeout_seconds,
        ),
        ("DBCONN_SERVER_LIFETIME_SECONDS", p.server_lifetime_seconds),
        ("DBCONN_MAX_PREPARED_STATEMENTS", p.max_prepared_statements),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?.to_string())))
    .chain(p.log_level.map(|l| ("RUST_LOG", l.as_str().to_owned())))
    .collect()
}

impl Target {
    pub fn of(c: &DatabaseConnection) -> Target {
        let name = c.metadata.name.clone().unwrap_or_default();
        let ready = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map_or(Err("it has no status yet".to_owned()), |r| {
                if r.status == "True" {
                    Ok(())
                } else {
                    Err(format!("{}: {}", r.reason, r.message))
                }
            });
        Target {
            secret: c.spec.secret.name.clone().unwrap_or(name),
            pooler_enabled: c.spec.pooler.enabled,
            port: u16::try_from(c.spec.pooler.port).unwrap_or(6432),
            mode: c.spec.pooler.mode,
            pool_size: c.spec.pooler.pool_size,
            ready,
            budget: c.status.as_ref().and_then(|s| s.budget.clone()),
            settings: pooler_env(&c.spec.pooler)
                .into_iter()
                .chain(
                    // The apps' password to the sidecar is one dbconn generated (32 random
                    // characters): iterations protect nothing, and every login pays them.
                    c.spec.role.password_secret_ref.is_none().then(|| {
                        (
                            "DBCONN_CLIENT_SCRAM_ITERATIONS",
                            GENERATED_PASSWORD_ITERATIONS.to_string(),
                        )
                    }),
                )
                .collect(),
        }
    }
}

/// Why this pod's sidecars do not fit their connections' budgets, one line per connection
/// that it would push over its limit.
pub fn over_budget(pod: &Pod, lookup: impl Fn(&str) -> Option<Target>) -> Vec<String> {
    let has_sidecar = |name: &str| {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == container_name(name))
    };
    requested(pod)
        .into_iter()
        // A re-invocation for a pod that has its sidecar adds nothing.
        .filter(|name| !has_sidecar(name))
        .filter_map(|name| {
            let t = lookup(&name)?;
            let why =
                crate::operator::budget::one_more_pod(t.budget.as_ref()?, i64::from(t.pool_size))?;
            Some(format!("DatabaseConnection {name:?}: {why}"))
        })
        .collect()
}

/// The container (and volume) name for a connection's sidecar: a DNS label of at most 63
/// characters, the same on every invocation.
pub fn container_name(connection: &str) -> String {
    let name = format!("dbconn-{connection}");
    if name.len() <= 63 {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(connection.as_bytes());
    let tail: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let head: String = connection.chars().take(46).collect();
    format!("dbconn-{}-{tail}", head.trim_end_matches(['-', '.']))
}

/// The connections a Pod names in its annotation, in order, without repeats.
pub fn requested(pod: &Pod) -> Vec<String> {
    let mut seen = BTreeSet::new();
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONNECTIONS))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty() && seen.insert(n.to_string()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a Pod has the sidecar of every connection it names.
pub fn is_injected(pod: &Pod) -> bool {
    let names: Vec<String> = requested(pod).iter().map(|c| container_name(c)).collect();
    let have: BTreeSet<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    !names.is_empty() && names.iter().all(|n| have.contains(n.as_str()))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The environment variable for connection number `i`.
fn env_name(pod: &Pod, connection: &str, i: usize) -> Result<String, String> {
    let name = match annotation(pod, &format!("{ENV_PREFIX}{connection}")) {
        Some(v) => v.trim().to_owned(),
        None if i == 0 => "DATABASE_URL".to_owned(),
        None => {
            let upper: String = connection
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{upper}_DATABASE_URL")
        }
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "annotation {ENV_PREFIX}{connection}: {name:?} is not an environment variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

fn resources(pod: &Pod, s: &Sidecar) -> ResourceRequirements {
    let pick = |key: &str, default: &Option<String>| {
        annotation(pod, &format!("dbconn.io/pooler-{key}"))
            .map(str::to_owned)
            .or_else(|| default.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let map = |cpu: Option<String>, memory: Option<String>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), Quantity(v))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: map(
            pick("cpu-request", &s.cpu_request),
            pick("memory-request", &s.memory_request),
        ),
        limits: map(
            pick("cpu-limit", &s.cpu_limit),
            pick("memory-limit", &s.memory_limit),
        ),
        ..Default::default()
    }
}

/// The sidecar's program in the image: `dbconn-pooler`, the pooler alone (the Dockerfile
/// copies it beside `/dbconn`, the operator's entrypoint; scripts/bed-images.sh checks both).
pub const SIDECAR_COMMAND: &str = "/dbconn-pooler";

/// The sidecar for one connection.
fn sidecar(pod: &Pod, connection: &str, t: &Target, s: &Sidecar) -> Container {
    let name = container_name(connection);
    let http = u32::from(t.port) + 10_000;
    let env = |k: &str, v: String| EnvVar {
        name: k.to_owned(),
        value: Some(v),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::try_from(http).unwrap_or(16432)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    Container {
        name: name.clone(),
        image: Some(s.image.clone()),
        command: Some(vec![SIDECAR_COMMAND.to_owned()]),
        // A native sidecar: started before the app's init containers, kept running.
        restart_policy: Some("Always".to_owned()),
        env: Some(
            vec![
                env(
                    "DBCONN_SECRET_DIR",
                    crate::operator::secret::mount_dir(connection),
                ),
                env("DBCONN_LISTEN", format!("127.0.0.1:{}", t.port)),
                // Probes come from the kubelet, on the pod IP.
                env("DBCONN_HTTP_ADDR", format!("0.0.0.0:{http}")),
                env(
                    "DBCONN_POOL_MODE",
                    match t.mode {
                        PoolMode::Transaction => "transaction",
                        PoolMode::Session => "session",
                    }
                    .to_owned(),
                ),
                env("DBCONN_POOL_SIZE", t.pool_size.to_string()),
                env("DBCONN_LOG_JSON", "true".to_owned()),
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
            ]
            .into_iter()
            .chain(t.settings.iter().map(|(k, v)| env(k, v.clone())))
            .collect(),
        ),
        // /healthz, /readyz and /metrics (Prometheus): the probes' port, declared so a
        // PodMonitor can scrape it by name.
        ports: Some(vec![ContainerPort {
            name: Some(format!("metrics-{http}")),
            container_port: i32::try_from(http).unwrap_or(16432),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // The app starts once the pooler has reached the server.
        startup_probe: Some(probe("/readyz", 1, 120)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(resources(pod, s)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name,
            mount_path: crate::operator::secret::mount_dir(connection),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// An environment variable from a field of the Pod.
fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Adds `mount` to a container unless it already mounts something at that path.
fn add_mount(c: &mut Container, mount: &VolumeMount) {
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts.iter().any(|m| m.mount_path == mount.mount_path) {
        mounts.push(mount.clone());
    }
}

/// Adds `env` to a container unless it already sets that name.
fn add_env(c: &mut Container, var: &EnvVar) {
    let env = c.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.name == var.name) {
        env.push(var.clone());
    }
}

/// The patch that gives `pod` the sidecar, Secret mount and URL variable of each connection it
/// names; `Ok(None)` when it already has them all. `Err` says why the Pod cannot have them.
pub fn mutate(
    pod: &Pod,
    namespace: &str,
    lookup: impl Fn(&str) -> Option<Target>,
    s: &Sidecar,
) -> Result<Option<json_patch::Patch>, String> {
    let names = requested(pod);
    if names.is_empty() {
        return Err(format!(
            "the pod is labelled {LABEL}=true but has no {CONNECTIONS} annotation: set it to the DatabaseConnection names (name[,name…])"
        ));
    }
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    if spec.host_network == Some(true) {
        return Err(
            "pods with hostNetwork cannot have the dbconn sidecar: its loopback port would be the node's; remove the label or hostNetwork".to_owned(),
        );
    }
    if names.len() > s.max_connections {
        return Err(format!(
            "the pod names {} connections; at most {} are allowed per pod",
            names.len(),
            s.max_connections
        ));
    }
    let mut targets = Vec::new();
    let mut ports = BTreeMap::new();
    let mut vars = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let t = lookup(name).ok_or_else(|| {
            format!("DatabaseConnection {name:?} does not exist in namespace {namespace:?}")
        })?;
        if let Err(why) = &t.ready {
            return Err(format!(
                "DatabaseConnection {name:?} is not Ready ({why}); the pod would start without a working connection"
            ));
        }
        if !t.pooler_enabled {
            return Err(format!(
                "DatabaseConnection {name:?} has the pooler off: set spec.pooler.enabled: true so its Secret's uri points at the sidecar"
            ));
        }
        if let Some(other) = ports.insert(t.port, name.clone()) {
            return Err(format!(
                "DatabaseConnections {other:?} and {name:?} both use pooler port {}: set a different spec.pooler.port on one (6433, …)",
                t.port
            ));
        }
        let var = env_name(pod, name, i)?;
        if let Some(other) = vars.insert(var.clone(), name.clone()) {
            return Err(format!(
                "DatabaseConnections {other:?} and {name:?} would both set {var}: set annotation {ENV_PREFIX}{name}"
            ));
        }
        targets.push((name.clone(), t, var));
    }
    if s.refuse_over_budget
        && let Some(why) = over_budget(pod, &lookup).into_iter().next()
    {
        return Err(format!(
            "the pod does not fit the connection budget: {why} (webhook.budgetMode=refuse)"
        ));
    }

    let mut out = pod.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    let mut sidecars = Vec::new();
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for (name, t, _) in &targets {
        let container = container_name(name);
        if !init.iter().any(|c| c.name == container) {
            sidecars.push(sidecar(pod, name, t, s));
        }
        if !volumes.iter().any(|v| v.name == container) {
            volumes.push(Volume {
                name: container,
                secret: Some(SecretVolumeSource {
                    secret_name: Some(t.secret.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    // Sidecars first, in the annotation's order, so they start before everything else.
    init.splice(0..0, sidecars);
    let ours: BTreeSet<String> = targets.iter().map(|(n, _, _)| container_name(n)).collect();
    for (name, t, var) in &targets {
        // The Secret's files, read-only, where its values (sslrootcert, PGSSLROOTCERT, …)
        // say: the direct-* keys reach the server with them.
        let mount = VolumeMount {
            name: container_name(name),
            mount_path: crate::operator::secret::mount_dir(name),
            read_only: Some(true),
            ..Default::default()
        };
        let env = EnvVar {
            name: var.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: t.secret.clone(),
                    key: "uri".to_owned(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        for c in init.iter_mut().filter(|c| !ours.contains(&c.name)) {
            add_env(c, &env);
            add_mount(c, &mount);
        }
        for c in spec.containers.iter_mut() {
            add_env(c, &env);
            add_mount(c, &mount);
        }
    }
    out.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(INJECTED.to_owned(), names.join(","));
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    let before = serde_json::to_value(pod).map_err(|e| e.to_string())?;
    let after = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    let patch = json_patch::diff(&before, &after);
    Ok((!patch.0.is_empty()).then_some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sidecar_defaults() -> Sidecar {
        Sidecar {
            image: "ghcr.io/dbconn/dbconn:0.1.0".into(),
            cpu_request: Some("10m".into()),
            memory_request: Some("16Mi".into()),
            cpu_limit: None,
            memory_limit: Some("64Mi".into()),
            max_connections: 2,
            refuse_over_budget: false,
        }
    }

    fn target(port: u16, ready: bool) -> Target {
        Target {
            secret: format!("secret-{port}"),
            pooler_enabled: true,
            port,
            mode: PoolMode::Transaction,
            pool_size: 5,
            ready: if ready {
                Ok(())
            } else {
                Err("ServerUnreachable: connection refused".into())
            },
            budget: None,
            settings: Vec::new(),
        }
    }

    fn lookup(name: &str) -> Option<Target> {
        match name {
            "orders" => Some(target(6432, true)),
            "reports" => Some(Target {
                settings: pooler_env(&crate::api::PoolerSpec {
                    max_clients: Some(50),
                    query_wait_timeout_seconds: Some(5),
                    log_level: Some(crate::api::LogLevel::Debug),
                    ..Default::default()
                }),
                ..target(6433, true)
            }),
            "same-port" => Some(target(6432, true)),
            "broken" => Some(target(6434, false)),
            // 4 pods × 5 of a role limit of 20: one more does not fit.
            "full" => Some(Target {
                budget: Some(crate::api::ConnectionBudget {
                    demand: Some(20),
                    pods: 4,
                    role_limit: Some(20),
                    server_available: Some(97),
                    limit: Some(20),
                }),
                ..target(6436, true)
            }),
            "no-pooler" => Some(Target {
                pooler_enabled: false,
                ..target(6435, true)
            }),
            _ => None,
        }
    }

    #[test]
    fn a_generated_password_gets_few_scram_iterations_a_given_one_postgresqls() {
        let conn = |role: serde_json::Value| -> DatabaseConnection {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "dbconn.io/v1alpha1", "kind": "DatabaseConnection",
                "metadata": {"name": "orders", "namespace": "shop"},
                "spec": {"serverRef": "main", "database": "orders", "role": role,
                         "pooler": {"enabled": true, "maxClients": 50}}
            }))
            .expect("connection")
        };
        let iterations = |c: &DatabaseConnection| {
            Target::of(c)
                .settings
                .into_iter()
                .find(|(k, _)| *k == "DBCONN_CLIENT_SCRAM_ITERATIONS")
                .map(|(_, v)| v)
        };
        let generated = conn(serde_json::json!({"name": "app"}));
        assert_eq!(iterations(&generated).as_deref(), Some("16"));
        assert!(
            Target::of(&generated)
                .settings
                .contains(&("DBCONN_MAX_CLIENTS", "50".into()))
        );
        let given = conn(serde_json::json!({"name": "app", "passwordSecretRef": {"name": "pw"}}));
        assert_eq!(iterations(&given), None, "the sidecar's default: 4096");
    }

    /// Each `tests/fixtures/inject/<case>.pod.yaml` gives `<case>.out.yaml`: the patched pod,
    /// or the denial. `UPDATE_GOLDEN=1` rewrites them.
    #[test]
    fn golden_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
        let mut cases = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            let Some(case) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pod.yaml"))
            else {
                continue;
            };
            cases += 1;
            let pod: Pod = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("read"))
                .expect("pod yaml");
            let got = match mutate(&pod, "shop", lookup, &sidecar_defaults()) {
                Ok(Some(patch)) => {
                    let mut v = serde_json::to_value(&pod).expect("json");
                    json_patch::patch(&mut v, &patch).expect("patch applies");
                    // Applying it again to the patched pod changes nothing.
                    let again: Pod = serde_json::from_value(v.clone()).expect("pod");
                    assert_eq!(
                        mutate(&again, "shop", lookup, &sidecar_defaults()),
                        Ok(None),
                        "{case}: re-invocation must not inject twice"
                    );
                    serde_yaml_ng::to_string(&v).expect("yaml")
                }
                Ok(None) => "unchanged\n".to_owned(),
                Err(denied) => format!("denied: {denied}\n"),
            };
            let golden = dir.join(format!("{case}.out.yaml"));
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &got).expect("write golden");
            }
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|_| panic!("{case}: no golden file; run with UPDATE_GOLDEN=1"));
            assert_eq!(
                got,
                want,
                "{case}: output differs from {}",
                golden.display()
            );
        }
        assert!(cases >= 8, "only {cases} golden cases");
    }

    #[test]
    fn a_pod_over_its_connection_budget_is_refused_or_warned_about() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "annotations": {CONNECTIONS: "full"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        }))
        .expect("pod");
        let warnings = over_budget(&pod, lookup);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .contains("may open 5 more server connections, and 20 of the 20 allowed are taken"),
            "{warnings:?}"
        );
        // warn (the default): injected, the webhook adds the warning.
        assert!(matches!(
            mutate(&pod, "shop", lookup, &sidecar_defaults()),
            Ok(Some(_))
        ));
        let refuse = Sidecar {
            refuse_over_budget: true,
            ..sidecar_defaults()
        };
        let denied = mutate(&pod, "shop", lookup, &refuse).expect_err("refused");
        assert!(
            denied.contains("does not fit the connection budget"),
            "{denied}"
        );
        // Within budget: admitted in refuse mode too.
        let ok: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "annotations": {CONNECTIONS: "orders"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        }))
        .expect("pod");
        assert!(matches!(mutate(&ok, "shop", lookup, &refuse), Ok(Some(_))));
        assert!(over_budget(&ok, lookup).is_empty());
    }

    #[test]
    fn long_connection_names_give_stable_63_character_container_names() {
        let long = "a".repeat(200);
        let n = container_name(&long);
        assert!(n.len() <= 63, "{n}");
        assert_eq!(n, container_name(&long));
        assert_ne!(n, container_name(&"a".repeat(199)));
        assert_eq!(container_name("orders"), "dbconn-orders");
    }
}
