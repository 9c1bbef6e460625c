//! The pod-injection webhook: HTTPS on its own port, answering AdmissionReviews for Pods from
//! the reflector cache of DatabaseConnections (no network call on the request path). Its
//! serving certificate comes from a Secret in the operator's namespace, which the operator
//! creates (its own CA, rcgen) and renews, patching the MutatingWebhookConfiguration's
//! caBundle to match; or which cert-manager fills. A renewed certificate is picked up
//! without a restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::api::DatabaseConnection;
use crate::inject::{self, Sidecar, Target};

/// Who provides the serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Certs {
    /// The operator: its own CA, renewed before expiry, caBundle patched.
    SelfSigned,
    /// cert-manager (or anything else) writes the Secret; its cainjector sets caBundle.
    External,
}

/// What a refused injection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// The Pod is refused with the reason.
    Deny,
    /// The Pod is admitted as it is, with a warning and an Event.
    Admit,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    pub secret: String,
    pub certs: Certs,
    /// The MutatingWebhookConfiguration whose caBundle is kept.
    pub config_name: String,
    /// The Service in front of the webhook: its DNS names go into the certificate.
    pub service: String,
    /// More names (or IP addresses) for the certificate, e.g. a loopback URL's host.
    pub extra_names: Vec<String>,
    pub failure_mode: FailureMode,
    pub sidecar: Sidecar,
}

/// Days a certificate the operator issues is valid, and how close to its end it is renewed.
const VALID_DAYS: i64 = 365;
const RENEW_DAYS: i64 = 30;
const NOT_AFTER: &str = "dbconn.io/not-after";
const NAMES: &str = "dbconn.io/names";

/// The serving certificate in use, replaced when the Secret changes.
#[derive(Debug, Default)]
struct Reloadable(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|k| k.clone())
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("tls.crt is not PEM")?;
    anyhow::ensure!(!chain.is_empty(), "tls.crt holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("tls.key is not a PEM key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The DNS names (and addresses) the certificate must carry.
fn cert_names(settings: &Settings, namespace: &str) -> Vec<String> {
    let svc = &settings.service;
    let mut names = vec![
        format!("{svc}.{namespace}.svc"),
        format!("{svc}.{namespace}.svc.cluster.local"),
        format!("{svc}.{namespace}"),
        svc.clone(),
    ];
    names.extend(settings.extra_names.iter().cloned());
    names
}

/// A new CA and a serving certificate for `names` signed by it: (ca.crt, tls.crt, tls.key).
fn issue(names: &[String]) -> anyhow::Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "dbconn webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(VALID_DAYS + 1);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("dbconn-webhook", String::as_str),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(VALID_DAYS);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((issuer.pem(), cert.pem(), key.serialize_pem()))
}

/// The first PEM certificate of a bundle.
fn first_certificate(pem: &[u8]) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(pem).ok()?;
    let end = text.find(END)? + END.len();
    Some(format!("{}\n", text[..end].trim_start()))
}

fn data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

/// Whether the operator must (re)issue: no Secret, or one it made that names other hosts or
/// ends within RENEW_DAYS.
fn needs_issue(secret: Option<&Secret>, names: &[String]) -> bool {
    let Some(s) = secret else { return true };
    if data(s, "tls.crt").is_none() || data(s, "tls.key").is_none() || data(s, "ca.crt").is_none() {
        return true;
    }
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    let ending = ann
        .get(NOT_AFTER)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_none_or(|end| end - time::OffsetDateTime::now_utc() < time::Duration::days(RENEW_DAYS));
    ending || ann.get(NAMES).map(String::as_str) != Some(names.join(",").as_str())
}

