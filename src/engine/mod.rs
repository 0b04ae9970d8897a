//! The engine: validates, de-duplicates, applies deadlines, queues per terminal (one
//! operation at a time per device), resumes unfinished work at start, and turns driver
//! outcomes into results in the outbox.

mod admit;
mod authorize;
mod cancel;
mod checkpoint;
pub mod clock;
mod deadline;
mod dedup;
#[cfg(test)]
mod engine_tests;
mod intake;
mod queries;
mod refunds;
mod resume;
pub(crate) mod settle;
mod worker;

pub use checkpoint::CheckpointSchedule;
pub use intake::Incoming;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::settle::Outcome;
use crate::api::{ts, Evt, FinalState, ResultMsg};
use crate::drivers::DynDriver;
use crate::store::{CommandRecord, OutMsg, Store, StoreError};

/// Work to do once the batch is durable and acknowledged.
pub(crate) enum After {
    Evt(Evt),
    /// Wake this terminal's worker: it has a command queued.
    Wake(String),
    /// Wake this terminal's worker, which was idle with an empty queue: it starts the
    /// command at once, and its first journal step's commit can cover the intake too.
    Start(String),
    Query(String),
    /// Answer a `list` off the intake path.
    List(String),
    /// Ask the device to cancel the running target of this `cancel` command.
    CancelRunning(String),
}

/// Messages the engine hands to the bus besides the outbox (which the bus reads itself).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// `{root}/evt`, QoS 0.
    Evt(Evt),
    /// `{root}/terminals/{id}`, QoS 1 retained; the bus republishes the latest on reconnect.
    Terminal { id: String, payload: Value },
    /// `{root}/telemetry`, QoS 0.
    Telemetry(Value),
    /// The store failed: retained `status` becomes `degraded` with this reason (kept at
    /// stop instead of `offline`), and every terminal's retained state `error`.
    StoreFailed(String),
    /// An operator lifted the store's money hold (`posbridge store acknowledge` through
    /// the control socket): the retained `status` drops `store.money_blocked`, now.
    HoldLifted,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub default_ttl: Duration,
    pub max_bytes: usize,
    pub queue_depth: usize,
    /// How often an idle terminal is probed for the retained terminal state.
    pub health_interval: Duration,
    pub version: String,
    /// Finished commands older than this are pruned from the store.
    pub retention: Duration,
    /// When non-empty, only signed envelopes are accepted (`mqtt-api.md`: Signed commands).
    pub command_keys: crate::api::signature::CommandKeys,
    /// This agent's id: a command naming another agent is refused.
    pub agent_id: String,
    /// A signed command's `expires_at` may be at most this far ahead of its receipt.
    pub max_command_age: Duration,
    /// Refunds by `transaction_id` without `original` are taken.
    pub allow_unreferenced_refunds: bool,
    /// The wall clock every deadline and window is decided on.
    pub clock: Arc<dyn clock::Clock>,
    /// When the store is checkpointed.
    pub checkpoints: CheckpointSchedule,
}

struct Terminal {
    id: String,
    driver: DynDriver,
    queue: Mutex<VecDeque<String>>,
    wake: Notify,
    /// Commands found running at start, resumed before the queue.
    resume: Mutex<Vec<String>>,
    running: Mutex<Option<String>>,
    state: Mutex<TerminalView>,
}

#[derive(Debug, Clone, Default)]
struct TerminalView {
    /// `None` until the first probe.
    state: Option<crate::api::TerminalState>,
    since: Option<DateTime<Utc>>,
    identity: Value,
    last_error: Option<String>,
}

/// Counters for telemetry.
#[derive(Default)]
pub struct Stats {
    by_state: Mutex<BTreeMap<&'static str, u64>>,
    pub commands_received: AtomicU64,
}

impl Stats {
    fn count(&self, s: FinalState) {
        if let Ok(mut m) = self.by_state.lock() {
            *m.entry(s.as_str()).or_default() += 1;
        }
    }

