//! The engine end to end (intake → queue → worker → settle → outbox) against a fake
//! driver and a real store, on paused tokio time with the engine's [`TokioClock`]: time
//! moves by `tokio::time::advance`, never by sleeping.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, TokioClock};
use super::{CheckpointSchedule, Engine, EngineConfig, Incoming, Outbound};
use crate::api::Op;
use crate::drivers::{Caps, Driver, Fact, Health, OpContext};
use crate::store::{CmdState, Store};

/// The fake terminal of the engine's tests (here and `settle`'s): `execute` answers with
/// one scripted fact (journalling `sending` first when the fact says the request may have
/// left), each `ask` with the next scripted fact, `Lost` once the script runs out. A gated
/// one takes as long as the test says: it reports that it started, then waits for
/// `release` before it answers.
pub(super) struct Fake {
    first: Fact,
    asks: Mutex<VecDeque<Fact>>,
    window: Duration,
    gated: bool,
    pub(super) started: Notify,
    pub(super) release: Notify,
    pub(super) executed: AtomicU32,
    pub(super) asked: AtomicU32,
}

impl Fake {
    pub(super) fn new(first: Fact, asks: Vec<Fact>, window: Duration) -> Fake {
        Fake {
            first,
            asks: Mutex::new(asks.into()),
            window,
            gated: false,
            started: Notify::new(),
            release: Notify::new(),
            executed: AtomicU32::new(0),
            asked: AtomicU32::new(0),
        }
    }

    /// Answers `first` once released.
    fn gated(first: Fact) -> Fake {
        Fake { gated: true, ..Fake::new(first, vec![], Duration::ZERO) }
    }
}

#[async_trait]
impl Driver for Fake {
    fn caps(&self) -> &'static Caps {
        &Caps { kind: "fake", ops: &[] }
    }
    fn supports(&self, _op: Op) -> bool {
        true
    }
    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        self.executed.fetch_add(1, Ordering::SeqCst);
        if !matches!(self.first, Fact::NotSent { .. }) {
            ctx.sending("fake_sending", json!({})).await.expect("journal");
        }
        if self.gated {
            self.started.notify_one();
            self.release.notified().await;
        }
        self.first.clone()
    }
    async fn ask(&self, _ctx: &mut OpContext, _left: Duration) -> Fact {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.asks
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| Fact::lost("scripted: no answer"))
    }
    fn recovery_window(&self) -> Duration {
        self.window
    }
    async fn health(&self) -> Health {
        Health { state: crate::api::TerminalState::Connected, identity: json!({}), error: None }
    }
}

fn payment(id: &str, expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Incoming {
    let mut v = json!({"v":1,"id":id,"op":"payment","terminal":"t","amount":100,"currency":"AZN"});
    if let Some(e) = expires_at {
        v["expires_at"] = json!(crate::api::ts(e));
    }
    Incoming {
        payload: v.to_string().into_bytes(),
        ack: Box::new(|| Box::pin(async {})),
        slot: None,
        received: 0,
    }
}

async fn state_of(store: &Store, id: &str) -> CmdState {
    loop {
        if let Some(r) = store.get(id).expect("get") {
            if r.state.is_final() {
                return r.state;
            }
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_in_the_queue_expires_the_command_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("open");
    let clock = Arc::new(TokioClock::new());
    let slow = Arc::new(Fake::gated(Fact::approved(None, Some(json!({ "ok": true })))));
    let (engine, _stop, _out) = engine_on(&store, clock.clone(), slow.clone());
    engine.start().expect("start");
    engine.intake_batch(vec![payment("first", None)]).await.expect("intake");
    slow.started.notified().await;
    // Queued behind the running payment, with five seconds to start.
    let deadline = clock.now() + chrono::Duration::seconds(5);
    engine.intake_batch(vec![payment("second", Some(deadline))]).await.expect("intake");
    tokio::time::advance(Duration::from_secs(10)).await;
    slow.release.notify_one();
    assert_eq!(state_of(&store, "first").await, CmdState::Succeeded);
    assert_eq!(state_of(&store, "second").await, CmdState::Expired);
    let second = store.get("second").expect("get").expect("stored");
    let why = second.result.and_then(|r| r.error).map(|e| e.message).unwrap_or_default();
    assert!(why.contains("while queued"), "{why}");
    assert_eq!(slow.executed.load(Ordering::SeqCst), 1, "the terminal ran only the first");
}

/// Each admitted command gets one progress event for the state it enters (`mqtt-api.md`,
/// `evt`): `accepted` when it starts at once, `queued` when it waits behind another, each
/// with its terminal and place in the queue.
#[tokio::test(start_paused = true)]
async fn an_admitted_command_gets_one_progress_event_for_the_state_it_enters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("open");
    let slow = Arc::new(Fake::gated(Fact::approved(None, Some(json!({ "ok": true })))));
    let (engine, _stop, mut out) = engine_on(&store, Arc::new(TokioClock::new()), slow.clone());
    engine.start().expect("start");
    engine.intake_batch(vec![payment("first", None)]).await.expect("intake");
    slow.started.notified().await;
    engine
        .intake_batch(vec![payment("second", None), payment("third", None)])
        .await
        .expect("intake");
    slow.release.notify_one();
    for _ in 0..2 {
        slow.started.notified().await;
        slow.release.notify_one();
    }
    assert_eq!(state_of(&store, "third").await, CmdState::Succeeded);
    use crate::api::Progress::{Accepted, InProgress, Queued};
    let mut seen = Vec::new();
    while let Ok(o) = out.try_recv() {
        if let Outbound::Evt(e) = o {
            seen.push((e.id, e.state, e.detail));
        }
    }
    let admitted = |id: &str| -> Vec<_> {
        seen.iter()
            .filter(|(i, s, _)| i == id && *s != InProgress)
            .map(|(_, s, d)| (*s, d.clone()))
            .collect()
    };
    let at = |n: u32| Some(json!({"terminal": "t", "queue_position": n}));
    assert_eq!(admitted("first"), vec![(Accepted, at(1))], "{seen:?}");
    assert_eq!(admitted("second"), vec![(Queued, at(1))], "{seen:?}");
    assert_eq!(admitted("third"), vec![(Queued, at(2))], "{seen:?}");
    for id in ["first", "second", "third"] {
        assert!(seen.iter().any(|(i, s, _)| i == id && *s == InProgress), "{id}: {seen:?}");
    }
}

/// A wall clock that stands still at one moment.
#[derive(Debug)]
struct Fixed(chrono::DateTime<chrono::Utc>);

impl Clock for Fixed {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0
    }
}

/// An engine over `store` with one fake terminal `t`, on `clock`; with its stop token, and
/// the receiving end of its outbound channel (kept by the caller for the test's length).
fn engine_on(
    store: &Store, clock: Arc<dyn Clock>, driver: Arc<Fake>,
) -> (Engine, CancellationToken, mpsc::UnboundedReceiver<Outbound>) {
    engine_checkpointing(store, clock, driver, CheckpointSchedule::default())
}

/// [`engine_on`] with its own checkpoint schedule.
fn engine_checkpointing(
    store: &Store, clock: Arc<dyn Clock>, driver: Arc<Fake>, checkpoints: CheckpointSchedule,
) -> (Engine, CancellationToken, mpsc::UnboundedReceiver<Outbound>) {
    let (out, out_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            default_ttl: Duration::from_secs(3600),
            max_bytes: 65536,
            queue_depth: 16,
            health_interval: Duration::from_secs(3600),
            version: "test".into(),
            retention: Duration::from_secs(86_400),
            command_keys: Default::default(),
            agent_id: "a".into(),
            max_command_age: Duration::from_secs(900),
            allow_unreferenced_refunds: false,
            clock,
            checkpoints,
        },
        vec![("t".into(), driver)],
        Arc::new(Notify::new()),
        out,
        stop.clone(),
    );
    (engine, stop, out_rx)
}

