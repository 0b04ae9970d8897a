//! The AOA switch, descriptor parsing, the bulk stream and hotplug against the
//! recording fake; end to end, a full handshake and sale through `UsbStream` over the
//! fake's bulk endpoints bridged to the Token simulator's device side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::aoa::{self, AoaStrings, AoaTiming};
use super::descriptor;
use super::fake::{accessory_descriptor, android_device, Call, FakeUsb, Script};
use super::hotplug::{Action, Event, Presence};
use super::*;
use crate::config::UsbFilter;
use crate::drivers::token::session::{handshake, Policy, SaleEnd};
use crate::sim::token::{SimOptions, TokenDevice};

fn fast() -> AoaTiming {
    AoaTiming {
        control_timeout: Duration::from_millis(100),
        open_attempts: 4,
        retry_delay: Duration::from_millis(10),
        write_timeout: Duration::from_secs(5),
        read_poll: Duration::from_millis(50),
        read_buffer: 15000,
    }
}

/// `aoa::connect` with the default filter and strings and the `fast` timing.
fn connect_default<B: UsbBackend>(b: &B) -> Result<aoa::Opened<B::Handle>, UsbError> {
    aoa::connect(b, &UsbFilter::default(), &AoaStrings::default(), &fast())
}

fn mouse() -> DevInfo {
    DevInfo {
        bus: 1,
        address: 2,
        vid: 0x046d,
        pid: 0xc52b,
        serial: None,
        manufacturer: Some("Logitech".into()),
        product: None,
    }
}

fn other_android() -> DevInfo {
    // Another Android device (a phone) with another vendor id: never probed by default.
    DevInfo {
        bus: 1,
        address: 3,
        vid: 0x04e8,
        pid: 0x6860,
        serial: Some("PHONE".into()),
        manufacturer: None,
        product: None,
    }
}

fn ctrl_in(request: u8, len: u16) -> Call {
    Call::ControlIn {
        ctrl: Ctrl {
            request_type: 0xc0,
            request,
            value: 0,
            index: 0,
        },
        len,
    }
}

fn ctrl_out(request: u8, index: u16, data: &[u8]) -> Call {
    Call::ControlOut {
        ctrl: Ctrl {
            request_type: 0x40,
            request,
            value: 0,
            index,
        },
        data: data.to_vec(),
    }
}

#[test]
fn aoa_switch_sends_the_exact_sequence_and_claims_the_accessory() {
    let fake = FakeUsb::new(
        vec![mouse(), other_android(), android_device(5, "SER1")],
        Script::default(),
    );
    let o = connect_default(&fake).expect("connect");
    assert_eq!(
        fake.control_calls(),
        vec![
            ctrl_in(51, 2),
            ctrl_out(52, 0, b"PCHost\0"),
            ctrl_out(52, 1, b"PCHost1\0"),
            ctrl_out(52, 2, b"Integration Hub\0"),
            ctrl_out(52, 3, b"2.5.0.1\0"),
            ctrl_out(52, 4, b"https://github.com/TokenPublication\0"),
            ctrl_out(52, 5, b"666\0"),
            ctrl_out(53, 0, b""),
        ]
    );
    assert_eq!(o.protocol, Some(2));
    assert_eq!((o.dev.vid, o.dev.pid), (0x18d1, 0x2d01));
    assert_eq!(o.dev.serial.as_deref(), Some("SER1"));
    // Only the register (before and after the switch) was ever opened.
    let opens: Vec<(u16, u16)> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Open { vid, pid, .. } => Some((*vid, *pid)),
            _ => None,
        })
        .collect();
    assert_eq!(opens, vec![(0x18d1, 0x4ee1), (0x18d1, 0x2d01)]);
    // Endpoints from the descriptor; configuration 1, interface 0 claimed.
    let claim = fake.calls().into_iter().find_map(|c| match c {
        Call::Claim(e) => Some(e),
        _ => None,
    });
    assert_eq!(
        claim,
        Some(Endpoints {
            config: 1,
            interface: 0,
            ep_in: 0x81,
            ep_out: 0x01,
            max_packet_in: 512
        })
    );
}

