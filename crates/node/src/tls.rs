//! TLS on the node's listener: its certificate and key, and optionally the
//! authority that must have signed clients' certificates.
//!
//! The files are read at start (a node whose files are missing or invalid
//! does not start) and again whenever one of them changes (their modification
//! times are checked at most once a second, when a connection arrives), so a
//! renewed certificate takes effect without a restart. A reload that fails
//! keeps the previous certificate and says why in the log; connections
//! already open keep the certificate they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::NodeError;

/// Where the node's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the node's certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM file of the certificate's private key.
    pub key_file: PathBuf,
    /// PEM file of the authorities that sign client certificates. With it,
    /// every client must present a certificate signed by one of them.
    pub client_ca_file: Option<PathBuf>,
}

/// How often the files' modification times are checked.
const RELOAD_CHECK_MS: u64 = 1000;

/// The node's TLS configuration, reloaded when its files change.
pub(crate) struct TlsServer {
    files: TlsConfig,
    state: Mutex<Loaded>,
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading {what} {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certificates)
}

fn build(files: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let provider = pagoda_wire::tls::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(ca_file, "client CA file")? {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "client CA file {}: a certificate is not usable as a trust anchor: {e}",
                        ca_file.display()
                    )
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("client CA file {}: {e}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = certificates(&files.cert_file, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("reading key file {}: {e}", files.key_file.display()))?;
    builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "certificate {} and key {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })
}

fn stamps(files: &TlsConfig) -> Vec<Option<SystemTime>> {
    std::iter::once(&files.cert_file)
        .chain(std::iter::once(&files.key_file))
        .chain(files.client_ca_file.iter())
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

impl TlsServer {
    /// Reads the files; an error names the file and what is wrong with it.
    pub(crate) fn load(files: &TlsConfig) -> Result<TlsServer, NodeError> {
        let stamps = stamps(files);
        let config = build(files).map_err(NodeError::Config)?;
        Ok(TlsServer {
            files: files.clone(),
            state: Mutex::new(Loaded {
                config: Arc::new(config),
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection, re-read first if a file
    /// changed since it was last read.
    pub(crate) fn current(&self) -> Arc<rustls::ServerConfig> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= Duration::from_millis(RELOAD_CHECK_MS) {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                state.stamps = now;
                match build(&self.files) {
                    Ok(config) => {
                        state.config = Arc::new(config);
                        tracing::info!(
                            cert_file = %self.files.cert_file.display(),
                            "TLS certificate reloaded"
                        );
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        "TLS files changed but could not be loaded; keeping the previous ones"
                    ),
                }
            }
        }
        state.config.clone()
    }
}
