use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::drivers::token::crypto::{seal, Key};

fn encode(c: &mut TokenCodec, m: &Message) -> BytesMut {
    let mut b = BytesMut::new();
    c.encode(m, &mut b).expect("encode");
    b
}

fn decode_all(c: &mut TokenCodec, bytes: &[u8]) -> Vec<Inbound> {
    let mut buf = BytesMut::from(bytes);
    let mut out = vec![];
    while let Some(i) = c.decode(&mut buf).expect("decode") {
        out.push(i);
    }
    out
}

/// Frames of the given types, each body sealed under the bootstrap key, decoded.
fn decode_frames(frames: &[(u16, &[u8])]) -> Vec<Inbound> {
    let k = Key::bootstrap();
    let mut bytes = BytesMut::new();
    for (ty, body) in frames {
        put_frame(&mut bytes, *ty, &seal(&k, body));
    }
    decode_all(&mut TokenCodec::default(), &bytes)
}

/// `got` is two stray-frame faults, then `last`, and nothing more: the faults' type and
/// reason.
fn strays_then(got: &[Inbound], last: Message) -> [(u16, &'static str); 2] {
    let stray = |i: &Inbound| match i {
        Inbound::Fault(Fault::Stray { ty, why }) => (*ty, *why),
        other => panic!("not a stray frame: {other:?} in {got:?}"),
    };
    assert_eq!(got[2], Inbound::Message(last));
    assert_eq!(got.len(), 3);
    [stray(&got[0]), stray(&got[1])]
}

fn msg(ty: u16, p: &str) -> Message {
    Message::new(ty, p.as_bytes().to_vec())
}

#[test]
fn crc_is_ccitt_false() {
    assert_eq!(CRC16.checksum(b"123456789"), 0x29B1);
}

#[test]
fn sizes_match_the_vendor_log() {
    // token.md: hello message 72 bytes (3 × 24); `OK` also encrypts to 16 bytes.
    let mut c = TokenCodec::default();
    assert_eq!(encode(&mut c, &msg(ty::HELLO, "asdfg")).len(), 72);
    assert_eq!(encode(&mut c, &msg(ty::CLOSE, "")).len(), 72);
    assert_eq!(encode(&mut c, &msg(ty::HELLO, "OK")).len(), 72);
    assert_eq!(encode(&mut c, &msg(ty::FISCAL_INFO, "")).len(), 72);
    // Key share: 32 digits compress to 40 zlib bytes → 48 encrypted → 56 + 48 = 104.
    let k = Key::generate().expect("rng");
    let m = Message::new(ty::KEY, k.as_bytes().to_vec());
    assert_eq!(encode(&mut c, &m).len(), 104);
}

#[test]
fn round_trip_several_messages_in_one_read() {
    let mut tx = TokenCodec::default();
    let mut rx = TokenCodec::default();
    let mut bytes = encode(&mut tx, &msg(ty::DEVICE_INFO, "AV0000000121"));
    bytes.extend_from_slice(&encode(&mut tx, &msg(ty::DEVICE_INFO, "OK")));
    let got = decode_all(&mut rx, &bytes);
    assert_eq!(
        got,
        vec![
            Inbound::Message(msg(ty::DEVICE_INFO, "AV0000000121")),
            Inbound::Message(msg(ty::DEVICE_INFO, "OK")),
        ]
    );
}

#[test]
fn bad_crc_is_a_fault_and_the_stream_goes_on() {
    let mut tx = TokenCodec::default();
    let mut rx = TokenCodec::default();
    let mut bad = encode(&mut tx, &msg(ty::SALE_RESULT, "{}"));
    let n = bad.len();
    bad[n - 1] ^= 0xFF; // the end frame's CRC
    bad.extend_from_slice(&encode(&mut tx, &msg(ty::DEVICE_INFO, "OK")));
    let got = decode_all(&mut rx, &bad);
    assert!(matches!(got[0], Inbound::Fault(Fault::BadCrc { ty: TYPE_END, .. })), "{got:?}");
    assert_eq!(got[1], Inbound::Message(msg(ty::DEVICE_INFO, "OK")));
    assert_eq!(got.len(), 2);
}

#[test]
fn oversize_length_is_refused_without_allocating() {
    let mut rx = TokenCodec::default();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0, 3, 0xFF, 0xFF, 0xFF, 0xF0, 1, 2, 3]);
    let item = rx.decode(&mut buf).expect("decode");
    assert!(matches!(item, Some(Inbound::Fault(Fault::Oversize(0xFFFF_FFF0, 9)))));
    assert!(buf.capacity() < 1024 * 1024, "no reservation from the length field");
    assert!(buf.is_empty());
    // And a good message after it still decodes.
    let mut tx = TokenCodec::default();
    assert_eq!(
        decode_all(&mut rx, &encode(&mut tx, &msg(ty::CLOSE, "OK"))),
        vec![Inbound::Message(msg(ty::CLOSE, "OK"))]
    );
}

