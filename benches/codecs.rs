//! Codec benches: Token frame encode/decode of a 2 KiB basket (with zlib and AES-256-ECB
//! alone as the limit), and command parse + validate.
//! `cargo bench --bench codecs`

use std::hint::black_box;
use std::io::{Read, Write};

use aes::cipher::{BlockEncryptMut, KeyInit};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posbridge::drivers::token::codec::{
    put_frame, take_frame, ty, Inbound, Message, TokenCodec, TYPE_END, TYPE_START,
};
use posbridge::drivers::token::crypto::{self, Key};
use tokio_util::codec::{Decoder, Encoder};

/// A basket message of about 2 KiB, shaped like the driver's (items, prices, VAT).
pub fn basket_2k() -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(serde_json::json!({
            "itemName": format!("Article {i} — sample goods"),
            "itemCodeType": 1, "itemCode": format!("{:013}", 4_600_000_000_000u64 + i),
            "itemQuantityType": 0, "itemQuantity": 1000 + i, "itemPrice": 1_250 + 17 * i,
            "itemSum": 1_250 + 17 * i, "itemVatPercent": 18.0,
        }));
        let v = serde_json::json!({"cashier": "bench", "currency": "AZN", "items": items, "sum": 99_999});
        let s = serde_json::to_vec(&v).unwrap_or_default();
        if s.len() >= 2048 {
            return s;
        }
        i += 1;
    }
}

fn token(c: &mut Criterion) {
    let payload = basket_2k();
    let msg = Message::new(ty::BASKET, payload.clone());
    let mut g = c.benchmark_group("token_2k_basket");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    let mut enc = TokenCodec::new(Key::bootstrap());
    // Made before any timing: what is live on the heap changes how glibc trims and
    // re-faults zlib's ~270 KiB per-encoder state (measured: the same code ran 24 µs or
    // 320 µs depending on it). Every case below runs with the same live allocations.
    let mut wire = BytesMut::new();
    let _ = enc.encode(&msg, &mut wire);
    g.bench_function("encode (compress+encrypt+frame, 3 frames)", |b| {
        b.iter(|| {
            let mut dst = BytesMut::with_capacity(4096);
            let _ = enc.encode(black_box(&msg), &mut dst);
            dst
        })
    });
    g.bench_function("decode (frames+decrypt+inflate)", |b| {
        let mut dec = TokenCodec::new(Key::bootstrap());
        b.iter(|| {
            let mut src = wire.clone();
            match dec.decode(&mut src) {
                Ok(Some(Inbound::Message(m))) => m,
                _ => panic!("bench frame does not decode"),
            }
        })
    });
    // Before the empty-frame cache: every start/end frame sealed and opened through zlib.
    let key = Key::bootstrap();
    g.bench_function("encode, unoptimised path (seal per frame)", |b| {
        b.iter(|| {
            let mut dst = BytesMut::with_capacity(4096);
            put_frame(&mut dst, TYPE_START, &crypto::seal(&key, b""));
            put_frame(&mut dst, ty::BASKET, &crypto::seal(&key, black_box(&payload)));
            put_frame(&mut dst, TYPE_END, &crypto::seal(&key, b""));
            dst
        })
    });
    g.bench_function("decode, unoptimised path (open per frame)", |b| {
        b.iter(|| {
            let mut src = wire.clone();
            let mut out = Vec::new();
            while let Ok(Some(f)) = take_frame(&mut src) {
                out = crypto::open(&key, &f.body).unwrap_or_default();
            }
            out
        })
    });
    // The limits: zlib alone and AES-256-ECB alone on the same bytes.
    g.bench_function("limit: zlib compress alone", |b| {
        b.iter(|| {
            let mut z = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(2048),
                flate2::Compression::default(),
            );
            let _ = z.write_all(black_box(&payload));
            z.finish().unwrap_or_default()
        })
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(&payload);
    let compressed = z.finish().unwrap_or_default();
    g.bench_function("limit: zlib inflate alone", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(4096);
            let _ =
                flate2::read::ZlibDecoder::new(black_box(&compressed[..])).read_to_end(&mut out);
            out
        })
    });
    g.bench_function("limit: AES-256-ECB encrypt alone (2 KiB)", |b| {
        let key = Key::bootstrap();
        b.iter(|| {
            ecb::Encryptor::<aes::Aes256>::new(key.as_bytes().into())
                .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(black_box(&payload))
        })
    });
    g.finish();
}

fn command(c: &mut Criterion) {
    let cmd = serde_json::json!({"v":1,"id":"pay-0001-abcdef","op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN",
        "reference":"order-42","expires_at":"2099-01-01T00:00:00Z"}).to_string().into_bytes();
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse+validate payment", |b| {
        b.iter(|| posbridge::api::parse_command(black_box(&cmd), 65536))
    });
    let bad = br#"{"v":1,"id":"x","op":"payment","terminal":"ip-1","amount":-5,"currency":"AZN"}"#;
    g.bench_function("parse+reject bad amount", |b| {
        b.iter(|| posbridge::api::parse_command(black_box(bad), 65536))
    });
    g.finish();
}

criterion_group!(benches, token, command);
criterion_main!(benches);
