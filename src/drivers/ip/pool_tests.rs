//! The kept connection (`ip-terminal.md`: a client may reuse it): payments share one
//! connection, and a kept connection the terminal closed costs one resend of the same
//! `ref` on a fresh one — each payment still runs once.

use std::time::Duration;

use super::*;
use crate::drivers::{Answer, Driver};
use crate::sim::ip::{IpSim, SimOptions};
use crate::store::Store;

fn context(store: &Store, id: &str) -> OpContext {
    crate::drivers::test_context(
        store,
        &format!(
            r#"{{"v":1,"id":"{id}","op":"payment","terminal":"ip-1","amount":100,"currency":"AZN"}}"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_share_a_kept_connection_and_a_closed_one_is_resent_once() {
    let sim = IpSim::loopback(SimOptions::approving(Some(1), 0)).await.expect("sim");
    let (stats, control) = (sim.stats(), sim.control());
    let addr = sim.local_addr().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let _sim = sim.spawn(stop.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("open");
    let d = IpDriver::new(addr, Duration::from_secs(5), Duration::from_secs(5));
    for id in ["k-1", "k-2", "k-3"] {
        let f = d.execute(&mut context(&store, id)).await;
        assert!(matches!(f, Fact::Answer(Answer::Approved { .. })), "{id}: {f:?}");
    }
    assert_eq!(stats.connections(), 1, "three payments, one connection");
    // The terminal now drops every connection after its answer: the kept one is dead.
    control.set_close_after_answer(true);
    for id in ["c-1", "c-2", "c-3"] {
        let f = d.execute(&mut context(&store, id)).await;
        assert!(matches!(f, Fact::Answer(Answer::Approved { .. })), "{id}: {f:?}");
        assert_eq!(stats.executions(id), 1, "{id}: ran once");
    }
    stop.cancel();
}