/// The prune loop (its pass on a blocking thread) forgets finished commands past
/// `store.retention` once the engine starts, and keeps the newest (the store's watermark).
#[tokio::test]
async fn a_started_engine_prunes_commands_finished_before_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("open");
    let approve = || {
        Arc::new(Fake::new(Fact::approved(None, Some(json!({"ok": true}))), vec![], Duration::ZERO))
    };
    // Three days ago: two payments, finished then.
    let then = chrono::Utc::now() - chrono::Duration::days(3);
    let (old, stop_old, _old_out) = engine_on(&store, Arc::new(Fixed(then)), approve());
    old.start().expect("start");
    for id in ["old-1", "old-2"] {
        old.intake_batch(vec![payment(id, None)]).await.expect("intake");
        assert_eq!(state_of(&store, id).await, CmdState::Succeeded);
    }
    stop_old.cancel();
    store.commit().await.expect("commit");

    // Today, with a one-day retention: the first pass runs at start.
    let (now, stop_now, _now_out) =
        engine_on(&store, Arc::new(Fixed(chrono::Utc::now())), approve());
    now.start().expect("start");
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.get("old-1").expect("get").is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("old-1 pruned");
    assert!(store.get("old-2").expect("get").is_some(), "the newest record is kept");
    stop_now.cancel();
}

/// The started engine checkpoints the store on its schedule: a payment's changes are put
/// into sled (and dropped from memory) at the first look once they reach `held_bytes`,
/// or once `at_most_every` has passed with fewer.
#[tokio::test]
async fn a_started_engine_checkpoints_on_held_bytes_or_after_its_bound() {
    let look = Duration::from_millis(20);
    let by_size = CheckpointSchedule {
        look_every: look,
        held_bytes: 1,
        at_most_every: Duration::from_secs(3600),
    };
    let by_time = CheckpointSchedule {
        look_every: look,
        held_bytes: usize::MAX,
        at_most_every: Duration::from_millis(200),
    };
    for (n, schedule) in [by_size, by_time].into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(&dir.path().join("store")).expect("open");
        let approve = Arc::new(Fake::new(
            Fact::approved(None, Some(json!({"ok": true}))),
            vec![],
            Duration::ZERO,
        ));
        let (engine, stop, _out) =
            engine_checkpointing(&store, Arc::new(Fixed(chrono::Utc::now())), approve, schedule);
        engine.start().expect("start");
        let id = format!("ck-{n}");
        engine.intake_batch(vec![payment(&id, None)]).await.expect("intake");
        assert_eq!(state_of(&store, &id).await, CmdState::Succeeded);
        // Only a checkpoint drops held changes (the store's own test shows they are held).
        tokio::time::timeout(Duration::from_secs(30), async {
            while store.held_bytes() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{schedule:?}: no checkpoint"));
        assert!(store.get(&id).expect("get").is_some(), "the record is in sled");
        stop.cancel();
    }
}
