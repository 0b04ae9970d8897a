//! Who the simulated register is: its P-384 device certificate and signing key
//! ([`DeviceIdentity`], self-signed or issued by a [`TestCa`] for strict-mode tests) and
//! the type 5 answer to the host's hello (certificate plus signature over the challenge).

use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    PKCS_ECDSA_P384_SHA384,
};
use serde_json::json;

use crate::drivers::token::cert::CHALLENGE;

/// A CA for strict-mode tests (stands in for Kamu SM OKC-S2).
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn generate(name: &str) -> Result<TestCa, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "TR");
        dn.push(DnType::OrganizationName, "posbridge test");
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key)?;
        Ok(TestCa { cert, key })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// The device's certificate and signing key.
pub struct DeviceIdentity {
    pub cert_pem: String,
    signing: SigningKey,
}

impl DeviceIdentity {
    /// `subject C=TR, O=TOKEN, serialNumber=<serial>` (as on real devices), self-signed or
    /// issued by `ca`.
    pub fn generate(serial: &str, ca: Option<&TestCa>) -> anyhow::Result<DeviceIdentity> {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "TR");
        dn.push(DnType::OrganizationName, "TOKEN");
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial);
        p.distinguished_name = dn;
        let cert = match ca {
            Some(ca) => p.signed_by(&kp, &ca.cert, &ca.key)?,
            None => p.self_signed(&kp)?,
        };
        let signing = SigningKey::from_pkcs8_der(kp.serialized_der())
            .map_err(|e| anyhow::anyhow!("device key: {e}"))?;
        Ok(DeviceIdentity { cert_pem: cert.pem(), signing })
    }

    /// The type 5 payload: certificate + raw r‖s over the challenge, hex.
    pub(super) fn type5(&self, corrupt: bool) -> String {
        let sig: Signature = self.signing.sign(CHALLENGE);
        let mut raw = sig.to_bytes().to_vec();
        if corrupt {
            raw[10] ^= 0x55;
        }
        json!({ "certificate": self.cert_pem, "sign": hex::encode(raw) }).to_string()
    }
}
