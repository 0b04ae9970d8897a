//! Session tests over `tokio::io::duplex` against the simulator's device side.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::DuplexStream;

use super::*;
use crate::sim::token::{SimControl, SimOptions, TestCa, TokenDevice};

const T: Duration = Duration::from_secs(5);

fn policy() -> Policy {
    Policy { pinned: None, strict: false, ca_pem: None, company_name: "posbridge".into() }
}

/// Strict mode: the certificate must chain to `ca`.
fn strict(ca: &TestCa) -> Policy {
    Policy { pinned: None, strict: true, ca_pem: Some(ca.pem().into_bytes()), ..policy() }
}

/// A device on the far end of an in-memory pipe.
fn device(opts: SimOptions, ca: Option<&TestCa>) -> (DuplexStream, SimControl) {
    let dev = Arc::new(TokenDevice::new(opts, ca).expect("device"));
    let (host, far) = tokio::io::duplex(64 * 1024);
    let ctl = dev.control();
    tokio::spawn(async move { dev.serve(far).await });
    (host, ctl)
}

async fn ready(io: DuplexStream, p: &Policy) -> Session<Ready, DuplexStream> {
    handshake(io, T, p).await.expect("link").expect("device accepted")
}

/// A default device, the session with it ready.
async fn ready_default() -> (Session<Ready, DuplexStream>, SimControl) {
    let (io, ctl) = device(SimOptions::default(), None);
    (ready(io, &policy()).await, ctl)
}

/// The basket `id` (section 1) sent; the device took it.
async fn sent(s: &mut Session<Ready, DuplexStream>, id: &str) {
    s.send_basket(&basket(id, 1)).await.expect("link").expect("taken");
}

/// How the sale of the basket `id` ended (within `T`, after `grace` of "not processed").
async fn sale_end(s: &mut Session<Ready, DuplexStream>, id: &str, grace: Duration) -> SaleEnd {
    s.wait_sale(id, T, grace).await.expect("link").expect("device")
}

fn basket(id: &str, section: i64) -> String {
    json!({"basketID": id, "documentType": 0, "createInvoice": false, "isVoid": false,
        "items": [{"name": "Su", "price": 500, "quantity": 1000, "sectionNo": section}],
        "paymentItems": [{"type": 1, "amount": 500, "description": "", "taxRate": 5}],
        "customerInfo": null, "adjust": null})
    .to_string()
}

#[tokio::test]
async fn handshake_switches_key_and_loads_fiscal_info() {
    let (s, ctl) = ready_default().await;
    assert_eq!(s.fiscal_no(), "AV0000000121");
    assert_eq!(s.cert().serial_number.as_deref(), Some("AV0000000121"));
    assert_eq!(s.fiscal_info().section_numbers(), vec![1, 2]);
    assert_eq!(s.fiscal_info().receipt_limit(), Some(990000));
    // The late `4 OK` under the bootstrap key was opened by the previous key, not
    // dropped as a fault.
    assert_eq!(s.faults(), 0);
    assert_eq!(ctl.handshakes(), 1);
}

#[tokio::test]
async fn early_hello_ok_also_works() {
    let (io, ctl) = device(SimOptions::default(), None);
    ctl.set(|k| k.early_hello_ok = true);
    let s = ready(io, &policy()).await;
    assert_eq!(s.faults(), 0);
}

#[tokio::test]
async fn sale_result_arrives_for_the_basket() {
    let (mut s, ctl) = ready_default().await;
    sent(&mut s, "b-1").await;
    let end = sale_end(&mut s, "b-1", Duration::from_millis(200)).await;
    let SaleEnd::Result(r) = end else { panic!("{end:?}") };
    assert!(r.succeeded());
    assert_eq!(r.basket_id(), "b-1");
    assert_eq!(ctl.sales("b-1"), 1);
    s.close().await;
}

#[tokio::test]
async fn bad_signature_stops_the_handshake() {
    let (io, ctl) = device(SimOptions::default(), None);
    ctl.set(|k| k.bad_signature = true);
    let r = Session::new(io, T).hello(&policy()).await.expect("link");
    assert!(matches!(r, Err(DeviceError::Certificate(CertError::BadSignature))));
}

#[tokio::test]
async fn type60_refuses_the_basket() {
    let (mut s, ctl) = ready_default().await;
    ctl.set(|k| k.error_next_basket = Some("KASA KAPALI".into()));
    let r = s.send_basket(&basket("b-2", 1)).await.expect("link");
    assert_eq!(r, Err(DeviceError::Error("KASA KAPALI".into())));
    // The session stays usable.
    sent(&mut s, "b-3").await;
    assert_eq!(ctl.sales("b-2"), 0);
}

#[tokio::test]
async fn type9_means_not_processed_after_the_grace() {
    let (mut s, ctl) = ready_default().await;
    ctl.set(|k| k.not_processed_next = true);
    sent(&mut s, "b-4").await;
    let end = sale_end(&mut s, "b-4", Duration::from_millis(100)).await;
    assert!(matches!(end, SaleEnd::NotProcessed(_)), "{end:?}");
    assert_eq!(ctl.sales("b-4"), 0);
}

