//! The Token codec figure: encode (compress + encrypt + frame) and decode of a 2 KiB
//! basket, against zlib and AES-256-ECB alone on the same bytes.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use crate::{pct, Figure, Report};

/// A Token basket message of about 2 KiB, shaped like the driver's (items, prices, VAT).
fn basket_2k() -> Vec<u8> {
    let mut items = Vec::new();
    for i in 0u64.. {
        items.push(json!({
            "itemName": format!("Article {i} — sample goods"),
            "itemCodeType": 1, "itemCode": format!("{:013}", 4_600_000_000_000u64 + i),
            "itemQuantityType": 0, "itemQuantity": 1000 + i, "itemPrice": 1_250 + 17 * i,
            "itemSum": 1_250 + 17 * i, "itemVatPercent": 18.0,
        }));
        let v = json!({"cashier": "bench", "currency": "AZN", "items": items, "sum": 99_999});
        let s = serde_json::to_vec(&v).unwrap_or_default();
        if s.len() >= 2048 {
            return s;
        }
    }
    Vec::new()
}

/// Median ns of `f` over `n` runs (after a warm-up of n/10).
fn median_ns(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 + 1 {
        f();
    }
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    pct(&mut v, 0.5)
}

/// Token codec: encode (compress + encrypt + frame) and decode of a 2 KiB basket, against
/// zlib and AES-256-ECB alone on the same bytes (what the codec cannot go below).
pub(crate) fn bench_codec(n: usize, out: &mut Report) -> Result<()> {
    use aes::cipher::{BlockEncryptMut, KeyInit};
    use bytes::BytesMut;
    use posbridge::drivers::token::codec::{ty, Inbound, Message, TokenCodec};
    use posbridge::drivers::token::crypto::Key;
    use std::hint::black_box;
    use std::io::Read;
    use tokio_util::codec::{Decoder, Encoder};

    let payload = basket_2k();
    let msg = Message::new(ty::BASKET, payload.clone());
    let mut enc = TokenCodec::new(Key::bootstrap());
    let mut wire = BytesMut::new();
    enc.encode(&msg, &mut wire)?;
    let mut dec = TokenCodec::new(Key::bootstrap());
    match dec.decode(&mut wire.clone())? {
        Some(Inbound::Message(m)) if m.payload == payload => {}
        _ => bail!("the codec does not round-trip the bench basket"),
    }
    let encode = median_ns(n, || {
        let mut dst = BytesMut::with_capacity(4096);
        let _ = enc.encode(black_box(&msg), &mut dst);
        black_box(dst);
    });
    let decode = median_ns(n, || {
        let mut src = wire.clone();
        black_box(dec.decode(&mut src).ok());
    });
    let zlib_c = median_ns(n, || {
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(2048),
            flate2::Compression::default(),
        );
        let _ = z.write_all(black_box(&payload));
        black_box(z.finish().ok());
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&payload)?;
    let compressed = z.finish()?;
    let zlib_d = median_ns(n, || {
        let mut out = Vec::with_capacity(4096);
        let _ = flate2::read::ZlibDecoder::new(black_box(&compressed[..])).read_to_end(&mut out);
        black_box(out);
    });
    let key = Key::bootstrap();
    let aes = median_ns(n, || {
        black_box(
            ecb::Encryptor::<aes::Aes256>::new(key.as_bytes().into())
                .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(black_box(&payload)),
        );
    });
    // Decrypting the compressed body costs at most what encrypting the plain one does.
    let value = encode + decode;
    let limit = zlib_c + zlib_d + 2.0 * aes;
    let mbps = |ns: f64| payload.len() as f64 / ns * 1e3;
    println!(
        "codec: 2 KiB basket: encode {:.1} µs ({:.0} MB/s), decode {:.1} µs ({:.0} MB/s); alone: zlib compress {:.1} µs, inflate {:.1} µs, AES-256-ECB {:.1} µs ({:.0} MB/s)",
        encode / 1e3, mbps(encode), decode / 1e3, mbps(decode), zlib_c / 1e3, zlib_d / 1e3, aes / 1e3, mbps(aes)
    );
    out.figs.push(Figure {
        name: "token codec enc+dec 2 KiB".into(),
        value: value / 1e3,
        unit: "µs",
        limit: limit / 1e3,
        ratio: value / limit,
        goal: "report (zlib+AES alone)".into(),
        met: true,
    });
    out.json["codec"] = json!({
        "payload_bytes": payload.len(), "encode_ns": encode, "decode_ns": decode,
        "encode_mb_s": mbps(encode), "decode_mb_s": mbps(decode),
        "zlib_compress_ns": zlib_c, "zlib_inflate_ns": zlib_d, "aes_ecb_encrypt_ns": aes,
        "ratio": value / limit,
    });
    Ok(())
}
