//! TLS for `mqtts://`: rustls with the `ring` provider (pure Rust, cross-friendly), the
//! system roots plus an optional extra CA file, and optional client certificate (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

fn certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{key}: cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{key}: {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key}: {} holds no certificate", path.display());
    }
    Ok(certs)
}

pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &files.ca_file {
        for cert in certs(ca, "mqtt.ca_file")? {
            roots.add(cert).map_err(|e| anyhow::anyhow!("mqtt.ca_file: {}: {e}", ca.display()))?;
        }
    }
    if roots.is_empty() {
        anyhow::bail!("mqtts: no trusted CA (no system roots found and mqtt.ca_file is not set)");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert, "mqtt.client_cert_file")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                anyhow::anyhow!(
                    "mqtt.client_key_file: {} is not a PEM private key: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| anyhow::anyhow!("mqtt.client_cert_file/client_key_file: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
