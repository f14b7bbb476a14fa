//! TLS on both sides, with rustls and the `ring` provider.
//!
//! Client side: a server config built from `[tls]` files, swapped atomically on
//! reload (a broken new file keeps the old config). ALPN `postgresql` is offered
//! so PostgreSQL 17 direct-TLS clients work.
//!
//! Server side: libpq `sslmode` semantics per server URL: `prefer`/`require`
//! encrypt without verifying (as libpq does), `require` with `sslrootcert`
//! behaves like `verify-ca`, `verify-ca` checks the chain, `verify-full` also
//! checks the host name against the certificate's SAN.

pub mod end_point;

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;

use crate::config::{ServerUrl, SslMode, TlsConfig, TlsMode};

pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

/// What pgsplit presents to TLS clients: the rustls config and the
/// `tls-server-end-point` channel-binding value of its certificate (`None`
/// when the certificate's signature hash is not one RFC 5929 defines, in which
/// case SCRAM-SHA-256-PLUS is not offered, as PostgreSQL would fail it).
pub struct Acceptor {
    pub config: Arc<rustls::ServerConfig>,
    pub end_point: Option<Arc<[u8]>>,
}

/// Builds the client-facing server config, or `None` when TLS is disabled.
pub fn server_config(cfg: &TlsConfig) -> Result<Option<Arc<Acceptor>>, TlsError> {
    if cfg.mode == TlsMode::Disable {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Err(TlsError::Config("tls.cert and tls.key are required".into()));
    };
    let certs = load_certs(cert)?;
    let end_point = certs
        .first()
        .and_then(|c| end_point::hash(c))
        .map(Arc::from);
    let key = load_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Config(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("tls.cert/tls.key: {e}")))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(Acceptor {
        config: Arc::new(config),
        end_point,
    })))
}

/// The client-facing TLS state: the mode and the current acceptor config.
pub struct ClientTls {
    current: RwLock<(TlsMode, Option<Arc<Acceptor>>)>,
}

impl ClientTls {
    pub fn new(cfg: &TlsConfig) -> Result<Self, TlsError> {
        Ok(ClientTls {
            current: RwLock::new((cfg.mode, server_config(cfg)?)),
        })
    }

    /// The mode and the acceptor for one handshake: the certificate it
    /// presents and the channel-binding value checked later in that same
    /// connection come from one snapshot, whatever a reload does meanwhile.
    pub fn get(&self) -> (TlsMode, Option<Arc<Acceptor>>) {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files; on error keeps serving with what it had and
    /// returns false.
    pub fn reload(&self, cfg: &TlsConfig) -> bool {
        match server_config(cfg) {
            Ok(new) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (cfg.mode, new);
                tracing::info!(mode = ?cfg.mode, "client TLS configuration loaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "client TLS reload failed; keeping the previous certificate");
                false
            }
        }
    }
}

/// How pgsplit connects to one server.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: SslMode,
    /// `None` for `disable` (and `allow`, which pgsplit treats as plaintext first).
    pub config: Option<Arc<rustls::ClientConfig>>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({:?})", self.mode)
    }
}

impl ServerTls {
    /// Whether a server answering 'N' to SSLRequest may be used in plaintext.
    pub fn plaintext_ok(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Disable | SslMode::Allow | SslMode::Prefer
        )
    }
}

pub fn server_tls(url: &ServerUrl) -> Result<ServerTls, TlsError> {
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| TlsError::Config(format!("invalid server host name {:?}", url.host)))?;
    // libpq: `require` with a root certificate verifies the chain like verify-ca.
    let effective = match (url.sslmode, &url.sslrootcert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match effective {
        SslMode::Disable | SslMode::Allow => {
            return Ok(ServerTls {
                mode: url.sslmode,
                config: None,
                name,
            });
        }
        SslMode::Prefer | SslMode::Require => Arc::new(NoVerify(provider())),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let ca = url.sslrootcert.as_deref().ok_or_else(|| {
                TlsError::Config(format!(
                    "sslmode={} needs sslrootcert (pgsplit has no default root store)",
                    if effective == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                ))
            })?;
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(Path::new(ca))?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Config(format!("sslrootcert: {e}")))?;
            if effective == SslMode::VerifyFull {
                inner
            } else {
                Arc::new(ChainOnly(inner))
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&url.sslcert, &url.sslkey) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(Path::new(cert))?, load_key(Path::new(key))?)
            .map_err(|e| TlsError::Config(format!("sslcert/sslkey: {e}")))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::Config("sslcert and sslkey go together".into())),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ServerTls {
        mode: url.sslmode,
        config: Some(Arc::new(config)),
        name,
    })
}

/// `sslmode=prefer|require`: encrypted, not authenticated (libpq semantics).
/// Handshake signatures are still checked, so the session keys are sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to the root, any host name goes.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
