//! Two operator replicas with leader election on the real bed: only the leader reconciles
//! (the server log shows whose application_name ran the DDL), and when it is killed the
//! other takes over.

mod support;

use support::{
    Operator, READY, admin_and_ca, apply_yaml, bed, connection, namespace, unique, wait_for,
};

/// Server-log lines of GRANT statements for `role`, run by the replica named `identity`.
fn grants_by(log: &str, identity: &str, role: &str) -> usize {
    let app = format!("[dbconn-operator {identity}]");
    let quoted = format!("\"{}\"", role.replace('"', "\"\""));
    log.lines()
        .filter(|l| l.contains(&app) && l.contains("statement: GRANT") && l.contains(&quoted))
        .count()
}

/// Whether the operator's /metrics shows `line` within 10 s.
fn shows(op: &Operator, line: &str) -> bool {
    for _ in 0..50 {
        if op.get("/metrics").1.contains(line) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

fn wait_for_leader(a: &Operator, b: &Operator) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (la, lb) = (a.log_text(), b.log_text());
        match (
            la.contains("became the leader"),
            lb.contains("became the leader"),
        ) {
            (true, false) => return true,
            (false, true) => return false,
            (true, true) => panic!("both replicas lead:\n{la}\n---\n{lb}"),
            (false, false) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader:\n{la}\n---\n{lb}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn only_the_leader_reconciles_and_the_standby_takes_over_when_it_dies() {
    let lease = unique("ha-lease");
    let one = Operator::start("one", &["--lease-name", &lease]);
    let two = Operator::start("two", &["--lease-name", &lease]);
    let (leader, standby) = if wait_for_leader(&one, &two) {
        (&one, &two)
    } else {
        (&two, &one)
    };
    let (leader_id, standby_id) = (&leader.identity, &standby.identity);
    // Both serve their endpoints; only the leader says so in its metrics.
    assert!(shows(leader, "dbconn_leader 1"));
    assert!(shows(standby, "dbconn_leader 0"));
    standby.assert_ready_within(30);

    let pg = &bed().postgres;
    let ns = namespace("ha");
    admin_and_ca(&ns);
    let server = format!(
        "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
        pg.port
    );
    let first = unique("first");
    apply_yaml(&connection(
        &ns,
        "first",
        &server,
        &format!(
            "  database: postgres\n  role: {{name: {first:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n"
        ),
    ));
    wait_for("dbconn", &ns, "first", READY, "True", 60);
    let log = pg.log().expect("log");
    assert_eq!(grants_by(&log, leader_id, &first), 1, "the leader granted");
    assert_eq!(
        grants_by(&log, standby_id, &first),
        0,
        "the standby did nothing"
    );

    // The leader dies without releasing the Lease; it expires after 5 s.
    leader.kill();
    let second = unique("second");
    apply_yaml(&connection(
        &ns,
        "second",
        &server,
        &format!(
            "  database: postgres\n  role: {{name: {second:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n"
        ),
    ));
    wait_for("dbconn", &ns, "second", READY, "True", 60);
    assert!(standby.log_text().contains("became the leader"));
    let log = pg.log().expect("log");
    assert_eq!(
        grants_by(&log, standby_id, &second),
        1,
        "the new leader granted"
    );
    assert!(shows(standby, "dbconn_leader 1"));
}
