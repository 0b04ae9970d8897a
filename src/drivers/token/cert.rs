//! The device's identity proof (`token.md`: Handshake step 3): an X.509 certificate with
//! an ECDSA P-384 key, and `sign` = raw r‖s (96 bytes, hex) over the fixed challenge.
//! Strict mode adds what the vendor omits: the chain to a configured CA, and the
//! certificate's `serialNumber` against the fiscal number the device reports.

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};
use x509_parser::oid_registry::OID_X509_SERIALNUMBER;
use x509_parser::pem::Pem;
use x509_parser::prelude::X509Certificate;

/// The fixed challenge of the hello message.
pub const CHALLENGE: &[u8] = b"asdfg";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate payload is not JSON with certificate and sign: {0}")]
    Payload(String),
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate key is not an ECDSA P-384 key: {0}")]
    Key(String),
    #[error("sign is not 96 bytes of hex (raw r‖s): {0}")]
    SignFormat(String),
    #[error("the signature over the challenge does not verify with the certificate's key")]
    BadSignature,
    #[error("certificate chain: {0}")]
    Chain(String),
}

/// What the handshake learned from a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// The subject's `serialNumber` attribute (e.g. `AV0000000507`), if any.
    pub serial_number: Option<String>,
    pub subject: String,
    pub issuer: String,
    /// All certificates the device sent, DER, leaf first.
    pub der: Vec<Vec<u8>>,
}

#[derive(serde::Deserialize)]
struct Type5 {
    certificate: String,
    sign: String,
}

fn pems(data: &[u8]) -> Result<Vec<Pem>, CertError> {
    let mut out = vec![];
    for p in Pem::iter_from_buffer(data) {
        out.push(p.map_err(|e| CertError::Parse(e.to_string()))?);
    }
    if out.is_empty() {
        return Err(CertError::Parse("no PEM certificate found".into()));
    }
    Ok(out)
}

fn parse(p: &Pem) -> Result<X509Certificate<'_>, CertError> {
    p.parse_x509().map_err(|e| CertError::Parse(e.to_string()))
}

fn serial_number(c: &X509Certificate<'_>) -> Option<String> {
    c.subject()
        .iter_by_oid(&OID_X509_SERIALNUMBER)
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
}

/// Verify a type 5 payload: the certificate parses, holds a P-384 key, and `sign`
/// verifies (ECDSA P-384 / SHA-384) over `asdfg`. Failure means "no further
/// communication" (the seed).
pub fn verify_type5(payload: &[u8]) -> Result<DeviceCert, CertError> {
    let t5: Type5 =
        serde_json::from_slice(payload).map_err(|e| CertError::Payload(e.to_string()))?;
    let pems = pems(t5.certificate.as_bytes())?;
    let leaf = parse(&pems[0])?;
    let point = &leaf.public_key().subject_public_key.data;
    let key = VerifyingKey::from_sec1_bytes(point).map_err(|e| CertError::Key(e.to_string()))?;
    let raw = hex::decode(t5.sign.trim()).map_err(|e| CertError::SignFormat(e.to_string()))?;
    if raw.len() != 96 {
        return Err(CertError::SignFormat(format!("{} bytes", raw.len())));
    }
    let sig = Signature::from_slice(&raw).map_err(|e| CertError::SignFormat(e.to_string()))?;
    key.verify(CHALLENGE, &sig).map_err(|_| CertError::BadSignature)?;
    Ok(DeviceCert {
        serial_number: serial_number(&leaf),
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        der: pems.iter().map(|p| p.contents.clone()).collect(),
    })
}

/// Strict mode: the leaf (with any intermediates the device sent) chains to a
/// certificate in `ca_pem`, every link's signature verifies, and every certificate on
/// the path is within its validity period. A certificate from the CA file is trusted
/// as an anchor wherever it sits in the real hierarchy (the operator chose it).
pub fn verify_chain(cert: &DeviceCert, ca_pem: &[u8]) -> Result<(), CertError> {
    let anchors_pem = pems(ca_pem).map_err(|e| CertError::Chain(format!("CA file: {e}")))?;
    let mut anchors = vec![];
    for p in &anchors_pem {
        anchors.push(parse(p).map_err(|e| CertError::Chain(format!("CA file: {e}")))?);
    }
    let mut sent = vec![];
    for der in &cert.der {
        let (_, c) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Chain(e.to_string()))?;
        sent.push(c);
    }
    let Some(mut current) = sent.first().cloned() else {
        return Err(CertError::Chain("no certificate".into()));
    };
    // Bounded walk: leaf → intermediates the device sent → an anchor.
    for _ in 0..=sent.len() {
        if !current.validity().is_valid() {
            return Err(CertError::Chain(format!(
                "{} is outside its validity period",
                current.subject()
            )));
        }
        let signed_by = |issuer: &X509Certificate<'_>| {
            issuer.subject() == current.issuer()
                && issuer.validity().is_valid()
                && current.verify_signature(Some(issuer.public_key())).is_ok()
        };
        if anchors.iter().any(signed_by) {
            return Ok(());
        }
        match sent.iter().skip(1).find(|c| c.is_ca() && signed_by(c)) {
            Some(next) => current = next.clone(),
            None => break,
        }
    }
    Err(CertError::Chain(format!(
        "{} (issuer {}) does not chain to the configured CA",
        cert.subject, cert.issuer
    )))
}
