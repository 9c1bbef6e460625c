//! dbconn's PostgreSQL connector against the bed's real TLS server: every libpq sslmode,
//! a custom CA, a client certificate, and the failures a user must be told how to fix.

mod support;

use dbconn::api::SslMode;
use dbconn::postgres::{ConnectError, Endpoint, TlsMaterial, connect};
use support::bed;
use testbed::postgres::{CERT_USER, SUPERUSER, TLS_ONLY_USER};

fn ca_pem() -> Vec<u8> {
    std::fs::read(&bed().ca_cert).expect("bed CA")
}

fn superuser(host: &str, sslmode: SslMode) -> Endpoint {
    let pg = &bed().postgres;
    let mut ep = Endpoint::new(host, pg.port, "postgres", SUPERUSER);
    ep.password = Some(pg.superuser_password.clone());
    ep.sslmode = sslmode;
    ep.tls.ca_pem = Some(ca_pem());
    ep
}

async fn server_sees_tls(ep: &Endpoint) -> bool {
    let session = connect(ep)
        .await
        .unwrap_or_else(|e| panic!("{:?} should connect: {e}", ep.sslmode));
    let row = session
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let ssl: bool = row.get(0);
    assert_eq!(ssl, session.tls, "the session knows whether it uses TLS");
    ssl
}

#[tokio::test]
async fn verify_full_with_the_bed_ca_connects_over_tls() {
    assert!(server_sees_tls(&superuser("localhost", SslMode::VerifyFull)).await);
    println!("verify-full to localhost with the bed's CA: TLS session established");
}

#[tokio::test]
async fn client_certificate_logs_in_a_cert_only_user() {
    let pg = &bed().postgres;
    let mut ep = Endpoint::new("localhost", pg.port, "postgres", CERT_USER);
    ep.sslmode = SslMode::VerifyFull;
    ep.tls = TlsMaterial {
        ca_pem: Some(ca_pem()),
        client_cert_pem: Some(std::fs::read(&pg.cert_user_cert).expect("cert")),
        client_key_pem: Some(std::fs::read(&pg.cert_user_key).expect("key")),
        server_name: None,
    };
    let session = connect(&ep).await.expect("mTLS login");
    let user: String = session
        .client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(user, CERT_USER);
    println!("mTLS: logged in as {user} with a client certificate only");

    // Without the certificate the same user is refused, and the message says so.
    ep.tls.client_cert_pem = None;
    ep.tls.client_key_pem = None;
    let err = connect(&ep).await.err().expect("no certificate, no login");
    assert!(
        matches!(err, ConnectError::Refused(_) | ConnectError::Other(_)),
        "{err}"
    );
    println!("without the client certificate: {err}");
}

#[tokio::test]
async fn verify_full_rejects_a_name_the_certificate_does_not_carry() {
    let mut ep = superuser("127.0.0.1", SslMode::VerifyFull);
    ep.tls.server_name = Some("orders.db.internal".into());
    let err = connect(&ep).await.err().expect("wrong name must fail");
    assert!(matches!(err, ConnectError::WrongHostName(..)), "{err}");
    assert!(err.to_string().contains("orders.db.internal"), "{err}");
    println!("verify-full, wrong name: {err}");

    // verify-ca checks the chain only, so the same name is fine there.
    ep.sslmode = SslMode::VerifyCa;
    assert!(server_sees_tls(&ep).await);
}

#[tokio::test]
async fn verify_ca_rejects_an_unknown_ca() {
    let other = tempdir("other-ca");
    testbed::certs::Ca::create(&other, "someone-else").expect("CA");
    let mut ep = superuser("localhost", SslMode::VerifyCa);
    ep.tls.ca_pem = Some(std::fs::read(other.join("ca.crt")).expect("ca"));
    let err = connect(&ep).await.err().expect("unknown CA must fail");
    assert!(
        matches!(err, ConnectError::UntrustedCertificate(_)),
        "{err}"
    );
    assert!(err.to_string().contains("set tls.caSecretRef"), "{err}");
    println!("verify-ca, unknown CA: {err}");
    // `require` with a CA behaves as verify-ca, as in libpq.
    ep.sslmode = SslMode::Require;
    assert!(matches!(
        connect(&ep).await.err(),
        Some(ConnectError::UntrustedCertificate(_))
    ));
    // `require` without a CA verifies nothing.
    ep.tls.ca_pem = None;
    assert!(server_sees_tls(&ep).await);
    let _ = std::fs::remove_dir_all(other);
}

