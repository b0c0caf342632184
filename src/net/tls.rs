//! TLS for both directions of SMTP (RFC 3207 STARTTLS), on rustls with the ring provider.
//!
//! Inbound: the certificate and key come from `[tls] cert` / `key`; with none configured
//! knock makes a self-signed pair on first start and keeps it beside the spool, so STARTTLS
//! works out of the box. Outbound: a [`Policy`] per destination says whether STARTTLS is
//! tried (`opportunistic`, the default), must succeed (`require`), must succeed with a
//! certificate valid for the MX host name (`verify`), or is not used (`off`). Opportunistic
//! and required TLS accept any certificate, as MTAs do (a receiver's certificate is rarely
//! valid for its MX name); whether it *was* valid is still checked and kept on the attempt.
//!
//! [`Stream`] is the socket either side talks over: plain TCP until STARTTLS, then TLS.

use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use crate::config::TlsPolicy as Policy;
pub use crate::message::TlsInfo;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the self-signed pair lives when none is configured.
pub fn self_signed_paths(spool: &Path) -> (PathBuf, PathBuf) {
    let dir = spool.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The acceptor for inbound STARTTLS: the configured pair, or the self-signed one kept in
/// `spool/tls/` (made on first start for `hostname`).
pub fn acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
    spool: &Path,
    hostname: &str,
) -> anyhow::Result<TlsAcceptor> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_path_buf(), key.to_path_buf()),
        (None, None) => {
            let (cert, key) = self_signed_paths(spool);
            if !cert.exists() || !key.exists() {
                write_self_signed(&cert, &key, hostname)?;
                tracing::info!(cert = %cert.display(), "made a self-signed certificate for STARTTLS");
            }
            (cert, key)
        }
        _ => anyhow::bail!("tls.cert and tls.key: set both or neither"),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("tls.cert: reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert: {} is not PEM certificates", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("tls.cert: {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("tls.key: reading a PEM private key from {}", key.display()))?;
    server_acceptor(chain, key)
}

fn server_acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<TlsAcceptor> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls.key: does not match the certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor with a fresh self-signed certificate held in memory (the sink's).
pub fn ephemeral_acceptor(hostname: &str) -> anyhow::Result<TlsAcceptor> {
    let made = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    server_acceptor(vec![made.cert.der().clone()], key)
}

fn write_self_signed(cert: &Path, key: &Path, hostname: &str) -> anyhow::Result<()> {
    let made = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .context("making a self-signed certificate")?;
    let dir = cert.parent().expect("a path under the spool");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, made.cert.pem()).with_context(|| format!("writing {}", cert.display()))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// The connectors outbound delivery picks from by policy.
#[derive(Clone)]
pub struct Connectors {
    /// Any certificate; used for `opportunistic` and `require`.
    lenient: TlsConnector,
    /// Only certificates valid for the host; used for `verify`.
    strict: TlsConnector,
    /// Judges a certificate the lenient connector accepted, for the record.
    verifier: Arc<WebPkiServerVerifier>,
}

impl Connectors {
    /// Trusts the Mozilla roots (webpki-roots) and the PEM certificates in `extra_roots`.
    pub fn new(extra_roots: Option<&Path>) -> anyhow::Result<Connectors> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_roots {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("tls.ca_file: reading {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("tls.ca_file: {} is not PEM", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("tls.ca_file: a certificate in {}", path.display()))?;
            }
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .context("building the certificate verifier")?;
        let strict = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(verifier.clone())
            .with_no_client_auth();
        let lenient = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(verifier.clone())))
            .with_no_client_auth();
        Ok(Connectors {
            lenient: TlsConnector::from(Arc::new(lenient)),
            strict: TlsConnector::from(Arc::new(strict)),
            verifier,
        })
    }

    fn for_policy(&self, policy: Policy) -> &TlsConnector {
        match policy {
            Policy::Verify => &self.strict,
            _ => &self.lenient,
        }
    }

    /// Whether the certificate the peer showed is valid for `host`.
    fn verified(&self, host: &ServerName<'static>, certs: Option<&[CertificateDer<'_>]>) -> bool {
        let Some([end_entity, intermediates @ ..]) = certs else {
            return false;
        };
        self.verifier
            .verify_server_cert(end_entity, intermediates, host, &[], UnixTime::now())
            .is_ok()
    }
}

/// Accepts any certificate but still checks the handshake signatures, so the session is
/// encrypted to whoever holds the certificate's key. This is opportunistic TLS (RFC 7435).
#[derive(Debug)]
struct AnyCertificate(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyCertificate {
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

/// A connection's socket: plain TCP, then TLS after STARTTLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// An in-memory pipe instead of a socket (a fuzzer drives a whole session over it);
    /// STARTTLS is not possible on it.
    Memory(tokio::io::DuplexStream),
    /// Only while a handshake holds the socket, or after one failed.
    Gone,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Turns the plain socket into the server side of TLS.
    pub async fn accept(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let tcp = self.take_plain()?;
        let tls = acceptor.accept(tcp).await?;
        *self = Stream::Tls(Box::new(tls.into()));
        Ok(())
    }

    /// Turns the plain socket into the client side of TLS to `host`; returns whether the
    /// certificate was valid for it.
    pub async fn connect(
        &mut self,
        connectors: &Connectors,
        policy: Policy,
        host: &str,
    ) -> io::Result<bool> {
        let name = ServerName::try_from(host.trim_end_matches('.').to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = self.take_plain()?;
        let tls = connectors
            .for_policy(policy)
            .connect(name.clone(), tcp)
            .await?;
        let verified = connectors.verified(&name, tls.get_ref().1.peer_certificates());
        *self = Stream::Tls(Box::new(tls.into()));
        Ok(verified)
    }

    fn take_plain(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Stream::Gone) {
            Stream::Plain(tcp) => Ok(tcp),
            other => {
                *self = other;
                Err(io::Error::other("TLS is already on"))
            }
        }
    }

    /// The protocol and cipher, once TLS is on.
    pub fn info(&self, verified: bool) -> Option<TlsInfo> {
        let Stream::Tls(tls) = self else {
            return None;
        };
        let state = tls.get_ref().1;
        let version = match state.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        let cipher = state.negotiated_cipher_suite()?.suite();
        Some(TlsInfo {
            version,
            cipher: cipher.as_str().unwrap_or("unknown").to_string(),
            verified,
        })
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was lost in a TLS handshake",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        acceptor(None, None, dir.path(), "mx.test").unwrap();
        let (cert, key) = self_signed_paths(dir.path());
        let first = std::fs::read(&cert).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        acceptor(None, None, dir.path(), "mx.test").unwrap();
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            first,
            "not remade on restart"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = acceptor(Some(&missing), Some(&missing), dir.path(), "h")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("tls.cert"), "{e:#}");
        let e = acceptor(Some(&missing), None, dir.path(), "h")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("set both"), "{e:#}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let e = acceptor(Some(&garbage), Some(&garbage), dir.path(), "h")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("tls."), "{e:#}");
    }
}
