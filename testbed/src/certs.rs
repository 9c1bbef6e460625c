//! The test bed's PKI: one CA that signs PostgreSQL's and kube-apiserver's serving
//! certificates and every client certificate, written as PEM files into the bed's folder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The CA of a bed; issues leaf certificates into the bed's folder.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// Paths of a certificate and its key.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// Creates a CA and writes `ca.crt` into `dir`.
    pub fn create(dir: &Path, common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join("ca.crt"), issuer.pem()).context("writing ca.crt")?;
        Ok(Self {
            issuer,
            dir: dir.to_owned(),
        })
    }

    /// Path of the CA certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, file_stem: &str, names: &[&str]) -> anyhow::Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file_stem, params)
    }

    /// Issues a client certificate with common name `cn` and optional organization
    /// (Kubernetes reads the organization as the user's group).
    pub fn client(
        &self,
        file_stem: &str,
        cn: &str,
        organization: Option<&str>,
    ) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params)
    }

    fn issue(&self, file_stem: &str, mut params: CertificateParams) -> anyhow::Result<CertFiles> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// Writes a key pair for signing service-account tokens: `sa.key` and `sa.pub`.
pub fn service_account_keys(dir: &Path) -> anyhow::Result<CertFiles> {
    let key = KeyPair::generate()?;
    let files = CertFiles {
        cert: dir.join("sa.pub"),
        key: dir.join("sa.key"),
    };
    std::fs::write(&files.cert, key.public_key_pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// Writes a file readable by its owner only (PostgreSQL refuses a key others can read).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