/// Brings the Secret, the served certificate and (self-signed) the caBundle up to date.
/// Returns when the served certificate expires (Unix seconds), when it can be read.
async fn refresh(
    client: &Client,
    namespace: &str,
    settings: &Settings,
    served: &Reloadable,
) -> anyhow::Result<Option<i64>> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut secret = secrets.get_opt(&settings.secret).await?;
    let names = cert_names(settings, namespace);
    if settings.certs == Certs::SelfSigned && needs_issue(secret.as_ref(), &names) {
        let (ca, cert, key) = issue(&names)?;
        // The caBundle trusts the new CA and the one before it, so a replica still serving
        // the previous certificate keeps working until it reloads.
        let previous = secret
            .as_ref()
            .and_then(|s| data(s, "ca.crt"))
            .and_then(first_certificate);
        let ca = match previous {
            Some(p) => format!("{ca}{p}"),
            None => ca,
        };
        let end = (time::OffsetDateTime::now_utc() + time::Duration::days(VALID_DAYS))
            .format(&time::format_description::well_known::Rfc3339)?;
        let new = Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(namespace.to_owned()),
                annotations: Some(
                    [
                        (NOT_AFTER.to_owned(), end),
                        (NAMES.to_owned(), names.join(",")),
                    ]
                    .into(),
                ),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "dbconn".to_owned(),
                    )]
                    .into(),
                ),
                resource_version: secret
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            string_data: Some(
                [
                    ("ca.crt".to_owned(), ca),
                    ("tls.crt".to_owned(), cert),
                    ("tls.key".to_owned(), key),
                ]
                .into(),
            ),
            ..Default::default()
        };
        // Another replica may win the race: then its certificate is the one to use.
        let written = match &secret {
            None => secrets.create(&PostParams::default(), &new).await,
            Some(_) => {
                secrets
                    .replace(&settings.secret, &PostParams::default(), &new)
                    .await
            }
        };
        match written {
            Ok(s) => {
                tracing::info!(secret_name = %settings.secret, "issued the webhook's serving certificate");
                secret = Some(s);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                secret = secrets.get_opt(&settings.secret).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some(secret) = secret else {
        anyhow::bail!(
            "Secret {namespace}/{} with the webhook's certificate does not exist yet",
            settings.secret
        );
    };
    let (Some(cert), Some(key)) = (data(&secret, "tls.crt"), data(&secret, "tls.key")) else {
        anyhow::bail!(
            "Secret {namespace}/{} lacks tls.crt or tls.key",
            settings.secret
        );
    };
    let not_after = not_after(cert);
    let key = Arc::new(certified_key(cert, key)?);
    let changed = served
        .0
        .read()
        .ok()
        .and_then(|k| k.as_ref().map(|k| k.cert != key.cert))
        .unwrap_or(true);
    if changed {
        if let Ok(mut w) = served.0.write() {
            *w = Some(key);
        }
        tracing::info!("serving the webhook certificate from the Secret");
    }
    if settings.certs == Certs::SelfSigned
        && let Some(ca) = data(&secret, "ca.crt")
    {
        patch_ca_bundle(client, &settings.config_name, ca).await?;
    }
    Ok(not_after)
}

/// When the first certificate of a PEM chain expires, in Unix seconds; `None` when it cannot
/// be read.
fn not_after(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Sets the caBundle of every webhook in the configuration to `ca` when it differs.
async fn patch_ca_bundle(client: &Client, name: &str, ca: &[u8]) -> anyhow::Result<()> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let Some(config) = api.get_opt(name).await? else {
        tracing::debug!(%name, "no MutatingWebhookConfiguration to give the CA to");
        return Ok(());
    };
    let webhooks = config.webhooks.unwrap_or_default();
    let ops: Vec<serde_json::Value> = webhooks
        .iter()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca))
        .map(|(i, _)| {
            serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": base64::engine::general_purpose::STANDARD.encode(ca),
            })
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .with_context(|| format!("patching the caBundle of MutatingWebhookConfiguration {name}"))?;
    tracing::info!(%name, "caBundle of the webhook configuration updated");
    Ok(())
}

