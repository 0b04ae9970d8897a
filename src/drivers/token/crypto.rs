//! Frame bodies (`token.md`: Frames): `AES-256-ECB-encrypt_PKCS7(zlib_compress(payload))`.
//!
//! ECB is what the device speaks, not a choice: the key and the challenge are fixed at
//! bootstrap, so this layer is obfuscation (docs/terminals/token.md). Nothing here is
//! hand-written cryptography: `aes` + `ecb` do the cipher, `flate2` the zlib stream.

use std::io::{Read, Write};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyInit};
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use zeroize::Zeroizing;

/// The key both sides start with (`token.md`: Handshake and keys, step 1).
pub const BOOTSTRAP_KEY: &[u8; 32] = b"01234567890123456789012345678901";

/// Largest payload a body may inflate to: bounds a zlib bomb.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

type Enc = ecb::Encryptor<aes::Aes256>;
type Dec = ecb::Decryptor<aes::Aes256>;

/// An AES-256 session key. The device's keys are 32 ASCII bytes (digits after the switch).
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    pub fn new(bytes: [u8; 32]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    pub fn bootstrap() -> Key {
        Key::new(*BOOTSTRAP_KEY)
    }

    /// A key as sent in a type 6 payload: exactly 32 ASCII digits.
    pub fn from_digits(s: &[u8]) -> Option<Key> {
        let arr: [u8; 32] = s.try_into().ok()?;
        arr.iter().all(u8::is_ascii_digit).then(|| Key::new(arr))
    }

    /// A fresh key of 32 digits from the OS CSPRNG (the vendor library uses a
    /// 32-bit-seeded PRNG here; `token.md`: step 4).
    pub fn generate() -> std::io::Result<Key> {
        use rand::TryRngCore;
        let mut out = [0u8; 32];
        let mut filled = 0;
        let mut buf = Zeroizing::new([0u8; 64]);
        while filled < out.len() {
            rand::rngs::OsRng.try_fill_bytes(&mut buf[..]).map_err(std::io::Error::other)?;
            for b in buf.iter() {
                // Rejection sampling: 250 is the largest multiple of 10 below 256.
                if *b < 250 && filled < out.len() {
                    out[filled] = b'0' + b % 10;
                    filled += 1;
                }
            }
        }
        Ok(Key::new(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body does not decrypt (length {0} is not whole AES blocks or bad padding)")]
    Undecryptable(usize),
    #[error("body does not decompress: {0}")]
    Undecompressible(String),
    #[error("body inflates past {MAX_PAYLOAD} bytes")]
    TooLarge,
}

/// `payload` → frame body.
pub fn seal(key: &Key, payload: &[u8]) -> Vec<u8> {
    let mut z =
        ZlibEncoder::new(Vec::with_capacity(payload.len() / 2 + 16), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = z.write_all(payload);
    let compressed = z.finish().unwrap_or_default();
    Enc::new(key.as_bytes().into()).encrypt_padded_vec_mut::<Pkcs7>(&compressed)
}

/// Frame body → payload.
pub fn open(key: &Key, body: &[u8]) -> Result<Vec<u8>, BodyError> {
    let compressed = Dec::new(key.as_bytes().into())
        .decrypt_padded_vec_mut::<Pkcs7>(body)
        .map_err(|_| BodyError::Undecryptable(body.len()))?;
    let mut out = Vec::new();
    ZlibDecoder::new(&compressed[..])
        .take(MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Undecompressible(e.to_string()))?;
    if out.len() > MAX_PAYLOAD {
        return Err(BodyError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_payload_is_one_block() {
        // token.md: an empty payload is 8 zlib bytes, padded to one 16-byte block.
        let body = seal(&Key::bootstrap(), b"");
        assert_eq!(body.len(), 16);
        assert_eq!(open(&Key::bootstrap(), &body).expect("opens"), b"");
        assert_eq!(seal(&Key::bootstrap(), b"OK").len(), 16);
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let k = Key::generate().expect("os rng");
        let body = seal(&k, b"{\"a\":1}");
        assert_eq!(open(&k, &body).expect("opens"), b"{\"a\":1}");
        assert!(open(&Key::bootstrap(), &body).is_err());
    }

    #[test]
    fn generated_keys_are_digits_and_differ() {
        let a = Key::generate().expect("rng");
        let b = Key::generate().expect("rng");
        assert!(a.as_bytes().iter().all(u8::is_ascii_digit));
        assert_ne!(a, b);
        assert!(Key::from_digits(a.as_bytes()).is_some());
        assert!(Key::from_digits(b"0123").is_none());
        assert!(Key::from_digits(&[b'a'; 32]).is_none());
    }

    #[test]
    fn bad_ciphertext_and_bad_zlib_are_typed() {
        let k = Key::bootstrap();
        assert_eq!(open(&k, &[0u8; 15]), Err(BodyError::Undecryptable(15)));
        // Valid AES + padding around bytes that are not a zlib stream.
        let not_zlib = Enc::new(k.as_bytes().into()).encrypt_padded_vec_mut::<Pkcs7>(b"hello");
        assert!(matches!(open(&k, &not_zlib), Err(BodyError::Undecompressible(_))));
    }

    #[test]
    fn zlib_bomb_is_bounded() {
        let big = vec![b'0'; MAX_PAYLOAD + 10];
        let body = seal(&Key::bootstrap(), &big);
        assert!(body.len() < 64 * 1024);
        assert_eq!(open(&Key::bootstrap(), &body), Err(BodyError::TooLarge));
    }
}
