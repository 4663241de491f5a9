//! TLS for the replication connection (`sslmode`), libpq style: SSLRequest, then a rustls
//! handshake. `require` and `prefer` encrypt without checking the certificate (as libpq does
//! without a root certificate); `verify-ca` checks the chain against `sslrootcert`;
//! `verify-full` checks the chain and that the certificate names the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conninfo::{ConnParams, SslMode};
use crate::error::{Error, ErrorKind, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts any certificate but still checks the handshake signatures (encryption without
/// authentication of the server, like libpq's `require`).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        e: &CertificateDer<'_>,
        i: &[CertificateDer<'_>],
        n: &ServerName<'_>,
        o: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(e, i, n, o, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn root_cert_path(p: &ConnParams) -> Option<PathBuf> {
    p.sslrootcert
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql/root.crt")))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::new(ErrorKind::Config, format!("cannot read root certificate file {}: {e}", path.display()))
                .hint("set sslrootcert= in --pg or PGSSLROOTCERT to the CA certificate (PEM) that signed the server's certificate")
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{} holds no usable certificate", path.display()),
        ));
    }
    Ok(roots)
}

fn client_config(p: &ConnParams) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("TLS setup failed: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match p.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = root_cert_path(p).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("sslmode {} needs a root certificate", mode_name(p.sslmode)),
                )
            })?;
            let roots = load_roots(&path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("cannot use root certificates from {}: {e}", path.display()),
                        )
                    })?;
            if p.sslmode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
        _ => Arc::new(EncryptOnly(provider)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The libpq name of a mode.
pub fn mode_name(m: SslMode) -> &'static str {
    match m {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// Result of the TLS negotiation.
pub enum Negotiated<S> {
    /// The server declined TLS (allowed by the mode): go on in clear on the same stream.
    Plain(S),
    /// TLS established.
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

/// Sends SSLRequest and, if the server agrees, performs the TLS handshake.
///
/// # Errors
/// `Database` if TLS is required and the server refuses it or the handshake (certificate
/// check included) fails; `Config` for unusable root certificates.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    p: &ConnParams,
) -> Result<Negotiated<S>> {
    let what = p.describe();
    let io_err = |e: std::io::Error| {
        Error::new(
            ErrorKind::Database,
            format!("{what}: TLS negotiation failed: {e}"),
        )
    };
    let config = client_config(p)?;
    let mut req = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut req);
    stream.write_all(&req).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(io_err)?;
    match answer[0] {
        b'S' => {}
        b'N' if p.sslmode == SslMode::Prefer => return Ok(Negotiated::Plain(stream)),
        b'N' => {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "{what}: the server does not accept TLS, but sslmode={} requires it",
                    mode_name(p.sslmode)
                ),
            )
            .hint("turn ssl on in postgresql.conf, or relax sslmode"));
        }
        other => {
            return Err(Error::new(
                ErrorKind::Database,
                format!("{what}: unexpected answer {other:#04x} to SSLRequest"),
            ))
        }
    }
    let name = ServerName::try_from(p.host.clone()).map_err(|e| {
        Error::new(
            ErrorKind::Usage,
            format!("host {:?} is not a valid TLS server name: {e}", p.host),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector.connect(name, stream).await.map_err(|e| {
        Error::new(ErrorKind::Database, format!("{what}: TLS handshake failed: {e}"))
            .hint("check sslrootcert (the CA that signed the server certificate) and that the certificate names the host you connect to")
    })?;
    Ok(Negotiated::Tls(Box::new(tls)))
}
