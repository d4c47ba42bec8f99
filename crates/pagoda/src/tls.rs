//! TLS settings of a client, and the rustls configuration built from them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::ClientError;

/// How a client speaks TLS to a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the certificate authorities trusted to sign the node's
    /// certificate.
    pub ca_file: PathBuf,
    /// PEM file of this client's certificate chain, for a node that requires
    /// client certificates (`pagoda node --tls-ca`); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name the node's certificate must carry. Default: the node's IP
    /// address (the command line passes the host name it was given).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Trusts the authorities in `ca_file`, with no client certificate.
    pub fn with_ca(ca_file: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca_file: ca_file.into(),
            ..TlsOptions::default()
        }
    }
}

fn invalid(message: String) -> ClientError {
    ClientError::InvalidArgument(message)
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("reading {what} {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(invalid(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// The rustls configuration for `options`, reading its files.
pub(crate) fn client_config(
    options: &TlsOptions,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(&options.ca_file, "CA file")? {
        roots.add(certificate).map_err(|e| {
            invalid(format!(
                "CA file {}: a certificate is not usable as a trust anchor: {e}",
                options.ca_file.display()
            ))
        })?;
    }
    let provider = pagoda_wire::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (&options.cert_file, &options.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let chain = certificates(cert_file, "client certificate file")?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                invalid(format!(
                    "reading client key file {}: {e}",
                    key_file.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("the client certificate and key: {e}")))?
        }
        _ => {
            return Err(invalid(
                "a client certificate needs both a certificate file and a key file".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// The name the node's certificate is checked against.
pub(crate) fn server_name(
    options: &TlsOptions,
    peer: SocketAddr,
) -> Result<ServerName<'static>, ClientError> {
    match &options.server_name {
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|e| invalid(format!("TLS server name {name:?}: {e}"))),
        None => Ok(ServerName::IpAddress(peer.ip().into())),
    }
}