#[test]
fn configured_strings_and_filters_are_used() {
    let fake = FakeUsb::new(
        vec![android_device(5, "AAA"), android_device(6, "BBB")],
        Script::default(),
    );
    let mut f = UsbFilter {
        serial: Some("BBB".into()),
        ..Default::default()
    };
    f.accessory.model = "Kasa 2".into();
    let o = aoa::connect(&fake, &f, &f.accessory, &fast()).expect("connect");
    assert_eq!(o.dev.serial.as_deref(), Some("BBB"));
    assert_eq!(fake.strings()[1].as_deref(), Some(&b"Kasa 2\0"[..]));
    assert!(
        !fake.calls().contains(&Call::Open {
            vid: 0x18d1,
            pid: 0x4ee1,
            address: 5
        }),
        "the device with the other serial was opened"
    );
    // A configured VID/PID for an unusual register: only that device is probed.
    let fake = FakeUsb::new(
        vec![android_device(5, "S"), other_android()],
        Script::default(),
    );
    let f = UsbFilter {
        vid: Some(0x04e8),
        pid: Some(0x6860),
        ..Default::default()
    };
    aoa::connect(&fake, &f, &f.accessory, &fast()).expect("connect");
    assert!(fake.calls().contains(&Call::Open {
        vid: 0x04e8,
        pid: 0x6860,
        address: 3
    }));
    assert!(!fake.calls().contains(&Call::Open {
        vid: 0x18d1,
        pid: 0x4ee1,
        address: 5
    }));
}

#[test]
fn no_register_means_no_device_is_touched() {
    let fake = FakeUsb::new(vec![mouse(), other_android()], Script::default());
    let e = connect_default(&fake).err().expect("no register");
    assert_eq!(e.kind, UsbErrorKind::NotFound);
    assert!(e.to_string().contains("posbridge usb list"), "{e}");
    assert_eq!(fake.calls(), vec![Call::List], "something was opened");
}

/// Two Google-id Android devices and no `usb.serial`: nothing is touched, and the error
/// names both; with the serial set, only that one is used.
#[test]
fn several_candidates_without_a_serial_are_refused() {
    let fake = FakeUsb::new(
        vec![android_device(4, "REG-A"), android_device(5, "REG-B")],
        Script::default(),
    );
    let e = connect_default(&fake).err().expect("ambiguous");
    assert_eq!(e.kind, UsbErrorKind::Ambiguous);
    let text = e.to_string();
    assert!(text.contains("REG-A") && text.contains("REG-B"), "{text}");
    assert!(text.contains("usb.serial"), "{text}");
    assert_eq!(fake.calls(), vec![Call::List], "something was opened");
    let filter = UsbFilter {
        serial: Some("REG-B".into()),
        ..Default::default()
    };
    let candidates: Vec<_> = fake
        .list()
        .expect("list")
        .into_iter()
        .filter(|d| aoa::is_candidate(d, &filter))
        .collect();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].serial.as_deref(), Some("REG-B"));
}

#[test]
fn an_accessory_already_on_the_bus_is_used_without_switching() {
    let mut acc = android_device(9, "SER1");
    acc.pid = 0x2d00;
    let fake = FakeUsb::new(vec![acc], Script::default());
    let o = connect_default(&fake).expect("connect");
    assert_eq!(o.dev.pid, 0x2d00);
    assert_eq!(o.protocol, None);
    assert!(fake.control_calls().is_empty());
}

#[test]
fn reenumeration_wait_retries_within_its_bound() {
    // Comes back on the third scan after START: found on attempt 3 of 4.
    let fake = FakeUsb::new(
        vec![android_device(5, "S")],
        Script {
            reenumerate_after: Some(2),
            ..Default::default()
        },
    );
    connect_default(&fake).expect("connect");
    let lists = fake.calls().iter().filter(|c| **c == Call::List).count();
    assert_eq!(lists, 1 + 3);

    // Never comes back: exactly `open_attempts` scans, `retry_delay` apart, then a
    // message naming the cause and the fix.
    let fake = FakeUsb::new(
        vec![android_device(5, "S")],
        Script {
            reenumerate_after: None,
            ..Default::default()
        },
    );
    let t = AoaTiming {
        retry_delay: Duration::from_millis(30),
        ..fast()
    };
    let started = Instant::now();
    let e = aoa::connect(&fake, &UsbFilter::default(), &AoaStrings::default(), &t)
        .err()
        .expect("no accessory");
    assert!(started.elapsed() >= Duration::from_millis(4 * 30));
    assert_eq!(e.kind, UsbErrorKind::NoReenumeration);
    let lists = fake.calls().iter().filter(|c| **c == Call::List).count();
    assert_eq!(lists, 1 + 4);
    let m = e.to_string();
    assert!(m.contains("2d00/2d01") && m.contains("ADB"), "{m}");
}

