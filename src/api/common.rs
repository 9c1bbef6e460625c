//! Types shared by both resources: TLS settings, Secret references and closed enums.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// libpq's sslmode: how hard the connection insists on TLS and what it verifies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only. Passwords and data cross the network in the clear.
    Disable,
    /// Plain TCP first; TLS only if the server refuses a plain connection. Nothing is verified.
    Allow,
    /// TLS first; plain TCP if the server does not offer TLS. Nothing is verified.
    Prefer,
    /// TLS, no verification (as libpq: when a CA is given, the chain is verified as in verify-ca).
    Require,
    /// TLS, and the server certificate must chain to the CA. The host name is not checked.
    VerifyCa,
    /// TLS, the certificate must chain to the CA and name the host (or tls.serverName).
    #[default]
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling, as used in URLs and PGSSLMODE.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// A key of a Secret. dbconn reads Secrets only in the namespace of the resource that names
/// them (a DatabaseConnection) or in the operator's namespace (a DatabaseServer).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.__namespace__)").message(
    "Secret references take no namespace: a DatabaseConnection reads Secrets in its own namespace, a DatabaseServer in the operator's namespace"
))]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret. Each reference documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
    /// Not allowed. Present only so that a namespace is rejected with a clear message rather
    /// than silently dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

impl SecretKeyRef {
    /// The key to read, or `default` when the reference names none.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// A Secret holding a user name and a password.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.__namespace__)").message(
    "Secret references take no namespace: a DatabaseConnection reads Secrets in its own namespace, a DatabaseServer in the operator's namespace"
))]
pub struct CredentialsSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
    /// Not allowed (see SecretKeyRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// How to reach the server over TLS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientCertSecretRef) == has(self.clientKeySecretRef)").message(
    "tls.clientCertSecretRef and tls.clientKeySecretRef go together: set both (a kubernetes.io/tls Secret holds tls.crt and tls.key) or neither"
))]
#[x_kube(validation = Rule::new("!(self.sslmode in ['disable', 'allow', 'prefer']) || !has(self.caSecretRef)").message(
    "tls.caSecretRef is only used when the server is verified: set sslmode to require, verify-ca or verify-full"
))]
pub struct TlsSpec {
    /// How hard to insist on TLS and what to verify, with libpq's meaning:
    /// disable, allow, prefer, require, verify-ca or verify-full.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA bundle (PEM) that signs the server certificate; key defaults to `ca.crt`.
    /// Without it the system's public roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS; key defaults to `tls.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretKeyRef>,
    /// Private key (PEM) of the client certificate; key defaults to `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_secret_ref: Option<SecretKeyRef>,
    /// Name to send as SNI and to verify in the certificate, when it differs from the host
    /// (for example when connecting through an IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// Standard condition list, merged by type.
pub type Conditions = Vec<Condition>;
