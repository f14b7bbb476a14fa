//! TLS helpers for the integration tests and the handshake benchmark.
//!
//! - [`TestCa`] makes a throwaway CA and leaf certificates with rcgen (ECDSA P-256,
//!   SHA-256 signatures), [`TlsDir`] writes them as PEM files that the `postgres` OS
//!   account can read when the tests run as root.
//! - [`ClientTls`] is a rustls client configuration that trusts the test CA only,
//!   optionally presents a client certificate and offers ALPN `postgresql`, and
//!   remembers every server certificate it was shown.
//! - [`MakeRustlsConnect`] plugs that configuration into tokio-postgres.
//! - A few raw protocol helpers drive a handshake by hand (SSLRequest or direct TLS).

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The ALPN protocol name PostgreSQL 17 requires for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The OS account PostgreSQL runs as when the tests run as root.
const SERVER_ACCOUNT: &str = "postgres";

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A serial number no other certificate of this process has.
fn next_serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut bytes = Vec::with_capacity(16);
    // A leading 0x01 keeps the DER integer positive and of fixed length.
    bytes.push(1);
    bytes.extend_from_slice(&nanos.to_be_bytes());
    bytes.extend_from_slice(&n.to_be_bytes()[1..]);
    SerialNumber::from_slice(&bytes)
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A certificate with its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A self-signed test CA that signs leaf certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pgsplit tests");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(next_serial());
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `common_name` signed by this CA. `sans` are DNS names or IP
    /// addresses (rcgen tells them apart).
    pub fn leaf(&self, common_name: &str, sans: &[&str], usage: Usage) -> Leaf {
        let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(next_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// True when this process runs as root (then PostgreSQL runs as `postgres`).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Gives `path` to the account PostgreSQL runs as, when that is not us.
pub fn give_to_postgres(path: &Path) {
    if !running_as_root() {
        return;
    }
    let owner = format!("{SERVER_ACCOUNT}:{SERVER_ACCOUNT}");
    let status = std::process::Command::new("chown")
        .arg(&owner)
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("chown {owner} {}: {e}", path.display()));
    assert!(status.success(), "chown {owner} {} failed", path.display());
}

/// A temporary directory of PEM files, readable by every account (PostgreSQL must be
/// able to enter it). Removed on drop; directories left by processes that died
/// (statics are never dropped) are removed by the next one.
pub struct TlsDir {
    dir: tempfile::TempDir,
}

const DIR_PREFIX: &str = "pgsplit-tls-";

impl TlsDir {
    pub fn new() -> TlsDir {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("TLS temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod TLS temp dir");
        TlsDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` with `mode`, replacing any previous file atomically (a rename),
    /// as a certificate rotation would.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.path().join(name);
        let tmp = self.path().join(format!(".{name}.new"));
        std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
        path
    }

    /// A certificate (or CA) file: world-readable.
    pub fn write_cert(&self, name: &str, pem: &str) -> PathBuf {
        self.write(name, pem, 0o644)
    }

    /// A private key for pgsplit or a test client: 0600, owned by us.
    pub fn write_key(&self, name: &str, pem: &str) -> PathBuf {
        self.write(name, pem, 0o600)
    }

    /// A private key for PostgreSQL: 0600 and owned by the server's account, which
    /// PostgreSQL insists on.
    pub fn write_server_key(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.write(name, pem, 0o600);
        give_to_postgres(&path);
        path
    }
}

impl Default for TlsDir {
    fn default() -> Self {
        TlsDir::new()
    }
}

/// Removes `pgsplit-tls-<pid>-*` directories whose process is gone.
fn remove_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The server certificates a client was shown, in order.
#[derive(Debug, Default)]
pub struct SeenCerts(Mutex<Vec<CertificateDer<'static>>>);

impl SeenCerts {
    pub fn last(&self) -> Option<CertificateDer<'static>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Verifies like libpq's `verify-full` (chain to the test CA, host name in the SAN)
/// and records each end-entity certificate it is shown, valid or not.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<SeenCerts>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(end_entity.clone().into_owned());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client configuration for tests.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub seen: Arc<SeenCerts>,
}

impl ClientTls {
    /// Trusts `ca` only; presents `identity` when given; offers ALPN `postgresql`
    /// when `alpn`.
    pub fn new(ca: &CertificateDer<'static>, identity: Option<&Leaf>, alpn: bool) -> ClientTls {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).expect("test CA as a root");
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), ring())
            .build()
            .expect("server verifier");
        let seen = Arc::new(SeenCerts::default());
        let builder = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                inner,
                seen: seen.clone(),
            }));
        let mut config = match identity {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.der.clone()], leaf.key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        // Every handshake a full one, as with libpq, so each shows the certificate.
        config.resumption = rustls::client::Resumption::disabled();
        if alpn {
            config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        }
        ClientTls {
            config: Arc::new(config),
            seen,
        }
    }

    pub fn connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect {
            config: self.config.clone(),
        }
    }

    /// Connects tokio-postgres over this TLS configuration (the URL says `sslmode`)
    /// and drives the connection on a spawned task.
    pub async fn connect(
        &self,
        url: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, self.connector()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The server name to check a host against, as tokio-postgres would pass it.
    pub fn server_name(host: &str) -> ServerName<'static> {
        ServerName::try_from(host.to_owned()).expect("server name")
    }

    /// SSLRequest, then a TLS handshake, over a fresh TCP connection to `addr`.
    pub async fn ssl_request(
        &self,
        addr: std::net::SocketAddr,
        host: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(&ssl_request_packet()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            return Err(io::Error::other(format!(
                "SSLRequest answered {:?}",
                char::from(answer[0])
            )));
        }
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(Self::server_name(host), tcp)
            .await
    }

    /// A TLS handshake as the first bytes on a fresh TCP connection (PostgreSQL 17
    /// `sslnegotiation=direct`).
    pub async fn direct(
        &self,
        addr: std::net::SocketAddr,
        host: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(Self::server_name(host), tcp)
            .await
    }
}

/// tokio-postgres `MakeTlsConnect` over rustls (tokio-postgres has no rustls support
/// of its own).
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One connection's `TlsConnect`: the configuration and the name to verify.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// A rustls client stream as tokio-postgres wants it.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    /// `tls-server-end-point` (RFC 5929): the hash of the server certificate with the
    /// hash of its signature algorithm. The test CA signs with ECDSA/SHA-256, so
    /// SHA-256 it is; this helper does not handle other algorithms.
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        use sha2::Digest;
        match self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            Some(cert) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(
                sha2::Sha256::digest(cert.as_ref()).to_vec(),
            ),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// The 8-byte SSLRequest packet.
pub fn ssl_request_packet() -> [u8; 8] {
    let mut packet = [0u8; 8];
    packet[..4].copy_from_slice(&8i32.to_be_bytes());
    packet[4..].copy_from_slice(&80_877_103i32.to_be_bytes());
    packet
}

/// A protocol 3.0 StartupMessage.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = Vec::with_capacity(body.len() + 4);
    packet.extend_from_slice(&(i32::try_from(body.len() + 4).expect("small")).to_be_bytes());
    packet.extend_from_slice(&body);
    packet
}

/// Reads one backend message: `Ok(None)` when the peer closed first.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (4..=1 << 20).contains(l))
        .ok_or_else(|| io::Error::other(format!("bad message length {len}")))?;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    Ok(Some((header[0], body)))
}
