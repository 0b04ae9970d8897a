//! Codec and client tests for protocol v1; the client runs over in-memory pipes.

use std::io;
use std::time::Duration;

use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, BufReader};

const T: Duration = Duration::from_secs(5);

fn pay() -> Request {
    Request::Pay { r#ref: "r-1".into(), amount: 1250, currency: "AZN".into() }
}

#[test]
fn requests_encode_to_the_spec_shapes_and_round_trip() {
    let cases = [
        (Request::Ping, r#"{"op":"ping"}"#),
        (pay(), r#"{"op":"pay","ref":"r-1","amount":1250,"currency":"AZN"}"#),
        (
            Request::Refund { r#ref: "r-2".into(), transaction_id: "T1".into(), amount: 5 },
            r#"{"op":"refund","ref":"r-2","transaction_id":"T1","amount":5}"#,
        ),
        (Request::Status { r#ref: "r-1".into() }, r#"{"op":"status","ref":"r-1"}"#),
    ];
    for (req, json) in cases {
        let line = encode_line(&req);
        assert_eq!(line, format!("{json}\n").into_bytes());
        assert_eq!(decode_request(&line).unwrap(), req);
    }
}

#[test]
fn responses_round_trip_and_omit_absent_fields() {
    let ping = Response {
        ok: true,
        terminal_id: Some("IPT-0001".into()),
        version: Some("1".into()),
        ..Response::default()
    };
    let line = encode_response(&ping);
    assert_eq!(line, b"{\"ok\":true,\"terminal_id\":\"IPT-0001\",\"version\":\"1\"}\n");
    assert_eq!(decode_response(&line).unwrap(), ping);
    let crlf = b"{\"ok\":false,\"ref\":\"r\",\"error\":\"in_progress\"}\r\n";
    let busy = decode_response(crlf).unwrap();
    assert_eq!(busy.r#ref.as_deref(), Some("r"));
    assert!(busy.is_in_progress() && !busy.is_not_found());
    assert!(decode_response(br#"{"ok":false,"error":"not_found"}"#).unwrap().is_not_found());
}

#[test]
fn unknown_fields_and_nulls_are_tolerated() {
    let r = decode_response(br#"{"ok":true,"ref":null,"extra":{"a":[1]},"transaction_id":"T9"}"#)
        .unwrap();
    assert!(r.ok);
    assert_eq!(r.r#ref, None);
    assert_eq!(r.transaction_id.as_deref(), Some("T9"));
    assert_eq!(decode_response(br#"{"ok":false,"error":"mystery"}"#).unwrap().error_code(), None);
}

#[test]
fn missing_or_mistyped_ok_is_rejected() {
    for line in [&br#"{"ref":"r"}"#[..], br#"{"ok":"yes"}"#, br#"{"ok":null}"#] {
        assert!(matches!(decode_response(line), Err(ProtoError::BadResponse(_))));
    }
}

#[test]
fn garbage_is_rejected_with_an_escaped_prefix() {
    let Err(ProtoError::BadResponse(msg)) = decode_response(b"\xff\x00hello\x1b[2J") else {
        panic!("garbage accepted");
    };
    assert!(msg.contains(r"\xff\x00hello\x1b[2J"), "{msg}");
    assert!(matches!(decode_response(b""), Err(ProtoError::BadResponse(_))));
    assert!(matches!(decode_request(br#"{"op":"launch"}"#), Err(ProtoError::BadResponse(_))));
    assert!(quote(&[b'a'; 200]).ends_with("..."));
}

#[test]
fn over_long_line_is_rejected() {
    let mut line = br#"{"ok":true,"message":""#.to_vec();
    line.resize(MAX_LINE + 1, b'x');
    assert!(matches!(decode_response(&line), Err(ProtoError::LineTooLong)));
}

#[test]
fn error_codes_round_trip_and_delivery_is_classified() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
    }
    let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    assert!(!ProtoError::Connect(refused).maybe_delivered());
    assert!(!ProtoError::ConnectTimeout(T).maybe_delivered());
    assert!(!ProtoError::Broken.maybe_delivered());
    assert!(ProtoError::Timeout(T).maybe_delivered());
    assert!(ProtoError::Closed.maybe_delivered());
    assert!(ProtoError::Io(io::Error::from(io::ErrorKind::ConnectionReset)).maybe_delivered());
    assert!(ProtoError::LineTooLong.maybe_delivered());
    assert!(ProtoError::BadResponse(String::new()).maybe_delivered());
}

#[tokio::test]
async fn client_sends_one_line_and_reads_one_answer() {
    let (near, far) = duplex(4096);
    let mut client = IpClient::from_stream(near);
    let mut far = BufReader::new(far);
    let terminal = tokio::spawn(async move {
        let mut buf = Vec::new();
        let got = read_line_bounded(&mut far, &mut buf, MAX_LINE).await.unwrap();
        assert_eq!(got, LineRead::Line);
        assert_eq!(decode_request(&buf).unwrap(), pay());
        far.write_all(b"{\"ok\":true,\"ref\":\"r-1\"}\n").await.unwrap();
        far
    });
    let resp = client.call(&pay(), T).await.unwrap();
    assert!(resp.ok && client.is_usable());
    drop(terminal.await.unwrap());
    // The terminal hung up between requests: a clean close, possibly after delivery.
    let err = client.call(&Request::Ping, T).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed | ProtoError::Io(_)), "{err}");
    assert!(matches!(client.call(&Request::Ping, T).await, Err(ProtoError::Broken)));
}

/// Runs one call against a fake terminal that reads the request, answers `reply` bytes
/// and then hangs up or keeps the line open.
async fn call_with_reply(reply: &[u8], hang_up: bool) -> (ProtoError, usize) {
    let (near, far) = duplex(2 * MAX_LINE + 64);
    let mut client = IpClient::from_stream(near);
    let reply = reply.to_vec();
    let terminal = tokio::spawn(async move {
        let (mut far, mut buf) = (BufReader::new(far), Vec::new());
        read_line_bounded(&mut far, &mut buf, MAX_LINE).await.unwrap();
        far.write_all(&reply).await.unwrap();
        (!hang_up).then_some(far)
    });
    let err = client.call(&Request::Ping, Duration::from_millis(200)).await.unwrap_err();
    assert!(!client.is_usable());
    drop(terminal.await.unwrap());
    (err, client.buf.len())
}

#[tokio::test]
async fn client_bounds_lines_and_tells_eof_from_errors() {
    let (err, consumed) = call_with_reply(&[b'x'; 2 * MAX_LINE], false).await;
    assert!(matches!(err, ProtoError::LineTooLong), "{err}");
    assert_eq!(consumed, MAX_LINE + 1);
    let (err, _) = call_with_reply(b"", true).await;
    assert!(matches!(err, ProtoError::Closed), "{err}");
    let (err, _) = call_with_reply(b"{\"ok\":tr", true).await;
    assert!(matches!(&err, ProtoError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    let (err, _) = call_with_reply(b"<html>\n", false).await;
    assert!(matches!(&err, ProtoError::BadResponse(m) if m.contains("<html>")), "{err}");
    // Silence: the wait itself is what is under test here.
    let (err, _) = call_with_reply(b"", false).await;
    assert!(matches!(err, ProtoError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn connect_failure_is_not_delivered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = IpClient::connect(&addr, T).await.err().unwrap();
    assert!(matches!(err, ProtoError::Connect(_)), "{err}");
    assert!(!err.maybe_delivered());
}

#[tokio::test]
async fn read_line_bounded_accepts_exactly_max() {
    let (mut a, b) = duplex(MAX_LINE + 16);
    let mut line = vec![b'y'; MAX_LINE];
    line.push(b'\n');
    a.write_all(&line).await.unwrap();
    drop(a);
    let (mut b, mut buf) = (BufReader::new(b), Vec::new());
    assert_eq!(read_line_bounded(&mut b, &mut buf, MAX_LINE).await.unwrap(), LineRead::Line);
    assert_eq!(buf.len(), MAX_LINE + 1);
    assert_eq!(read_line_bounded(&mut b, &mut buf, MAX_LINE).await.unwrap(), LineRead::Eof);
    let mut rest = Vec::new();
    assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0);
}

mod props {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_response_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_response(&bytes);
            let _ = decode_request(&bytes);
        }

        #[test]
        fn requests_round_trip(r in "[ -~]{1,64}", amount in 1i64..=i64::MAX) {
            let req = Request::Pay { r#ref: r.clone(), amount, currency: "AZN".into() };
            let line = encode_line(&req);
            let back = decode_request(line.strip_suffix(b"\n").unwrap_or(&line)).expect("decode");
            prop_assert_eq!(back, req);
        }
    }
}
