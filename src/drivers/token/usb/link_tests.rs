//! The link after the switch: a full handshake and sale through `UsbStream` over the
//! fake's bulk endpoints bridged to the Token simulator's device side, an unplug that ends
//! the stream with an error, the hotplug state machine, and `posbridge usb list`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::fake::{
    accessory_descriptor, android_device, fast, mouse, other_android, Call, FakeUsb, Script,
};
use super::hotplug::{Action, Event, Presence};
use super::*;
use crate::config::UsbFilter;
use crate::drivers::token::session::{handshake, Policy, SaleEnd};
use crate::sim::token::{SimOptions, TokenDevice};

/// Serve every accessory pipe the fake hands out with one simulated register.
fn bridge(
    device: Arc<TokenDevice>,
    mut pipes: tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
) {
    tokio::spawn(async move {
        while let Some(p) = pipes.recv().await {
            let d = device.clone();
            tokio::spawn(async move { d.serve(p).await });
        }
    });
}

fn basket(id: &str) -> String {
    json!({
        "basketID": id, "createInvoice": false, "documentType": 0, "isVoid": false,
        "items": [{"barcode": "", "name": "Su", "pluNo": 0, "price": 2000, "sectionNo": 1,
                   "taxPercent": 1000, "type": 0, "unit": "Adet", "vatID": 0, "limit": 0,
                   "quantity": 1000, "paymentType": 0}],
        "paymentItems": [{"description": "nakit", "amount": 2000, "type": 1, "taxRate": 0}],
        "customerInfo": null, "adjust": null
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_sale_run_through_the_usb_transport_over_the_fake() {
    let device = Arc::new(TokenDevice::new(SimOptions::default(), None).expect("sim"));
    let ctl = device.control();
    let (fake, pipes) = FakeUsb::bridged(
        vec![mouse(), android_device(5, "AV0000000121")],
        Script { descriptor: Some(accessory_descriptor(0x83, 0x04)), ..Default::default() },
        tokio::runtime::Handle::current(),
    );
    let fake = Arc::new(fake);
    bridge(device, pipes);
    let port = Port::new(fake.clone(), UsbFilter::default(), fast());
    let stream = tokio::task::spawn_blocking(move || port.connect())
        .await
        .expect("join")
        .expect("usb connect");
    assert_eq!(stream.device().pid, 0x2d01);

    let mut s = handshake(stream, Duration::from_secs(5), &Policy::default())
        .await
        .expect("link")
        .expect("handshake");
    assert_eq!(s.fiscal_no(), "AV0000000121");
    assert_eq!(s.fiscal_info().section_numbers(), vec![1, 2]);
    let id = "93ced0be-99f5-4e42-b0ca-bc781c778d69";
    s.send_basket(&basket(id)).await.expect("link").expect("1 OK");
    let end = s
        .wait_sale(id, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .expect("link")
        .expect("sale");
    match end {
        SaleEnd::Result(r) => assert!(r.succeeded(), "{:?}", r.raw),
        other => panic!("{other:?}"),
    }
    assert_eq!(ctl.sales(id), 1);
    s.close().await;

    let calls = fake.calls();
    // The discovered endpoints carried the traffic; reads stayed within the bound.
    let outs: Vec<(u8, usize)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::BulkOut { ep, len } => Some((*ep, *len)),
            _ => None,
        })
        .collect();
    assert!(outs.iter().all(|(ep, _)| *ep == 0x04), "{outs:?}");
    // The hello message (start + data + end) went out as one 72-byte transfer.
    assert_eq!(outs.first().map(|o| o.1), Some(72), "{outs:?}");
    assert!(calls.iter().all(|c| match c {
        Call::BulkIn { ep, len } => *ep == 0x83 && *len <= 15000 && len % 512 == 0,
        _ => true,
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_ends_the_stream_with_an_error() {
    use tokio::io::AsyncReadExt;
    let device = Arc::new(TokenDevice::new(SimOptions::default(), None).expect("sim"));
    let (fake, pipes) = FakeUsb::bridged(
        vec![android_device(5, "S")],
        Script::default(),
        tokio::runtime::Handle::current(),
    );
    let fake = Arc::new(fake);
    bridge(device, pipes);
    let port = Port::new(fake.clone(), UsbFilter::default(), fast());
    let mut stream = tokio::task::spawn_blocking(move || port.connect())
        .await
        .expect("join")
        .expect("usb connect");
    fake.unplug();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the read must end");
    let e = r.expect_err("an error, not data or EOF");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted, "{e}");
}

// ------------------------------------------------------------------ hotplug

fn acc(address: u8) -> DevInfo {
    let mut d = android_device(address, "S");
    d.pid = 0x2d01;
    d
}

#[test]
fn hotplug_state_machine() {
    let mut p = Presence::new(UsbFilter::default());
    // Unrelated devices never matter.
    assert_eq!(p.on(Event::Arrived(mouse())), vec![]);
    assert_eq!(p.on(Event::Arrived(other_android())), vec![]);
    // The register arrives with no link: connect.
    assert_eq!(p.on(Event::Arrived(android_device(5, "S"))), vec![Action::Connect]);
    // The same device again (event + rescan): nothing new.
    assert_eq!(p.on(Event::Scan(vec![mouse(), android_device(5, "S")])), vec![]);
    // The switch: the Android device leaves (not linked: nothing), the accessory comes.
    assert_eq!(p.on(Event::Left(android_device(5, "S").id())), vec![]);
    p.set_linked(Some(acc(6).id()));
    assert_eq!(p.on(Event::Arrived(acc(6))), vec![], "linked: no reconnect");
    // Unplug seen by a rescan: the link is lost, once.
    assert_eq!(p.on(Event::Scan(vec![mouse()])), vec![Action::Lost(acc(6).id())]);
    assert_eq!(p.linked(), None);
    assert_eq!(p.on(Event::Scan(vec![mouse()])), vec![]);
    // Replugged (new address): connect again.
    assert_eq!(p.on(Event::Scan(vec![mouse(), android_device(7, "S")])), vec![Action::Connect]);
    // An OS event for the linked device.
    p.set_linked(Some(acc(8).id()));
    p.on(Event::Arrived(acc(8)));
    assert_eq!(p.on(Event::Left(acc(8).id())), vec![Action::Lost(acc(8).id())]);
    // A serial filter ignores other registers.
    let mut p = Presence::new(UsbFilter { serial: Some("MINE".into()), ..Default::default() });
    assert_eq!(p.on(Event::Arrived(android_device(5, "OTHER"))), vec![]);
    assert_eq!(p.on(Event::Arrived(android_device(6, "MINE"))), vec![Action::Connect]);
    assert_eq!(p.present(), 1);
}

#[test]
fn usb_list_renders_kinds_and_the_missing_subsystem() {
    let out = super::list::render(Ok(vec![mouse(), android_device(5, "AV1"), acc(6)]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].contains("046d:c52b") && lines[1].contains(" - "), "{out}");
    assert!(
        lines[2].contains("18d1:4ee1")
            && lines[2].contains("AV1")
            && lines[2].contains("candidate"),
        "{out}"
    );
    assert!(lines[3].contains("18d1:2d01") && lines[3].contains("accessory mode"), "{out}");
    // The fake's nodes do not exist here: "may open" says so instead of guessing.
    assert!(lines[2].contains("/dev/bus/usb/001/005 missing"), "{out}");
    let out = super::list::render(Err(no_subsystem()));
    assert!(out.starts_with("no USB subsystem (/sys/bus/usb missing)"), "{out}");
}
