//! The cloud's side for tests: [`Cloud`] records everything under an agent's root and
//! waits for messages by predicate. Both it and the benchmarks stand on
//! [`crate::pos::Client`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use tokio::sync::Notify;

use super::{Agent, AgentSpec};
use crate::pos;

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub json: Value,
    pub retain: bool,
}

/// A cloud POS client that records everything under `{root}/#`.
pub struct Cloud {
    pub client: AsyncClient,
    pub root: String,
    seen: Arc<Mutex<Vec<Msg>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Cloud {
    /// `persistent`: keep a session on the broker (results queue up while the broker
    /// or this client is away).
    pub async fn connect(port: u16, agent_id: &str, client_id: &str, persistent: bool) -> Cloud {
        let root = pos::root(agent_id);
        let mut o = pos::Options::loopback(port, client_id, Some(&format!("{root}/#")));
        o.keep_alive = Duration::from_secs(5);
        o.clean = !persistent;
        let mut c =
            pos::Client::connect(o, Duration::from_secs(30)).await.expect("cloud subscribed");
        let client = c.client.clone();
        let seen: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let (s2, n2) = (seen.clone(), notify.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = c.next().await {
                let json = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                if let Ok(mut v) = s2.lock() {
                    v.push(Msg { topic: m.topic, json, retain: m.retain });
                }
                n2.notify_waiters();
            }
        });
        Cloud { client, root, seen, notify, task }
    }

    pub async fn send(&self, v: Value) {
        self.send_raw(v.to_string().into_bytes()).await;
    }

    pub async fn send_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(format!("{}/cmd", self.root), QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// A message the agent published (any topic under its root but `cmd`) whose JSON text
    /// contains `needle`.
    pub fn published_containing(&self, needle: &str) -> Option<String> {
        let cmd = format!("{}/cmd", self.root);
        self.seen.lock().ok().and_then(|v| {
            v.iter()
                .filter(|m| m.topic != cmd)
                .map(|m| format!("{}: {}", m.topic, m.json))
                .find(|t| t.contains(needle))
        })
    }

    pub fn all(&self, sub: &str) -> Vec<Value> {
        let topic = format!("{}/{}", self.root, sub);
        self.seen
            .lock()
            .map(|v| v.iter().filter(|m| m.topic == topic).map(|m| m.json.clone()).collect())
            .unwrap_or_default()
    }

    /// Wait until a message on `{root}/{sub}` satisfies `pred` (messages already seen count).
    pub async fn wait(&self, sub: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_n(sub, within, 1, pred).await.remove(0)
    }

    /// Wait until `n` messages on `{root}/{sub}` satisfy `pred`; returns all that do.
    pub async fn wait_n(
        &self, sub: &str, within: Duration, n: usize, pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.try_wait_n(sub, within, n, pred).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The retained status turns `degraded` (a store failure); on a timeout the panic
    /// carries the agent's log, which says why it did not.
    pub async fn degraded(&self, agent: &Agent) -> Value {
        match self
            .try_wait_n("status", Duration::from_secs(20), 1, |v| v["state"] == "degraded")
            .await
        {
            Ok(mut v) => v.remove(0),
            Err(e) => panic!("{e}\nagent log:\n{}", agent.log()),
        }
    }

    async fn try_wait_n(
        &self, sub: &str, within: Duration, n: usize, pred: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, String> {
        let topic = format!("{}/{}", self.root, sub);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let found: Vec<Value> = self
                .seen
                .lock()
                .map(|v| {
                    v.iter()
                        .filter(|m| m.topic == topic && pred(&m.json))
                        .map(|m| m.json.clone())
                        .collect()
                })
                .unwrap_or_default();
            if found.len() >= n {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "timed out waiting for {n} message(s) on {topic}; seen: {:#?}",
                    self.seen.lock().map(|v| v.clone()).unwrap_or_default()
                ));
            }
        }
    }

    pub async fn result(&self, id: &str) -> Value {
        let id = Value::String(id.to_string());
        self.wait("result", Duration::from_secs(30), |v| v["id"] == id).await
    }

    /// Like [`Cloud::result`], but a timeout is returned instead of a panic, so a test can
    /// add the agent's log to its failure.
    pub async fn try_result(&self, id: &str) -> Result<Value, String> {
        let id = Value::String(id.to_string());
        let mut found =
            self.try_wait_n("result", Duration::from_secs(30), 1, |v| v["id"] == id).await?;
        Ok(found.remove(0))
    }

    /// Wait (10 s at most) for a result whose error message contains `text`.
    pub async fn refusal(&self, text: &str) -> Value {
        self.wait("result", Duration::from_secs(10), |v| {
            v["error"]["message"].as_str().is_some_and(|m| m.contains(text))
        })
        .await
    }

    /// Send the command `v` and wait for its result (by `v`'s id).
    pub async fn ask(&self, v: Value) -> Value {
        let id = v["id"].as_str().expect("the command has an id").to_string();
        self.send(v).await;
        self.result(&id).await
    }

    pub fn results_for(&self, id: &str) -> Vec<Value> {
        self.all("result").into_iter().filter(|v| v["id"] == id).collect()
    }

    pub async fn online(&self) {
        self.wait("status", Duration::from_secs(20), |v| v["state"] == "online").await;
    }

    /// The agent `spec` describes, started in `dir` with `env`, and a cloud client for it
    /// (`cloud-<agent_id>`, connected first so nothing is missed), once the agent is online.
    pub async fn with_agent(
        spec: &AgentSpec, dir: &std::path::Path, env: &[(&str, &str)],
    ) -> (Cloud, Agent) {
        Self::start_agent(spec, dir, env, false).await
    }

    /// [`Cloud::with_agent`] with a persistent session: results queue up on the broker
    /// while this client is away.
    pub async fn with_agent_persistent(
        spec: &AgentSpec, dir: &std::path::Path, env: &[(&str, &str)],
    ) -> (Cloud, Agent) {
        Self::start_agent(spec, dir, env, true).await
    }

    async fn start_agent(
        spec: &AgentSpec, dir: &std::path::Path, env: &[(&str, &str)], persistent: bool,
    ) -> (Cloud, Agent) {
        let id = &spec.agent_id;
        let cloud = Cloud::connect(spec.broker_port, id, &format!("cloud-{id}"), persistent).await;
        let agent = Agent::start_with(spec, dir, env, &[]);
        cloud.online().await;
        (cloud, agent)
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}
