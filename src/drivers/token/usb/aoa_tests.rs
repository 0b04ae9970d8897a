//! The AOA switch and the descriptor against the recording fake: the exact control
//! sequence, the configured strings and filters, refusals that touch no device, the
//! re-enumeration wait and its retries, errors that name the cause and the fix, endpoints
//! discovered from (possibly damaged) descriptors, and the bounded bulk reads.

use std::time::{Duration, Instant};

use super::aoa::{self, AoaStrings, AoaTiming};
use super::descriptor;
use super::fake::{
    accessory_descriptor, android_device, fast, mouse, other_android, Call, FakeUsb, Script,
};
use super::*;
use crate::config::UsbFilter;

/// `aoa::connect` with the default filter and strings and the `fast` timing.
fn connect_default<B: UsbBackend>(b: &B) -> Result<aoa::Opened<B::Handle>, UsbError> {
    aoa::connect(b, &UsbFilter::default(), &AoaStrings::default(), &fast())
}

fn ctrl_in(request: u8, len: u16) -> Call {
    Call::ControlIn { ctrl: Ctrl { request_type: 0xc0, request, value: 0, index: 0 }, len }
}

fn ctrl_out(request: u8, index: u16, data: &[u8]) -> Call {
    Call::ControlOut {
        ctrl: Ctrl { request_type: 0x40, request, value: 0, index },
        data: data.to_vec(),
    }
}

#[test]
fn aoa_switch_sends_the_exact_sequence_and_claims_the_accessory() {
    let fake =
        FakeUsb::new(vec![mouse(), other_android(), android_device(5, "SER1")], Script::default());
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
        Some(Endpoints { config: 1, interface: 0, ep_in: 0x81, ep_out: 0x01, max_packet_in: 512 })
    );
}

#[test]
fn configured_strings_and_filters_are_used() {
    let fake =
        FakeUsb::new(vec![android_device(5, "AAA"), android_device(6, "BBB")], Script::default());
    let mut f = UsbFilter { serial: Some("BBB".into()), ..Default::default() };
    f.accessory.model = "Kasa 2".into();
    let o = aoa::connect(&fake, &f, &f.accessory, &fast()).expect("connect");
    assert_eq!(o.dev.serial.as_deref(), Some("BBB"));
    assert_eq!(fake.strings()[1].as_deref(), Some(&b"Kasa 2\0"[..]));
    assert!(
        !fake.calls().contains(&Call::Open { vid: 0x18d1, pid: 0x4ee1, address: 5 }),
        "the device with the other serial was opened"
    );
    // A configured VID/PID for an unusual register: only that device is probed.
    let fake = FakeUsb::new(vec![android_device(5, "S"), other_android()], Script::default());
    let f = UsbFilter { vid: Some(0x04e8), pid: Some(0x6860), ..Default::default() };
    aoa::connect(&fake, &f, &f.accessory, &fast()).expect("connect");
    assert!(fake.calls().contains(&Call::Open { vid: 0x04e8, pid: 0x6860, address: 3 }));
    assert!(!fake.calls().contains(&Call::Open { vid: 0x18d1, pid: 0x4ee1, address: 5 }));
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
    let filter = UsbFilter { serial: Some("REG-B".into()), ..Default::default() };
    let candidates: Vec<_> =
        fake.list().expect("list").into_iter().filter(|d| aoa::is_candidate(d, &filter)).collect();
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
        Script { reenumerate_after: Some(2), ..Default::default() },
    );
    connect_default(&fake).expect("connect");
    let lists = fake.calls().iter().filter(|c| **c == Call::List).count();
    assert_eq!(lists, 1 + 3);

    // Never comes back: exactly `open_attempts` scans, `retry_delay` apart, then a
    // message naming the cause and the fix.
    let fake = FakeUsb::new(
        vec![android_device(5, "S")],
        Script { reenumerate_after: None, ..Default::default() },
    );
    let t = AoaTiming { retry_delay: Duration::from_millis(30), ..fast() };
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
    let (e, _) =
        connect(Script { open_errors: vec![UsbErrorKind::PermissionDenied], ..Default::default() });
    assert_eq!(e.kind, UsbErrorKind::PermissionDenied);
    let m = e.to_string();
    assert!(
        m.contains("99-posbridge.rules") && m.contains("posbridge-usb") && m.contains("18d1:4ee1"),
        "{m}"
    );

    let (e, _) = connect(Script { claim_error: Some(UsbErrorKind::Busy), ..Default::default() });
    assert_eq!(e.kind, UsbErrorKind::Busy);
    assert!(e.to_string().contains("another program holds the device"), "{e}");

    let (e, fake) = connect(Script { protocol: Ok(0), ..Default::default() });
    assert_eq!(e.kind, UsbErrorKind::NotAccessory);
    assert_eq!(fake.control_calls().len(), 1, "strings sent to a non-accessory");

    let (e, _) = connect(Script { protocol: Err(UsbErrorKind::Stall), ..Default::default() });
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
    assert_eq!((e.interface, e.ep_in, e.ep_out, e.max_packet_in), (0, 0x83, 0x03, 512));

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
        Script { descriptor: None, ..Default::default() },
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
    assert_eq!(AoaTiming { read_buffer: 100, ..t }.read_len(512), 512);
}