#[test]
fn accessory_open_is_retried_past_a_late_udev_rule() {
    let fake = FakeUsb::new(
        vec![android_device(5, "S")],
        Script {
            accessory_open_errors: vec![
                UsbErrorKind::PermissionDenied,
                UsbErrorKind::PermissionDenied,
            ],
            ..Default::default()
        },
    );
    connect_default(&fake).expect("third open works");
}

#[test]
fn errors_name_the_cause_and_the_fix() {
    let connect = |script: Script| {
        let fake = FakeUsb::new(vec![android_device(5, "S")], script);
        let e = connect_default(&fake).err().expect("must fail");
        (e, fake)
    };
    let (e, _) = connect(Script {
        open_errors: vec![UsbErrorKind::PermissionDenied],
        ..Default::default()
    });
    assert_eq!(e.kind, UsbErrorKind::PermissionDenied);
    let m = e.to_string();
    assert!(
        m.contains("99-posbridge.rules") && m.contains("posbridge-usb") && m.contains("18d1:4ee1"),
        "{m}"
    );

    let (e, _) = connect(Script {
        claim_error: Some(UsbErrorKind::Busy),
        ..Default::default()
    });
    assert_eq!(e.kind, UsbErrorKind::Busy);
    assert!(
        e.to_string().contains("another program holds the device"),
        "{e}"
    );

    let (e, fake) = connect(Script {
        protocol: Ok(0),
        ..Default::default()
    });
    assert_eq!(e.kind, UsbErrorKind::NotAccessory);
    assert_eq!(
        fake.control_calls().len(),
        1,
        "strings sent to a non-accessory"
    );

    let (e, _) = connect(Script {
        protocol: Err(UsbErrorKind::Stall),
        ..Default::default()
    });
    assert_eq!(e.kind, UsbErrorKind::NotAccessory);

    // A timeout on SEND_STRING 3: the step is named and START is never sent.
    let (e, fake) = connect(Script {
        fail_control: Some((52, 3, UsbErrorKind::Timeout)),
        ..Default::default()
    });
    assert_eq!(e.kind, UsbErrorKind::Timeout);
    assert!(e.to_string().contains("SEND_STRING 3"), "{e}");
    assert!(!fake.control_calls().contains(&ctrl_out(53, 0, b"")));
}

#[test]
fn descriptor_endpoints_are_discovered_not_hard_coded() {
    let cfg = descriptor::parse(&accessory_descriptor(0x83, 0x03)).expect("parse");
    assert_eq!(cfg.value, 1);
    assert_eq!(cfg.interfaces.len(), 2);
    assert!(cfg.interfaces[1].is_adb());
    let e = descriptor::accessory_endpoints(&cfg).expect("endpoints");
    assert_eq!(
        (e.interface, e.ep_in, e.ep_out, e.max_packet_in),
        (0, 0x83, 0x03, 512)
    );

    // Only ADB: no accessory interface.
    let mut raw = accessory_descriptor(0x81, 0x01);
    raw[9 + 6] = 0x42;
    raw[9 + 7] = 0x01;
    let cfg = descriptor::parse(&raw).expect("parse");
    assert!(descriptor::accessory_endpoints(&cfg).is_err());
}

