//! TLS for pgbackup's own connections, with libpq's `sslmode` meanings: `allow`/`prefer`
//! and `require` encrypt without checking the certificate (unless a root certificate is
//! given, which makes `require` act as `verify-ca`, as in libpq), `verify-ca` checks the
//! chain against the root certificate, `verify-full` also the host name.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{WebPkiSupportedAlgorithms, ring},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateCheck {
    /// Not at all: the connection is encrypted, the server not authenticated.
    None,
    /// The chain, against the root certificate.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// Building the TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The root certificate file cannot be used.
    #[error("root certificate {path}: {reason}")]
    RootCertificate {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Checking the certificate needs a root certificate.
    #[error(
        "sslmode {0} checks the server's certificate: give its CA with --pg-sslrootcert (PGSSLROOTCERT)"
    )]
    NoRootCertificate(String),
    /// rustls refused the configuration.
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// Where the trusted CA certificates (PEM) come from.
#[derive(Clone, PartialEq, Eq)]
pub enum RootCertificates {
    /// A file (`--pg-sslrootcert`, `PGSSLROOTCERT`).
    File(PathBuf),
    /// Bytes read from a Secret by the operator.
    Pem(Vec<u8>),
}

impl std::fmt::Debug for RootCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Pem(bytes) => write!(f, "Pem({} bytes)", bytes.len()),
        }
    }
}

/// A client configuration for `check`, trusting the certificates in `root`.
pub fn client_config(
    check: CertificateCheck,
    root: Option<&RootCertificates>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        CertificateCheck::None => Arc::new(NoCertificateCheck { algorithms }),
        CertificateCheck::Chain | CertificateCheck::ChainAndName => {
            let roots = load_roots(root.ok_or_else(|| {
                TlsError::NoRootCertificate(match check {
                    CertificateCheck::Chain => "verify-ca".into(),
                    _ => "verify-full".into(),
                })
            })?)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
            if check == CertificateCheck::Chain {
                Arc::new(ChainOnly { inner: webpki })
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn load_roots(source: &RootCertificates) -> Result<RootCertStore, TlsError> {
    let error = |reason: String| TlsError::RootCertificate {
        path: match source {
            RootCertificates::File(path) => path.display().to_string(),
            RootCertificates::Pem(_) => "from the Secret (target.sslRootCert)".into(),
        },
        reason,
    };
    let certificates: Vec<_> = match source {
        RootCertificates::File(path) => CertificateDer::pem_file_iter(path)
            .map_err(|e| error(e.to_string()))?
            .collect(),
        RootCertificates::Pem(bytes) => CertificateDer::pem_slice_iter(bytes).collect(),
    };
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate.map_err(|e| error(e.to_string()))?)
            .map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    Ok(roots)
}

/// `require` without a root certificate: encryption only, as libpq does.
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
