//! The token driver over USB (the recording fake bridged to the simulator): hotplug
//! moves the retained terminal state; an unplug mid-sale is recovered through the
//! driver's link-loss path, never by resending the basket.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::aoa::AoaTiming;
use super::fake::{android_device, Call, FakeUsb, Script};
use super::{Port, UsbErrorKind};
use crate::api::{parse_command, Evt, FinalState};
use crate::config::{Transport, UsbFilter};
use crate::drivers::token::{basket_id, TokenDriver, TokenSettings, UsbSide};
use crate::drivers::{Driver, OpContext};
use crate::sim::token::{SimControl, SimOptions, TokenDevice};
use crate::store::{CmdState, CommandRecord, Store};

fn settings(recovery: Duration) -> TokenSettings {
    TokenSettings {
        transport: Transport::Usb,
        addr: None,
        usb: UsbFilter::default(),
        strict: false,
        ca_file: None,
        company_name: "posbridge".into(),
        quantity_scale: 1000,
        connect_timeout: Duration::from_secs(3),
        op_timeout: Duration::from_secs(10),
        recovery_window: recovery,
    }
}

fn timing() -> AoaTiming {
    AoaTiming {
        control_timeout: Duration::from_millis(100),
        open_attempts: 4,
        retry_delay: Duration::from_millis(10),
        write_timeout: Duration::from_secs(5),
        read_poll: Duration::from_millis(30),
        read_buffer: 15000,
    }
}

fn rig(opts: SimOptions, recovery: Duration) -> (TokenDriver, Arc<FakeUsb>, SimControl) {
    let device = Arc::new(TokenDevice::new(opts, None).expect("sim"));
    let ctl = device.control();
    let (fake, mut pipes) = FakeUsb::bridged(
        vec![android_device(5, "AV0000000121")],
        Script::default(),
        tokio::runtime::Handle::current(),
    );
    let fake = Arc::new(fake);
    tokio::spawn(async move {
        while let Some(p) = pipes.recv().await {
            let d = device.clone();
            tokio::spawn(async move { d.serve(p).await });
        }
    });
    let port = Arc::new(Port::new(fake.clone(), UsbFilter::default(), timing()));
    let side = UsbSide::new(port, UsbFilter::default(), Duration::from_millis(20));
    (TokenDriver::with_usb(settings(recovery), "agent-usb", side), fake, ctl)
}

