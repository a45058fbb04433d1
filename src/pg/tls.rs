//! rustls client configurations for each `sslmode`, with libpq's meanings: `allow` tries without
//! encryption first (see `connect`), `prefer`/`require` encrypt without checking the certificate
//! (`require` checks the chain when a root file is there, as libpq does), `verify-ca` checks the
//! chain, `verify-full` the chain and the host name.
//!
//! The roots are a file found as libpq finds it ([`root_file`]), and pg_dump/psql are given that
//! same file (`PGSSLROOTCERT`): the driver and the client programs never trust different roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::UsageError;

/// What `sslmode` asked for, with libpq's meaning (tokio-postgres itself knows only the first three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    pub(crate) fn parse(raw: &str) -> Result<Self, UsageError> {
        Ok(match raw {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(UsageError::new(format!(
                    "unknown sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// The rustls configuration for `mode`, trusting the roots in `root_file` (from [`root_file`]).
pub fn client_config(mode: TlsMode, root_file: Option<&Path>) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?;
    let roots = match root_file {
        Some(path) => Some(Arc::new(root_store(path)?)),
        None => None,
    };
    let config = match (mode, roots) {
        (TlsMode::VerifyFull, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .context("building the certificate verifier")?;
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        }
        (TlsMode::VerifyCa | TlsMode::Require, Some(roots)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider }))
            .with_no_client_auth(),
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
            anyhow::bail!(UsageError::new(format!(
                "sslmode={} needs root certificates",
                mode.as_str()
            )))
        }
        (_, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly { provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The file of root certificates `mode` trusts, found as libpq finds it: `sslrootcert` (`system`:
/// the system's bundle), else `~/.postgresql/root.crt` when it exists, else (verify-ca and
/// verify-full only) the system's bundle, which libpq 16 calls `sslrootcert=system`. `require`
/// checks the chain only when a file was named or `root.crt` exists; `disable`, `allow` and
/// `prefer` check nothing.
pub fn root_file(mode: TlsMode, explicit: Option<&str>) -> Result<Option<PathBuf>, UsageError> {
    if matches!(mode, TlsMode::Disable | TlsMode::Allow | TlsMode::Prefer) {
        return Ok(None);
    }
    let verifying = matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull);
    let found = match explicit {
        Some("system") => system_bundle(),
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql/root.crt"));
            match home.filter(|p| p.is_file()) {
                Some(root) => Some(root),
                None if verifying => system_bundle(),
                None => None,
            }
        }
    };
    if found.is_none() && verifying {
        return Err(UsageError::new(format!(
            "sslmode={} needs root certificates and none were found: set sslrootcert=/path/to/ca.pem in the URL (your provider's CA), put it in ~/.postgresql/root.crt, or install the system's CA bundle (ca-certificates)",
            mode.as_str()
        )));
    }
    Ok(found)
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the usual places.
fn system_bundle() -> Option<PathBuf> {
    let named = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    named
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

fn root_store(path: &Path) -> Result<RootCertStore> {
    let shown = path.display();
    let pem = std::fs::read(path).with_context(|| format!("reading the root certificates {shown} (sslrootcert)"))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| anyhow::anyhow!("parsing the root certificates {shown}: {e}"))?;
        store
            .add(cert)
            .with_context(|| format!("adding a certificate from {shown}"))?;
    }
    if store.is_empty() {
        anyhow::bail!(UsageError::new(format!(
            "{shown} holds no PEM certificate (sslrootcert)"
        )));
    }
    Ok(store)
}

/// libpq's `require`: the connection is encrypted, the certificate is not checked. Signatures are
/// still verified, so the handshake itself is sound.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
/// The chain is checked by itself (rustls' own chain check), not by reading a name error as
/// "the chain was fine".
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