/// What the webhook answers one AdmissionRequest for a Pod. Pure but for the cache read.
pub fn review(
    req: &AdmissionRequest<Pod>,
    connections: &Store<DatabaseConnection>,
    settings: &Settings,
) -> (AdmissionResponse, Option<String>) {
    let response = AdmissionResponse::from(req);
    let Some(pod) = req
        .object
        .as_ref()
        .filter(|_| req.operation == Operation::Create)
    else {
        return (response, None);
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let lookup = |name: &str| {
        connections
            .get(&ObjectRef::new(name).within(&namespace))
            .map(|c| Target::of(&c))
    };
    match inject::mutate(pod, &namespace, lookup, &settings.sidecar) {
        Ok(None) => (response, None),
        Ok(Some(patch)) => match response.clone().with_patch(patch) {
            Ok(mut r) => {
                // webhook.budgetMode=warn: admitted, and kubectl shows why it may not fit.
                let warnings = inject::over_budget(pod, lookup);
                if !warnings.is_empty() {
                    r.warnings = Some(
                        warnings
                            .into_iter()
                            .map(|w| format!("dbconn: over the connection budget: {w}"))
                            .collect(),
                    );
                }
                (r, None)
            }
            Err(e) => (response.deny(format!("dbconn: {e}")), None),
        },
        Err(why) => match settings.failure_mode {
            FailureMode::Deny => (response.deny(format!("dbconn: {why}")), None),
            FailureMode::Admit => {
                let mut r = response;
                r.warnings = Some(vec![format!("dbconn did not inject the pod: {why}")]);
                (r, Some(why))
            }
        },
    }
}

/// Records an admitted-without-sidecar Pod on each connection it names (off the request path).
fn note_uninjected(
    recorder: Recorder,
    connections: Store<DatabaseConnection>,
    namespace: String,
    pod: Option<Pod>,
    why: String,
) {
    tokio::spawn(async move {
        let pod_name = pod
            .as_ref()
            .and_then(|p| p.metadata.name.clone().or(p.metadata.generate_name.clone()))
            .unwrap_or_default();
        for name in pod.as_ref().map(inject::requested).unwrap_or_default() {
            let Some(c) = connections.get(&ObjectRef::new(&name).within(&namespace)) else {
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "PodNotInjected".into(),
                note: Some(format!(
                    "pod {pod_name} was admitted without the sidecar: {why}"
                )),
                action: "Inject".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &c.object_ref(&())).await {
                tracing::debug!(error = %e, "recording an event");
            }
        }
    });
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<(Store<DatabaseConnection>, Settings, Recorder)>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if req.method() != Method::POST || req.uri().path() != "/mutate-pods" {
        return reply(StatusCode::NOT_FOUND, b"{}".to_vec());
    }
    let body = match Limited::new(req.into_body(), 8 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
    };
    let (connections, settings, recorder) = &*state;
    let response = match serde_json::from_slice::<AdmissionReview<Pod>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let req: Result<AdmissionRequest<Pod>, _> = r.try_into();
            req.map_err(|e| e.to_string())
        }) {
        Ok(req) => {
            let (response, uninjected) = review(&req, connections, settings);
            if let Some(why) = uninjected {
                tracing::warn!(namespace = ?req.namespace, %why, "admitted a pod without its sidecar");
                note_uninjected(
                    recorder.clone(),
                    connections.clone(),
                    req.namespace.clone().unwrap_or_default(),
                    req.object.clone(),
                    why,
                );
            } else if !response.allowed {
                tracing::info!(namespace = ?req.namespace, reason = %response.result.message, "refused a pod");
            }
            response
        }
        Err(e) => AdmissionResponse::invalid(e),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(b) => reply(StatusCode::OK, b),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string().into_bytes(),
        ),
    }
}

/// Serves the webhook on `listener` (bound to `settings.addr` by the caller, so a bad address
/// stops the operator at start) until the task is dropped: keeps the certificate fresh, and
/// answers once it has one.
pub async fn run(
    listener: tokio::net::TcpListener,
    client: Client,
    namespace: String,
    settings: Settings,
    connections: Store<DatabaseConnection>,
    recorder: Recorder,
    readiness: Arc<crate::operator::Readiness>,
) -> anyhow::Result<()> {
    let served = Arc::new(Reloadable::default());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(served.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tracing::info!(addr = %settings.addr, "serving the pod webhook at /mutate-pods");

    let refresher = {
        let (client, namespace, settings, served) = (
            client.clone(),
            namespace.clone(),
            settings.clone(),
            served.clone(),
        );
        async move {
            loop {
                match refresh(&client, &namespace, &settings, &served).await {
                    Ok(Some(not_after)) => {
                        readiness.certificate_expiry.set(not_after);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "webhook certificate"),
                }
                let certified = served.0.read().is_ok_and(|k| k.is_some());
                readiness
                    .certified
                    .store(certified, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(15)).await;
            }
        }
    };
    tokio::spawn(refresher);

    let state = Arc::new((connections, settings, recorder));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a webhook connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, state).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_loads_and_is_renewed_only_when_due_or_renamed() {
        let names = vec![
            "dbconn-webhook.dbconn-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let (ca, cert, key) = issue(&names).expect("issue");
        assert!(ca.contains("BEGIN CERTIFICATE"));
        certified_key(cert.as_bytes(), key.as_bytes()).expect("loads");
        let end = (time::OffsetDateTime::now_utc() + time::Duration::days(VALID_DAYS))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time");
        let secret = |end: String, names: &str| Secret {
            metadata: ObjectMeta {
                annotations: Some(
                    [
                        (NOT_AFTER.to_owned(), end),
                        (NAMES.to_owned(), names.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(
                [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        assert!(!needs_issue(
            Some(&secret(end.clone(), &names.join(","))),
            &names
        ));
        assert!(needs_issue(Some(&secret(end, "other.svc")), &names));
        let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time");
        assert!(needs_issue(Some(&secret(soon, &names.join(","))), &names));
        assert!(needs_issue(None, &names));
        assert!(certified_key(b"garbage", key.as_bytes()).is_err());
        // A renewal's bundle keeps the previous CA first in line after the new one.
        let bundle = format!("{ca}{ca}");
        assert_eq!(
            first_certificate(bundle.as_bytes()).as_deref(),
            Some(ca.as_str())
        );
    }
}