#[test]
fn stray_frames_are_faults() {
    // A data frame with no start, then an end with no data, then a good message.
    let got = decode_frames(&[
        (ty::SALE_RESULT, b"{}"),
        (TYPE_START, b""),
        (TYPE_END, b""),
        (TYPE_START, b""),
        (ty::CLOSE, b""),
        (TYPE_END, b""),
    ]);
    let [first, second] = strays_then(&got, msg(ty::CLOSE, ""));
    assert_eq!(first.0, ty::SALE_RESULT);
    assert_eq!(second.0, TYPE_END);
}

#[test]
fn two_data_frames_and_missing_end_are_faults() {
    let got = decode_frames(&[
        (TYPE_START, b""),
        (ty::BASKET, b"a"),
        (ty::BASKET, b"b"),
        (TYPE_START, b""),
        (ty::BASKET, b"c"),
        (TYPE_START, b""),
        (ty::BASKET, b"d"),
        (TYPE_END, b""),
    ]);
    let [first, second] = strays_then(&got, msg(ty::BASKET, "d"));
    assert_eq!(first.1, "second data frame");
    assert_eq!(second.0, TYPE_START);
}

#[test]
fn undecryptable_and_undecompressible_bodies_are_faults() {
    let mut bytes = BytesMut::new();
    put_frame(&mut bytes, TYPE_START, &[0u8; 15]);
    let k = Key::bootstrap();
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyInit};
    let not_zlib = ecb::Encryptor::<aes::Aes256>::new(k.as_bytes().into())
        .encrypt_padded_vec_mut::<Pkcs7>(b"plain");
    put_frame(&mut bytes, TYPE_START, &not_zlib);
    let got = decode_all(&mut TokenCodec::default(), &bytes);
    assert!(matches!(
        got[0],
        Inbound::Fault(Fault::Body { err: BodyError::Undecryptable(15), .. })
    ));
    assert!(matches!(
        got[1],
        Inbound::Fault(Fault::Body { err: BodyError::Undecompressible(_), .. })
    ));
    // A message under another key is undecryptable (or, rarely, undecompressible).
    let mut other = TokenCodec::new(Key::generate().expect("rng"));
    let got = decode_all(&mut TokenCodec::default(), &encode(&mut other, &msg(4, "OK")));
    assert!(got.iter().all(|i| matches!(i, Inbound::Fault(Fault::Body { .. }))), "{got:?}");
}

#[test]
fn previous_key_opens_exactly_one_message_after_a_switch() {
    let new = Key::generate().expect("rng");
    let mut old_tx = TokenCodec::default();
    let mut new_tx = TokenCodec::new(new.clone());
    let mut rx = TokenCodec::default();
    rx.switch_key(new);
    // The late `4 OK` under the bootstrap key, then `6 OK` under the new key.
    let mut bytes = encode(&mut old_tx, &msg(ty::HELLO, "OK"));
    bytes.extend_from_slice(&encode(&mut new_tx, &msg(ty::KEY, "OK")));
    assert_eq!(
        decode_all(&mut rx, &bytes),
        vec![Inbound::Message(msg(ty::HELLO, "OK")), Inbound::Message(msg(ty::KEY, "OK"))]
    );
    // The old key has had its chance.
    let late = decode_all(&mut rx, &encode(&mut old_tx, &msg(ty::HELLO, "OK")));
    assert!(matches!(late[0], Inbound::Fault(Fault::Body { .. })));
}

#[test]
fn eof_mid_frame_drops_the_partial_frame() {
    let mut tx = TokenCodec::default();
    let bytes = encode(&mut tx, &msg(ty::CLOSE, ""));
    let mut buf = BytesMut::from(&bytes[..30]);
    let mut rx = TokenCodec::default();
    assert_eq!(rx.decode_eof(&mut buf).expect("eof"), None);
    assert!(buf.is_empty());
}

#[test]
fn windows_1254_fallback() {
    let m = Message::new(2, vec![b'Y', 0xDD, b'Y']);
    assert_eq!(m.text(), "YİY");
    assert_eq!(msg(2, "GİDA").text(), "GİDA");
}

#[test]
fn start_and_end_types_are_not_sendable_as_data() {
    let mut b = BytesMut::new();
    assert!(TokenCodec::default().encode(&msg(TYPE_START, ""), &mut b).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the read boundaries, the same messages come out, in order.
    #[test]
    fn reassembles_across_arbitrary_splits(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut tx = TokenCodec::default();
        let mut bytes = BytesMut::new();
        let msgs: Vec<Message> = payloads.iter().enumerate()
            .map(|(i, p)| Message::new(i as u16, p.clone())).collect();
        for m in &msgs {
            tx.encode(m, &mut bytes).expect("encode");
        }
        let mut rx = TokenCodec::default();
        let mut buf = BytesMut::new();
        let mut got = vec![];
        let mut rest = &bytes[..];
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(1).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(i) = rx.decode(&mut buf).expect("decode") {
                got.push(i);
            }
        }
        let want: Vec<Inbound> = msgs.into_iter().map(Inbound::Message).collect();
        prop_assert_eq!(got, want);
    }

    /// Random bytes never panic the decoder and never make it buffer without bound.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut rx = TokenCodec::default();
        let mut buf = BytesMut::from(&data[..]);
        while let Some(_i) = rx.decode(&mut buf).expect("decode") {}
        prop_assert!(buf.len() <= data.len());
    }
}