#[tokio::test]
async fn corrupted_frame_is_dropped_and_the_session_goes_on() {
    let (mut s, ctl) = ready_default().await;
    ctl.set(|k| k.corrupt_next_crc = true);
    // The fiscal info's end frame arrives with a bad CRC, so the message is lost and
    // the `2 OK` alone comes through — a typed answer, not a hang or a panic.
    let r = s.refresh_fiscal_info().await.map(|x| x.map(|_| ()));
    assert!(matches!(r, Ok(Err(DeviceError::Unexpected(_)))), "{r:?}");
    assert_eq!(s.faults(), 1);
    // The session is still consistent: the next request works.
    let fiscal = s.device_info(&policy()).await.expect("link").expect("device");
    assert_eq!(fiscal, "AV0000000121");
}

#[tokio::test]
async fn link_drop_mid_sale_is_a_transport_error() {
    let (mut s, ctl) = ready_default().await;
    ctl.set(|k| k.drop_link_mid_sale = true);
    sent(&mut s, "b-5").await;
    let r = s.wait_sale("b-5", T, Duration::from_millis(100)).await;
    assert!(matches!(r, Err(TransportError::Closed)), "{r:?}");
    assert_eq!(ctl.sales("b-5"), 1, "the register completed it anyway");
}

#[tokio::test]
async fn strict_mode_accepts_a_chain_to_the_ca_and_a_matching_serial() {
    let ca = TestCa::generate("Test OKC-S2").expect("ca");
    let (io, _) = device(SimOptions::default(), Some(&ca));
    let p = strict(&ca);
    let s = ready(io, &p).await;
    assert_eq!(s.fiscal_no(), "AV0000000121");
}

#[tokio::test]
async fn strict_mode_rejects_another_ca() {
    let ca = TestCa::generate("Test OKC-S2").expect("ca");
    let other = TestCa::generate("Someone else").expect("ca");
    let (io, _) = device(SimOptions::default(), Some(&other));
    let p = strict(&ca);
    let r = handshake(io, T, &p).await.expect("link");
    assert!(matches!(r, Err(DeviceError::Certificate(CertError::Chain(_)))), "{:?}", r.err());
    // Self-signed is refused too.
    let (io, _) = device(SimOptions::default(), None);
    let r = handshake(io, T, &p).await.expect("link");
    assert!(matches!(r, Err(DeviceError::Certificate(CertError::Chain(_)))));
}

#[tokio::test]
async fn strict_mode_rejects_a_serial_mismatch_lenient_mode_accepts_it() {
    let ca = TestCa::generate("Test OKC-S2").expect("ca");
    let opts = SimOptions { cert_serial: Some("AV0000000507".into()), ..Default::default() };
    let strict = strict(&ca);
    let (io, _) = device(opts.clone(), Some(&ca));
    let r = handshake(io, T, &strict).await.expect("link");
    assert_eq!(
        r.err(),
        Some(DeviceError::SerialMismatch {
            cert: Some("AV0000000507".into()),
            fiscal: "AV0000000121".into()
        })
    );
    let (io, _) = device(opts, Some(&ca));
    let s = ready(io, &policy()).await;
    assert_eq!(s.cert().serial_number.as_deref(), Some("AV0000000507"));
}

#[tokio::test]
async fn a_basket_before_fiscal_info_is_refused_by_the_device() {
    // The type system forbids it on the host; prove the simulator enforces it too, so
    // the simulator cannot hide a host that skips the step.
    use crate::drivers::token::codec::TokenCodec;
    use futures_util::{SinkExt, StreamExt};
    let (io, ctl) = device(SimOptions::default(), None);
    let mut f = tokio_util::codec::Framed::new(io, TokenCodec::default());
    f.send(Message::new(ty::BASKET, basket("b-x", 1))).await.expect("send");
    let Some(Ok(Inbound::Message(m))) = f.next().await else { panic!("answer") };
    assert_eq!(m.ty, ty::ERROR);
    assert_eq!(ctl.baskets_received(), 0);
}

/// Trust on first use: a register presenting another certificate than the pinned one is
/// refused (no basket can follow); the pinned one passes.
#[tokio::test]
async fn a_pinned_certificate_must_be_presented_again() {
    let (io, _) = device(SimOptions::default(), None);
    let s = ready(io, &policy()).await;
    let pin = cert_pin(s.cert());
    assert_eq!(pin.len(), 64);
    // The same register again (same identity): accepted.
    // A register with another certificate: refused, naming both pins.
    let (io, _) = device(SimOptions::default(), None);
    let p = Policy { pinned: Some("00".repeat(32)), ..policy() };
    let r = handshake(io, T, &p).await.expect("link");
    match r {
        Err(DeviceError::Certificate(CertError::Chain(m))) => {
            assert!(m.contains("not the one enrolled") && m.contains("cert_pin"), "{m}")
        }
        other => panic!("{:?}", other.err()),
    }
}