    pub fn by_state(&self) -> BTreeMap<&'static str, u64> {
        self.by_state.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

pub(crate) struct Inner {
    store: Store,
    cfg: EngineConfig,
    terminals: HashMap<String, Arc<Terminal>>,
    outbox_notify: Arc<Notify>,
    out: mpsc::UnboundedSender<Outbound>,
    evt_tx: mpsc::UnboundedSender<Evt>,
    stats: Stats,
    started_at: DateTime<Utc>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Bumped by the intake loop, idle or not; the systemd watchdog checks it moves.
    beat: crate::systemd::Beat,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn new(
        store: Store, cfg: EngineConfig, drivers: Vec<(String, DynDriver)>,
        outbox_notify: Arc<Notify>, out: mpsc::UnboundedSender<Outbound>,
        shutdown: CancellationToken,
    ) -> Engine {
        let terminals = drivers
            .into_iter()
            .map(|(id, driver)| {
                let t = Terminal {
                    id: id.clone(),
                    driver,
                    queue: Mutex::new(VecDeque::new()),
                    wake: Notify::new(),
                    resume: Mutex::new(Vec::new()),
                    running: Mutex::new(None),
                    state: Mutex::new(TerminalView { state: None, ..Default::default() }),
                };
                (id, Arc::new(t))
            })
            .collect();
        // Progress events from drivers go straight to the bus.
        let (evt_tx, mut evt_rx) = mpsc::unbounded_channel::<Evt>();
        let fwd = out.clone();
        tokio::spawn(async move {
            while let Some(e) = evt_rx.recv().await {
                let _ = fwd.send(Outbound::Evt(e));
            }
        });
        let started_at = cfg.clock.now();
        Engine {
            inner: Arc::new(Inner {
                store,
                cfg,
                terminals,
                outbox_notify,
                out,
                evt_tx,
                stats: Stats::default(),
                started_at,
                shutdown,
                tasks: TaskTracker::new(),
                beat: crate::systemd::Beat::new(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The intake loop's progress counter (for the systemd watchdog).
    pub fn beat(&self) -> crate::systemd::Beat {
        self.inner.beat.clone()
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.inner.started_at
    }

    pub fn queue_lens(&self) -> BTreeMap<String, usize> {
        self.inner
            .terminals
            .values()
            .map(|t| (t.id.clone(), t.queue.lock().map(|q| q.len()).unwrap_or(0)))
            .collect()
    }

    /// Each terminal's state as on its retained `terminals/{id}` topic (`kind`, `state`,
    /// `since`): telemetry repeats it so a cloud client that missed the retained message
    /// (a broker cluster that keeps retained messages per node) converges within one
    /// interval.
    pub fn terminal_states(&self) -> BTreeMap<String, Value> {
        self.inner
            .terminals
            .values()
            .map(|t| {
                let (state, since) = t.state.lock().map(|s| (s.state, s.since)).unwrap_or_default();
                let state =
                    json!({ "kind": t.driver.kind(), "state": state, "since": since.map(ts) });
                (t.id.clone(), state)
            })
            .collect()
    }

    pub fn last_errors(&self) -> BTreeMap<String, Option<String>> {
        self.inner
            .terminals
            .values()
            .map(|t| {
                let e = t.state.lock().ok().and_then(|s| s.last_error.clone());
                (t.id.clone(), e)
            })
            .collect()
    }

    /// Hand unfinished commands back to their terminals and start one worker per terminal.
    /// Must run before the bus starts delivering commands.
    pub fn start(&self) -> Result<(), StoreError> {
        resume::hand_back(&self.inner)?;
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move { dedup::prune_loop(inner).await });
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move { checkpoint::run(inner).await });
        for t in self.inner.terminals.values() {
            let inner = self.inner.clone();
            let t = t.clone();
            self.inner.tasks.spawn(async move { worker::run(inner, t).await });
        }
        Ok(())
    }

    /// Wait for the workers to reach a journalled point after shutdown was requested.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of plain data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Put a record into its final state and its result into the outbox, in one atomic
    /// write. The caller commits.
    fn finalize(
        &self, rec: &mut CommandRecord, outcome: Outcome, extra: &[&CommandRecord],
    ) -> Result<ResultMsg, StoreError> {
        self.finalize_with(rec, outcome, extra, |_| {})
    }

    /// [`Inner::finalize`], letting the caller add answer fields (`items`, `target`, …).
    fn finalize_with(
        &self, rec: &mut CommandRecord, outcome: Outcome, extra: &[&CommandRecord],
        decorate: impl FnOnce(&mut ResultMsg),
    ) -> Result<ResultMsg, StoreError> {
        let now = self.cfg.clock.now();
        let mut res = ResultMsg::new(Some(rec.cmd.id.to_string()), outcome.state);
        res.op = Some(rec.cmd.op());
        res.terminal = rec.cmd.terminal.as_ref().map(|t| t.to_string());
        res.amount = rec.cmd.amount();
        res.currency = rec.cmd.currency().map(|c| c.to_string());
        res.payment = outcome.payment;
        res.device = outcome.device;
        res.error = outcome.error;
        res.needs_reconciliation = outcome.state == FinalState::Unknown;
        res.started_at = rec.started_at.map(ts);
        res.finished_at = Some(ts(now));
        res.mode = rec
            .cmd
            .terminal
            .as_ref()
            .and_then(|t| self.terminals.get(t.as_str()))
            .and_then(|t| t.driver.mode())
            .map(str::to_string);
        decorate(&mut res);
        rec.state = outcome.state.into();
        rec.result = Some(res.clone());
        let mut records: Vec<&CommandRecord> = vec![rec];
        records.extend_from_slice(extra);
        self.store.write(&records, &[OutMsg::result(&res)])?;
        self.stats.count(outcome.state);
        Ok(res)
    }

    /// Finalize, commit, and wake the bus.
    async fn finish(&self, rec: &mut CommandRecord, outcome: Outcome) -> Result<(), StoreError> {
        self.finish_with(rec, outcome, |_| {}).await
    }

    /// [`Inner::finish`], letting the caller add answer fields (`items`, `target`, …).
    async fn finish_with(
        &self, rec: &mut CommandRecord, outcome: Outcome, decorate: impl FnOnce(&mut ResultMsg),
    ) -> Result<(), StoreError> {
        let res = self.finalize_with(rec, outcome, &[], decorate)?;
        self.store.commit().await?;
        crate::stages::mark(&rec.cmd.id, "result_durable");
        self.outbox_notify.notify_one();
        tracing::info!(id = %rec.cmd.id, state = res.state.as_str(), "command finished");
        Ok(())
    }

    fn evt(&self, e: Evt) {
        let _ = self.out.send(Outbound::Evt(e));
    }

    fn set_terminal_state(
        &self, t: &Terminal, state: crate::api::TerminalState, identity: Option<Value>,
        err: Option<String>,
    ) {
        let payload = {
            let mut v = lock(&t.state);
            let changed = v.state != Some(state)
                || identity.as_ref().is_some_and(|i| *i != v.identity)
                || (err.is_some() && err != v.last_error);
            if !changed {
                return;
            }
            if v.state != Some(state) {
                v.state = Some(state);
                v.since = Some(self.cfg.clock.now());
            }
            if let Some(i) = identity {
                if !i.is_null() {
                    v.identity = i;
                }
            }
            if err.is_some() {
                v.last_error = err;
            }
            let mut p = json!({
                "v": crate::api::API_VERSION,
                "terminal": t.id,
                "kind": t.driver.kind(),
                "state": v.state,
                "since": v.since.map(ts),
            });
            if !v.identity.is_null() {
                p["identity"] = v.identity.clone();
            }
            if let Some(e) = &v.last_error {
                p["last_error"] = Value::String(e.clone());
            }
            p
        };
        let _ = self.out.send(Outbound::Terminal { id: t.id.clone(), payload });
    }
}
