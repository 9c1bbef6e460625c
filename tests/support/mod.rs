//! The harness every integration test shares: the running test bed (attached through
//! `DBCONN_BED`, or started once for this test binary with a watchdog that stops it when the
//! binary exits), kubectl against the bed's apiserver, and unique names for isolation.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub use testbed::Bed;

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

/// Creates a namespace with a unique name (namespaces never finish deleting without a
/// controller-manager, so tests do not delete them).
pub fn namespace(prefix: &str) -> String {
    let ns = unique(prefix);
    kubectl_ok(&["create", "namespace", &ns]);
    ns
}
