//! The HTTP client for one Kaspi terminal, per TLS mode (`kaspi.md`: Model; config.md):
//! - `verify`: system roots plus `ca_file`; with `tls_name`, an IP-addressed terminal is
//!   reached at its IP while its certificate is checked against `tls_name`
//!   (`ClientBuilder::resolve`);
//! - `pin`: the leaf certificate's SHA-256 must equal `pin_sha256` (name and chain are
//!   not checked; the handshake signature still is, so the peer holds the pinned key);
//! - `insecure`: no check at all, only when configured, warned in logs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::{KaspiTerminal, TlsMode};

/// A ready client and the base URL (`…/v2`) to call.
pub struct Endpoint {
    pub http: reqwest::Client,
    pub base: String,
}

pub fn build(id: &str, cfg: &KaspiTerminal) -> Result<Endpoint, String> {
    let mut url = reqwest::Url::parse(&cfg.url).map_err(|e| format!("url {:?}: {e}", cfg.url))?;
    let https = url.scheme() == "https";
    let mut b = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .connect_timeout(cfg.request_timeout.min(std::time::Duration::from_secs(5)))
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        // The access token travels in a header: never to wherever a redirect points, and
        // never through a proxy the environment happens to name.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("posbridge/", env!("CARGO_PKG_VERSION")));
    let ip: Option<IpAddr> =
        url.host_str().and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse().ok());
    if let (true, Some(name), Some(ip)) = (https, cfg.tls_name.as_deref(), ip) {
        // Connect to the IP, but present and verify the terminal's DNS name.
        let port = url.port_or_known_default().unwrap_or(8080);
        url.set_host(Some(name)).map_err(|e| format!("tls_name {name:?}: {e}"))?;
        b = b.resolve(name, SocketAddr::new(ip, port));
    } else if let (Some(name), None) = (cfg.tls_name.as_deref(), ip) {
        if url.host_str() != Some(name) {
            tracing::warn!(terminal = id, tls_name = name, "tls_name is used only when url holds an IP address; the certificate is checked against the url's host name");
        }
    }
    if https {
        match cfg.tls {
            TlsMode::Verify => {
                if let Some(path) = &cfg.ca_file {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                    if certs.is_empty() {
                        return Err(format!(
                            "ca_file {}: no PEM certificate in it",
                            path.display()
                        ));
                    }
                    for c in certs {
                        b = b.add_root_certificate(c);
                    }
                }
                if ip.is_some() && cfg.tls_name.is_none() {
                    tracing::warn!(terminal = id, "tls = \"verify\" with an IP address and no tls_name: the terminal's *.kaspiros.kz certificate cannot match; set tls_name (e.g. \"pos1.kaspiros.kz\")");
                }
            }
            TlsMode::Pin => {
                let pin = cfg.pin_sha256.as_deref().ok_or("tls = \"pin\" needs pin_sha256")?;
                b = b.use_preconfigured_tls(pinned_config(pin)?);
            }
            TlsMode::Insecure => {
                tracing::warn!(terminal = id, "tls = \"insecure\": the terminal's certificate is NOT checked; anyone on the LAN can impersonate it. Use tls_name + verify, or pin");
                b = b.danger_accept_invalid_certs(true);
            }
        }
    }
    let http = b.build().map_err(|e| format!("building the HTTP client: {}", chain(&e)))?;
    let base = format!("{}/v2", url.as_str().trim_end_matches('/'));
    Ok(Endpoint { http, base })
}

use crate::drivers::http::error_chain as chain;

pub fn pinned_config(pin_hex: &str) -> Result<rustls::ClientConfig, String> {
    let pin = hex::decode(pin_hex.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or("pin_sha256 must be 64 hex digits")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinVerifier { pin, algs: provider.signature_verification_algorithms };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    /// Pure check of a leaf certificate against the pin.
    pub fn check(&self, end_entity: &[u8]) -> Result<(), String> {
        let got = Sha256::digest(end_entity);
        if got.as_slice() == self.pin {
            Ok(())
        } else {
            Err(format!(
                "certificate pin mismatch: the terminal presented sha256 {} but pin_sha256 is {} (was the terminal replaced or its certificate renewed? re-check and update pin_sha256)",
                hex::encode(got),
                hex::encode(self.pin)
            ))
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self, end_entity: &CertificateDer<'_>, _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>, _ocsp_response: &[u8], _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity.as_ref())
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_check_compares_the_der_hash() {
        let der = b"not really a certificate";
        let pin = hex::encode(Sha256::digest(der));
        let v = PinVerifier {
            pin: <[u8; 32]>::try_from(hex::decode(&pin).expect("hex")).expect("32"),
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        assert!(v.check(der).is_ok());
        let e = v.check(b"another certificate").expect_err("mismatch");
        assert!(e.contains("pin mismatch") && e.contains(&pin), "{e}");
        assert!(pinned_config(&pin).is_ok());
        assert!(pinned_config("abc").is_err());
    }
}
