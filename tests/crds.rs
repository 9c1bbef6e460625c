//! The CRDs as a user meets them: generated from the Rust types and committed, installed into
//! a real apiserver, documented in `kubectl explain`, with printer columns, and rejecting bad
//! input with a message that says what to fix.

mod support;

use support::{install_crds, kubectl, kubectl_eventually, kubectl_ok, namespace, repo};

#[test]
fn committed_crds_match_what_dbconn_crd_prints() {
    for dir in ["crds", "charts/dbconn/crds"] {
        for crd in dbconn::api::crds() {
            let path = repo().join(dir).join(dbconn::api::crd_file_name(&crd));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            let generated = dbconn::api::crd_yaml(&crd).expect("rendering CRD");
            assert!(
                committed == generated,
                "{} is stale: run `make generate`",
                path.display()
            );
            println!("CRD stale check: {} is up to date", path.display());
        }
    }
}

#[test]
fn crds_install_and_kubectl_explain_shows_the_field_docs() {
    install_crds();
    let explain = kubectl_eventually(&["explain", "databaseconnection.spec"], 60);
    assert!(explain.contains("serverRef"), "{explain}");
    assert!(explain.contains("The application's database"), "{explain}");
    let explain = kubectl_eventually(&["explain", "databaseserver.spec.tls.sslmode"], 60);
    assert!(explain.contains("verify-full"), "{explain}");
    // The kinds themselves say what they are for, not derive boilerplate.
    for (kind, says) in [
        (
            "databaseconnection",
            "A PostgreSQL connection for the applications of one namespace",
        ),
        (
            "databaseserver",
            "A PostgreSQL server that a platform team registers",
        ),
    ] {
        let top = kubectl_eventually(&["explain", kind], 60);
        assert!(top.contains(says), "{top}");
        assert!(!top.contains("Auto-generated"), "{top}");
    }
    println!("kubectl explain databaseconnection.spec:\n{explain}");
}

#[test]
fn every_example_applies() {
    install_crds();
    let mut examples: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "expected the examples/ files");
    for path in examples {
        let out = kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        println!("example {} applied:\n{out}", path.display());
    }
    let list = kubectl_ok(&["get", "dbconn", "-A"]);
    assert!(
        list.contains("orders") && list.contains("invoices") && list.contains("warehouse"),
        "{list}"
    );
}

#[test]
fn invalid_resources_are_rejected_with_their_rules_message() {
    install_crds();
    let ns = namespace("invalid");
    let dir = repo().join("tests/fixtures/invalid");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "at least ten invalid fixtures");
    for path in fixtures {
        let text = std::fs::read_to_string(&path).expect("fixture");
        let expect = header(&text, "expect")
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        if let Some(after) = header(&text, "after") {
            // A transition rule: the valid object must exist first.
            let first = dir.join(after);
            kubectl_ok(&[
                "apply",
                "-n",
                &ns,
                "-f",
                first.to_str().expect("utf-8 path"),
            ]);
        }
        let out = kubectl(&["apply", "-n", &ns, "-f", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert!(
            stderr.contains(&expect),
            "{}: expected {expect:?} in:\n{stderr}",
            path.display()
        );
        println!(
            "rejected {}: {}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default(),
            stderr.trim()
        );
    }
}

#[test]
fn kubectl_get_shows_the_printer_columns() {
    install_crds();
    let ns = namespace("columns");
    let valid = repo().join("tests/fixtures/valid/server-ref.yaml");
    kubectl_ok(&[
        "apply",
        "-n",
        &ns,
        "-f",
        valid.to_str().expect("utf-8 path"),
    ]);
    let table = kubectl_ok(&["get", "dbconn", "-n", &ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "READY", "SERVER", "ROLE", "SECRET", "REASON", "AGE", "MESSAGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("app"),
        "the Role column shows spec.role.name:\n{table}"
    );
    // Reason and Message come from the Ready condition: why it is not Ready.
    let name = table
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a row")
        .to_owned();
    kubectl_ok(&[
        "patch",
        "dbconn",
        &name,
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"ServerUnreachable","message":"connection refused at db:5432: check spec.host","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
    ]);
    let table = kubectl_ok(&["get", "dbconn", "-n", &ns]);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("ServerUnreachable")
            && row.ends_with("connection refused at db:5432: check spec.host"),
        "{table}"
    );
    println!("kubectl get dbconn:\n{table}");
    let servers = kubectl_ok(&["get", "dbserver"]);
    let header: Vec<&str> = servers
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // With no DatabaseServer yet kubectl prints "No resources found" on stderr; apply one.
    if header.is_empty() {
        let example = repo().join("examples/database-server.yaml");
        kubectl_ok(&["apply", "-f", example.to_str().expect("utf-8 path")]);
    }
    let servers = kubectl_ok(&["get", "dbserver"]);
    let header: Vec<&str> = servers
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "HOST", "VERSION", "REASON", "AGE"],
        "{servers}"
    );
    println!("kubectl get dbserver:\n{servers}");
}

/// The value of a `# key: value` line at the top of a fixture.
fn header(text: &str, key: &str) -> Option<String> {
    let prefix = format!("# {key}: ");
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}
