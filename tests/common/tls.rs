//! MQTT over TLS for the black-box tests: a CA, a server certificate for 127.0.0.1 and a
//! client certificate made by the test, a mosquitto that requires both and a password.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

use super::{free_port, mosquitto_available, Mosquitto};

pub struct Pki {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

/// Where mosquitto is installed, a new PKI and a free port for a TLS listener; `None`
/// where the test cannot run.
pub fn pki_and_port() -> Option<(Pki, u16)> {
    mosquitto_available().then(|| (pki(), free_port()))
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "posbridge test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");

    let server_key = KeyPair::generate().expect("server key");
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server = sp.signed_by(&server_key, &ca_cert, &ca_key).expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("client params");
    cp.distinguished_name.push(DnType::CommonName, "posbridge-shop-tls");
    let client = cp.signed_by(&client_key, &ca_cert, &ca_key).expect("client cert");
    Pki {
        ca_pem: ca_cert.pem(),
        server_pem: server.pem(),
        server_key: server_key.serialize_pem(),
        client_pem: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

impl Pki {
    /// A mosquitto with a TLS listener on `tls_port` (besides its plain loopback one) that
    /// requires a client certificate from this CA and `user`'s `password`.
    pub fn mosquitto(&self, tls_port: u16, user: &str, password: &str) -> Mosquitto {
        Mosquitto::start_with(|d| {
            std::fs::write(d.join("ca.pem"), &self.ca_pem).expect("ca");
            std::fs::write(d.join("server.pem"), &self.server_pem).expect("srv");
            std::fs::write(d.join("server.key"), &self.server_key).expect("srv key");
            let st = std::process::Command::new("mosquitto_passwd")
                .args(["-b", "-c"])
                .arg(d.join("passwd"))
                .args([user, password])
                .status()
                .expect("mosquitto_passwd");
            assert!(st.success());
            format!(
                "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n",
                d = d.display()
            )
        })
    }

    /// The agent's side in `d`: `ca.pem`, `client.pem` and `client.key` (mode 0600).
    pub fn write_client_files(&self, d: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(d.join("ca.pem"), &self.ca_pem).expect("ca");
        std::fs::write(d.join("client.pem"), &self.client_pem).expect("client");
        std::fs::write(d.join("client.key"), &self.client_key).expect("client key");
        std::fs::set_permissions(d.join("client.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
}

/// A CA certificate that signed nothing here.
pub fn pki_ca_only() -> String {
    let key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.self_signed(&key).expect("ca").pem()
}