/// Wait (on the driver's change signal, bounded) until health shows `want`.
async fn health_becomes(d: &TokenDriver, want: &str) -> crate::drivers::Health {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let h = d.health().await;
            if h.state.as_str() == want {
                return h;
            }
            d.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("terminal never became {want}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotplug_moves_the_terminal_state() {
    let (d, fake, ctl) = rig(SimOptions::default(), Duration::from_secs(1));
    let h = health_becomes(&d, "connected").await;
    assert_eq!(h.identity["fiscal_no"], "AV0000000121");
    // One link was served (counted when the device side starts serving it).
    assert_eq!(ctl.connections(), 1);

    fake.unplug();
    // The rescan sees the accessory leave and wakes the engine (changed()).
    tokio::time::timeout(Duration::from_secs(5), d.changed()).await.expect("unplug noticed");
    let h = health_becomes(&d, "disconnected").await;
    let err = h.error.expect("error");
    assert!(err.contains("no Token register on the bus"), "{err}");

    fake.plug(android_device(0, "AV0000000121"));
    let h = health_becomes(&d, "connected").await;
    assert_eq!(h.identity["fiscal_no"], "AV0000000121");
    // Connected again through a fresh accessory switch after the replug.
    assert_eq!(accessory_starts(&fake), 2);
}

/// How many accessory switches (control request 53, ACCESSORY_START) the fake has seen.
fn accessory_starts(fake: &FakeUsb) -> usize {
    fake.control_calls()
        .iter()
        .filter(|c| matches!(c, Call::ControlOut { ctrl, .. } if ctrl.request == 53))
        .count()
}

fn payment(id: &str) -> CommandRecord {
    let cmd = parse_command(
        json!({"v": 1, "id": id, "op": "payment", "terminal": "token-1", "amount": 2000, "currency": "TRY",
            "basket": {
                "items": [ {"name": "Su", "price": 2000, "quantity": 1, "section_no": 1} ],
                "payments": [ {"type": 1, "amount": 2000, "description": "nakit"} ]
            }})
        .to_string()
        .as_bytes(),
        65536,
    )
    .expect("valid command");
    let now = chrono::Utc::now();
    CommandRecord {
        state: CmdState::Running,
        started_at: Some(now),
        ..CommandRecord::new(1, cmd, now, now + chrono::Duration::seconds(60))
    }
}

/// Runs a payment; unplugs the fake once the basket was taken (`1 OK`) and, with
/// `replug`, plugs the register back in.
async fn sale_with_unplug(
    d: Arc<TokenDriver>, fake: &Arc<FakeUsb>, id: &str, replug: bool,
) -> crate::engine::settle::Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("store");
    let (tx, mut rx) = mpsc::unbounded_channel::<Evt>();
    let mut ctx = OpContext::new(payment(id), store, tx);
    // Through the engine's settle policy, as the worker runs it.
    let run = tokio::spawn(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        crate::engine::settle::run(
            d.as_ref(),
            &mut ctx,
            crate::engine::settle::Entry::Live,
            &stop,
            &crate::engine::clock::SystemClock,
        )
        .await
        .expect("not stopped")
    });
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("progress")
            .expect("evt channel");
        if e.sub_state.as_deref() == Some("WaitCustomer") {
            break;
        }
    }
    fake.unplug();
    fake.script(|s| s.accessory_open_errors.clear());
    if replug {
        fake.plug(android_device(0, "AV0000000121"));
    }
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the payment ends")
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_mid_sale_then_replug_gets_the_result_without_resending() {
    let (d, fake, ctl) = rig(SimOptions::default(), Duration::from_secs(10));
    health_becomes(&d, "connected").await;
    // The register finishes the sale while the cable is out and sends the result after
    // the next handshake. Reconnects cannot happen before the unplug (opens fail).
    ctl.set(|k| {
        k.drop_link_mid_sale = true;
        k.redeliver_after_reconnect = true;
    });
    fake.script(|s| s.accessory_open_errors = vec![UsbErrorKind::Disconnected; 1000]);
    let d = Arc::new(d);
    let o = sale_with_unplug(d, &fake, "usb-sale-1", true).await;
    assert_eq!(o.state(), FinalState::Succeeded, "{o:?}");
    let id = basket_id("agent-usb", "usb-sale-1");
    assert_eq!(ctl.sales(&id), 1);
    assert_eq!(ctl.baskets_received(), 1, "the basket was sent again");
    // The result came over a new link after the replug (a second accessory switch).
    assert_eq!(accessory_starts(&fake), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_mid_sale_without_a_result_is_unknown() {
    let (d, fake, ctl) =
        rig(SimOptions { sale_delay_ms: 200, ..Default::default() }, Duration::from_secs(1));
    health_becomes(&d, "connected").await;
    fake.script(|s| s.accessory_open_errors = vec![UsbErrorKind::Disconnected; 1000]);
    let o = sale_with_unplug(Arc::new(d), &fake, "usb-sale-2", false).await;
    assert_eq!(o.state(), FinalState::Unknown, "{o:?}");
    let msg = o.error().map(|e| e.message.clone()).unwrap_or_default();
    assert!(msg.contains("check the register's last receipt"), "{msg}");
    assert_eq!(ctl.baskets_received(), 1);
}

/// token.md: the register takes TRY only — another currency is an amount it cannot take
/// (`invalid_amount`), a broken basket a bad request; both before the register is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_currency_the_register_cannot_take_is_invalid_amount() {
    use crate::drivers::Driver;
    let (d, _fake, _ctl) = rig(SimOptions::default(), Duration::from_secs(1));
    let parse = |v: serde_json::Value| {
        crate::api::parse_command(v.to_string().as_bytes(), 65536).expect("valid command")
    };
    let eur = parse(
        serde_json::json!({"v":1,"id":"c-eur","op":"payment","terminal":"t","amount":100,"currency":"EUR"}),
    );
    let r = d.validate(&eur).expect_err("EUR");
    assert_eq!(r.code, crate::api::ErrorCode::InvalidAmount, "{}", r.message);
    let no_basket = parse(
        serde_json::json!({"v":1,"id":"c-nb","op":"payment","terminal":"t","amount":100,"currency":"TRY"}),
    );
    let r = d.validate(&no_basket).expect_err("no basket");
    assert_eq!(r.code, crate::api::ErrorCode::BadRequest, "{}", r.message);
}