#[test]
fn damaged_descriptors_are_errors_never_panics() {
    let raw = accessory_descriptor(0x81, 0x01);
    for cut in 0..raw.len() {
        let _ = descriptor::parse(&raw[..cut]);
        assert!(descriptor::parse(&raw[..cut]).is_err() || cut == raw.len());
    }
    for i in 0..raw.len() {
        for v in [0u8, 1, 2, 0xff] {
            let mut r = raw.clone();
            r[i] = v;
            let _ = descriptor::parse(&r).and_then(|c| descriptor::accessory_endpoints(&c));
        }
    }
    let mut bad = raw.clone();
    bad[18] = 0; // zero-length descriptor
    assert!(descriptor::parse(&bad).is_err());
}

#[test]
fn unreadable_descriptor_falls_back_to_the_documented_endpoints() {
    let fake = FakeUsb::new(
        vec![android_device(5, "S")],
        Script {
            descriptor: None,
            ..Default::default()
        },
    );
    let o = connect_default(&fake).expect("connect");
    assert_eq!(o.endpoints, descriptor::FALLBACK);
}

#[test]
fn bulk_reads_are_bounded_whole_packets() {
    let t = AoaTiming::default();
    assert_eq!(t.read_len(512), 14848);
    assert_eq!(t.read_len(64), 14976);
    assert!(t.read_len(1024) <= 15000 && t.read_len(1024) % 1024 == 0);
    assert_eq!(
        AoaTiming {
            read_buffer: 100,
            ..t
        }
        .read_len(512),
        512
    );
}

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
        Script {
            descriptor: Some(accessory_descriptor(0x83, 0x04)),
            ..Default::default()
        },
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
    s.send_basket(&basket(id))
        .await
        .expect("link")
        .expect("1 OK");
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
    assert_eq!(
        p.on(Event::Arrived(android_device(5, "S"))),
        vec![Action::Connect]
    );
    // The same device again (event + rescan): nothing new.
    assert_eq!(
        p.on(Event::Scan(vec![mouse(), android_device(5, "S")])),
        vec![]
    );
    // The switch: the Android device leaves (not linked: nothing), the accessory comes.
    assert_eq!(p.on(Event::Left(android_device(5, "S").id())), vec![]);
    p.set_linked(Some(acc(6).id()));
    assert_eq!(p.on(Event::Arrived(acc(6))), vec![], "linked: no reconnect");
    // Unplug seen by a rescan: the link is lost, once.
    assert_eq!(
        p.on(Event::Scan(vec![mouse()])),
        vec![Action::Lost(acc(6).id())]
    );
    assert_eq!(p.linked(), None);
    assert_eq!(p.on(Event::Scan(vec![mouse()])), vec![]);
    // Replugged (new address): connect again.
    assert_eq!(
        p.on(Event::Scan(vec![mouse(), android_device(7, "S")])),
        vec![Action::Connect]
    );
    // An OS event for the linked device.
    p.set_linked(Some(acc(8).id()));
    p.on(Event::Arrived(acc(8)));
    assert_eq!(
        p.on(Event::Left(acc(8).id())),
        vec![Action::Lost(acc(8).id())]
    );
    // A serial filter ignores other registers.
    let mut p = Presence::new(UsbFilter {
        serial: Some("MINE".into()),
        ..Default::default()
    });
    assert_eq!(p.on(Event::Arrived(android_device(5, "OTHER"))), vec![]);
    assert_eq!(
        p.on(Event::Arrived(android_device(6, "MINE"))),
        vec![Action::Connect]
    );
    assert_eq!(p.present(), 1);
}

#[test]
fn usb_list_renders_kinds_and_the_missing_subsystem() {
    let out = super::list::render(Ok(vec![mouse(), android_device(5, "AV1"), acc(6)]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].contains("046d:c52b") && lines[1].contains(" - "),
        "{out}"
    );
    assert!(
        lines[2].contains("18d1:4ee1")
            && lines[2].contains("AV1")
            && lines[2].contains("candidate"),
        "{out}"
    );
    assert!(
        lines[3].contains("18d1:2d01") && lines[3].contains("accessory mode"),
        "{out}"
    );
    // The fake's nodes do not exist here: "may open" says so instead of guessing.
    assert!(lines[2].contains("/dev/bus/usb/001/005 missing"), "{out}");
    let out = super::list::render(Err(no_subsystem()));
    assert!(
        out.starts_with("no USB subsystem (/sys/bus/usb missing)"),
        "{out}"
    );
}
