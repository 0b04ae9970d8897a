//! Signature check of signed command envelopes (`mqtt-api.md`: Signed commands).
//!
//! `{"v":1,"kid":"…","signed":"<base64url of the command's JSON bytes>","sig":"<base64url
//! ECDSA P-256 SHA-256, IEEE P1363 r‖s>"}`. base64url without padding; padded input is
//! accepted too. Verification is pure: keys come in, the command bytes come out.

use std::collections::HashMap;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{json, Value};

use super::command::{raw_echo, Rejection};
use super::error::ErrorCode;

/// base64url, padding optional on input.
const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The cloud's public keys by `kid`.
#[derive(Clone, Default)]
pub struct CommandKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl std::fmt::Debug for CommandKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl CommandKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Add a P-256 public key in PEM (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`).
    pub fn add_pem(&mut self, kid: &str, pem: &str) -> Result<(), String> {
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| format!("not a P-256 public key in PEM (SubjectPublicKeyInfo): {e}"))?;
        self.keys.insert(kid.to_string(), key);
        Ok(())
    }

    pub fn add(&mut self, kid: &str, key: VerifyingKey) {
        self.keys.insert(kid.to_string(), key);
    }
}

/// A verified envelope: the inner command bytes and the signature that covered them.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub command: Vec<u8>,
    pub kid: String,
    pub sig: String,
}

fn unauthorized(msg: impl Into<String>, payload: &[u8]) -> Rejection {
    // The id of an unverified command is not trusted: results carry "id": null.
    let mut r = Rejection::new(ErrorCode::Unauthorized, msg);
    r.raw = Some(raw_echo(payload));
    r
}

/// Verify an envelope against the configured keys.
pub fn open(payload: &[u8], keys: &CommandKeys) -> Result<Opened, Rejection> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| unauthorized(format!("not a signed envelope (invalid JSON: {e})"), payload))?;
    let field = |name: &str| -> Result<&str, Rejection> {
        v.get(name).and_then(Value::as_str).ok_or_else(|| {
            unauthorized(
                format!("not a signed envelope: field {name} missing (signed commands are required on this agent)"),
                payload,
            )
        })
    };
    if v.get("v").and_then(Value::as_u64) != Some(1) {
        return Err(unauthorized("not a signed envelope: field v must be 1", payload));
    }
    let kid = field("kid")?;
    let signed = field("signed")?;
    let sig_b64 = field("sig")?;
    let key =
        keys.keys.get(kid).ok_or_else(|| unauthorized(format!("unknown kid {kid:?}"), payload))?;
    let command = B64
        .decode(signed)
        .map_err(|e| unauthorized(format!("field signed: not base64url ({e})"), payload))?;
    let sig_bytes = B64
        .decode(sig_b64)
        .map_err(|e| unauthorized(format!("field sig: not base64url ({e})"), payload))?;
    let sig = Signature::from_slice(&sig_bytes)
        .map_err(|_| unauthorized("field sig: not a 64-byte P-256 r‖s signature", payload))?;
    key.verify(&command, &sig)
        .map_err(|_| unauthorized(format!("bad signature for kid {kid:?}"), payload))?;
    Ok(Opened { command, kid: kid.to_string(), sig: URL_SAFE_NO_PAD.encode(sig.to_bytes()) })
}

/// Sign command bytes into an envelope (for `posbridge sign`, the demo and tests).
pub fn seal(command: &[u8], kid: &str, key: &SigningKey) -> Value {
    let sig: Signature = key.sign(command);
    json!({
        "v": 1,
        "kid": kid,
        "signed": URL_SAFE_NO_PAD.encode(command),
        "sig": URL_SAFE_NO_PAD.encode(sig.to_bytes()),
    })
}

/// Read a P-256 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as
/// `openssl ecparam -name prime256v1 -genkey` writes).
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, String> {
    p256::SecretKey::from_pem(pem)
        .map(SigningKey::from)
        .map_err(|e| format!("not a P-256 private key in PEM: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::Generate;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    fn keys() -> (SigningKey, CommandKeys) {
        let sk = SigningKey::generate();
        let pem = sk.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem");
        let mut k = CommandKeys::default();
        k.add_pem("cloud-1", &pem).expect("add");
        (sk, k)
    }

    #[test]
    fn round_trip() {
        let (sk, k) = keys();
        let cmd = br#"{"v":1,"id":"a","op":"ping"}"#;
        let env = seal(cmd, "cloud-1", &sk).to_string();
        let o = open(env.as_bytes(), &k).expect("valid");
        assert_eq!(o.command, cmd);
        assert_eq!(o.kid, "cloud-1");
    }

    #[test]
    fn padded_base64_is_accepted() {
        let (sk, k) = keys();
        let cmd = br#"{"v":1,"id":"ab","op":"ping"}"#;
        let mut env = seal(cmd, "cloud-1", &sk);
        let padded = base64::engine::general_purpose::URL_SAFE.encode(cmd);
        assert!(padded.ends_with('='), "test needs a length that pads");
        env["signed"] = Value::String(padded);
        assert!(open(env.to_string().as_bytes(), &k).is_ok());
    }

    #[test]
    fn forged_unknown_kid_and_unsigned_are_unauthorized() {
        let (sk, k) = keys();
        let mut env = seal(br#"{"v":1,"id":"a","op":"ping"}"#, "cloud-1", &sk);
        env["signed"] = Value::String(URL_SAFE_NO_PAD.encode(br#"{"v":1,"id":"a","op":"refund"}"#));
        let r = open(env.to_string().as_bytes(), &k).expect_err("forged");
        assert_eq!(r.code, ErrorCode::Unauthorized);
        assert_eq!(r.id, None);

        let (other, _) = keys();
        let env = seal(br#"{"v":1,"id":"a","op":"ping"}"#, "cloud-1", &other);
        assert!(open(env.to_string().as_bytes(), &k).is_err(), "wrong key");
        let env = seal(br#"{"v":1,"id":"a","op":"ping"}"#, "cloud-9", &sk);
        assert!(open(env.to_string().as_bytes(), &k)
            .expect_err("kid")
            .message
            .contains("unknown kid"));
        let r = open(br#"{"v":1,"id":"a","op":"ping"}"#, &k).expect_err("unsigned");
        assert!(r.message.contains("signed"));
        assert!(open(b"not json", &k).is_err());
        let mut env = seal(b"{}", "cloud-1", &sk);
        env["sig"] = Value::String("AAAA".into());
        assert!(open(env.to_string().as_bytes(), &k)
            .expect_err("short sig")
            .message
            .contains("64-byte"));
    }

    #[test]
    fn sec1_and_pkcs8_private_keys_load() {
        use p256::pkcs8::EncodePrivateKey;
        let sk = SigningKey::generate();
        let secret = p256::SecretKey::from(&sk);
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
        assert!(signing_key_from_pem(&pkcs8).is_ok());
        let sec1 = secret.to_sec1_pem(LineEnding::LF).expect("sec1");
        assert!(signing_key_from_pem(&sec1).is_ok());
        assert!(signing_key_from_pem("garbage").is_err());
    }
}