#[tokio::test]
async fn disable_allow_and_prefer_behave_as_libpq() {
    assert!(
        !server_sees_tls(&superuser("localhost", SslMode::Disable)).await,
        "disable is plain"
    );
    assert!(
        !server_sees_tls(&superuser("localhost", SslMode::Allow)).await,
        "allow tries plain first"
    );
    assert!(
        server_sees_tls(&superuser("localhost", SslMode::Prefer)).await,
        "prefer tries TLS first"
    );

    // A user the server accepts over TLS only: allow retries with TLS, disable is refused.
    let pg = &bed().postgres;
    let mut ep = Endpoint::new("localhost", pg.port, "postgres", TLS_ONLY_USER);
    ep.password = Some(pg.tls_only_password.clone());
    ep.sslmode = SslMode::Allow;
    assert!(
        server_sees_tls(&ep).await,
        "allow falls back to TLS when plain is refused"
    );
    ep.sslmode = SslMode::Disable;
    let err = connect(&ep)
        .await
        .err()
        .expect("plain is refused for a hostssl-only user");
    assert!(matches!(err, ConnectError::Refused(_)), "{err}");
    println!("disable/allow/prefer: plain, plain then TLS on refusal, TLS first");
}

#[tokio::test]
async fn wrong_password_and_unreachable_server_read_as_fixes() {
    let mut ep = superuser("localhost", SslMode::VerifyFull);
    ep.password = Some("not-the-password".into());
    let err = connect(&ep).await.err().expect("wrong password");
    assert_eq!(
        err.to_string(),
        "password authentication failed for user \"postgres\""
    );

    let mut ep = superuser("127.0.0.1", SslMode::Disable);
    ep.port = testbed::free_port().expect("port");
    let err = connect(&ep).await.err().expect("nothing listens there");
    assert!(matches!(err, ConnectError::Unreachable(..)), "{err}");
    println!("wrong password: rejected as expected; closed port: {err}");
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(support::unique(prefix));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

async fn backend_pid(session: &dbconn::postgres::Session) -> i32 {
    session
        .client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

/// The operator's kept admin sessions: a session put back after a reconcile serves the next
/// one to the same endpoint, never another endpoint (another password, another database)
/// and never after it was dropped or ended by the server.
#[tokio::test]
async fn kept_admin_sessions_serve_only_their_own_endpoint() {
    use dbconn::operator::sessions::Sessions;
    let sessions = Sessions::new(2);
    let ep = superuser("localhost", SslMode::VerifyFull);

    let first = sessions.get(ep.clone()).await.expect("admin session");
    let kept = backend_pid(&first).await;
    sessions.put_back(first);
    assert_eq!(sessions.expire(), 1, "one idle session kept");
    let again = sessions.get(ep.clone()).await.expect("kept session");
    assert_eq!(
        backend_pid(&again).await,
        kept,
        "the kept session is reused"
    );
    sessions.put_back(again);

    // Another endpoint never gets it: a wrong password is refused by the server...
    let mut wrong = ep.clone();
    wrong.password = Some("not the password".into());
    let refused = sessions.get(wrong).await.err().expect("wrong password");
    assert!(
        matches!(refused, ConnectError::PasswordRejected(_)),
        "{refused}"
    );
    // ...and another database opens its own session.
    let mut other = ep.clone();
    other.database = "template1".into();
    let elsewhere = sessions.get(other).await.expect("template1");
    assert_ne!(backend_pid(&elsewhere).await, kept);

    // Dropped instead of put back (its reconcile failed), a session closes.
    let failed = sessions.get(ep.clone()).await.expect("kept session");
    assert_eq!(backend_pid(&failed).await, kept);
    drop(failed);
    let fresh = sessions.get(ep.clone()).await.expect("new session");
    let fresh_pid = backend_pid(&fresh).await;
    assert_ne!(fresh_pid, kept, "a dropped session is not reused");

    // Ended by the server while idle, it is not lent again.
    sessions.put_back(fresh);
    let killed: bool = elsewhere
        .client
        .query_one("SELECT pg_terminate_backend($1)", &[&fresh_pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = sessions.expire();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        left, 0,
        "a session the server ended is dropped from the pool"
    );
    let after = sessions.get(ep).await.expect("new session");
    assert_ne!(backend_pid(&after).await, fresh_pid);
}
