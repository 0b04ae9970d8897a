//! `posbridge cloud watch`: a live table of every agent under a topic prefix, for operators
//! and field engineers. It listens only (no command is sent): to each agent's retained
//! `status`, its `terminals/{id}` and its `telemetry` heartbeat, so it converges within one
//! telemetry interval even on a broker cluster that keeps retained messages per node.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What is known of one agent.
#[derive(Default)]
struct Seen {
    /// `state` of the retained `status` (`online`, `offline`, `degraded`).
    status: Option<String>,
    version: Option<String>,
    /// Terminal id → state (from `terminals/{id}` and the heartbeat's `terminals`).
    terminals: BTreeMap<String, String>,
    outbox: Option<u64>,
    /// Terminal id → the text of its last error (terminals without one are left out).
    errors: BTreeMap<String, String>,
    money_blocked: bool,
    /// When the last telemetry arrived (this process's clock: the agent's may be off).
    heartbeat: Option<Instant>,
    /// The agent's telemetry interval, as its heartbeat says.
    interval: Option<Duration>,
}

/// Before an agent's first heartbeat says its interval: silent after this long.
const DEFAULT_STALE: Duration = Duration::from_secs(180);

/// Every agent seen under one prefix.
#[derive(Default)]
pub struct Fleet {
    agents: BTreeMap<String, Seen>,
}

/// One row of the table.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub agent: String,
    /// `online`, `offline`, `degraded`, or `silent` (said online, but no heartbeat for
    /// longer than `--stale`).
    pub state: String,
    pub version: String,
    pub terminals: String,
    pub outbox: String,
    pub last_error: String,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_s: Option<u64>,
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

impl Fleet {
    /// Take in one message from `{prefix}/{agent}/…`; anything else is ignored.
    pub fn observe(&mut self, prefix: &str, topic: &str, payload: &[u8], now: Instant) {
        let Some(rest) = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
            return;
        };
        let Some((agent, what)) = rest.split_once('/') else { return };
        // An empty retained message clears the topic (a removed terminal).
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        if !v.is_object() && !payload.is_empty() {
            return;
        }
        let a = self.agents.entry(agent.to_string()).or_default();
        match what.split_once('/') {
            None if what == "status" => {
                a.status = text(&v["state"]);
                a.version = text(&v["version"]).or(a.version.take());
                if v["state"] == "online" {
                    // An object (the hold) while money is held; gone once acknowledged.
                    let held = &v["store"]["money_blocked"];
                    a.money_blocked = held.is_object() || held == true;
                }
            }
            None if what == "telemetry" => {
                a.heartbeat = Some(now);
                a.interval = v["interval_s"].as_u64().map(Duration::from_secs).or(a.interval);
                // The heartbeat carries the agent's state: newer than any retained status.
                a.status = text(&v["state"]).or(a.status.take());
                a.version = text(&v["version"]).or(a.version.take());
                a.outbox = v["outbox_len"].as_u64();
                a.money_blocked = v["money_blocked"].as_bool().unwrap_or(false);
                if let Some(ts) = v["terminals"].as_object() {
                    for (id, t) in ts {
                        if let Some(s) = text(&t["state"]) {
                            a.terminals.insert(id.clone(), s);
                        }
                    }
                }
                if let Some(es) = v["last_error"].as_object() {
                    a.errors =
                        es.iter().filter_map(|(id, e)| Some((id.clone(), text(e)?))).collect();
                }
            }
            Some(("terminals", id)) => match text(&v["state"]) {
                Some(s) => {
                    a.terminals.insert(id.to_string(), s);
                }
                None => {
                    a.terminals.remove(id);
                }
            },
            _ => {}
        }
    }

    /// `stale`: `--stale`, else three of each agent's telemetry intervals.
    pub fn rows(&self, now: Instant, stale: Option<Duration>) -> Vec<Row> {
        self.agents
            .iter()
            .map(|(id, a)| {
                let stale = stale.or(a.interval.map(|i| i * 3)).unwrap_or(DEFAULT_STALE);
                let age = a.heartbeat.map(|h| now.saturating_duration_since(h));
                let state = match (a.status.as_deref(), age) {
                    (Some(s @ ("offline" | "degraded")), _) => s.to_string(),
                    (_, Some(age)) if age > stale => "silent".to_string(),
                    (Some(s), _) => s.to_string(),
                    (None, Some(_)) => "online".to_string(),
                    (None, None) => "?".to_string(),
                };
                let state =
                    if a.money_blocked { format!("{state} (money blocked)") } else { state };
                let terminals =
                    a.terminals.iter().map(|(t, s)| format!("{t}:{s}")).collect::<Vec<_>>();
                let errors = a.errors.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>();
                Row {
                    agent: id.clone(),
                    state,
                    version: a.version.clone().unwrap_or_else(|| "?".into()),
                    terminals: terminals.join(" "),
                    outbox: a.outbox.map_or("?".into(), |n| n.to_string()),
                    last_error: errors.join("; "),
                    heartbeat_age_s: age.map(|a| a.as_secs()),
                }
            })
            .collect()
    }

    /// The table as text, one agent per line, with a summary line.
    pub fn table(&self, now: Instant, stale: Option<Duration>) -> String {
        let rows = self.rows(now, stale);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<9} {:>6} {:>6}  {:<40} LAST ERROR",
            "AGENT", "STATE", "VERSION", "OUTBOX", "BEAT", "TERMINALS"
        );
        for r in &rows {
            let beat = r.heartbeat_age_s.map_or("-".into(), |s| format!("{s}s"));
            let _ = writeln!(
                out,
                "{:<24} {:<10} {:<9} {:>6} {:>6}  {:<40} {}",
                r.agent,
                r.state,
                r.version,
                r.outbox,
                beat,
                r.terminals,
                clip(&r.last_error, 60)
            );
        }
        let online = rows.iter().filter(|r| r.state.starts_with("online")).count();
        let _ = writeln!(out, "{} agents, {online} online", rows.len());
        out
    }

    /// The table as one JSON value (`--json`).
    pub fn json(&self, now: Instant, stale: Option<Duration>) -> Value {
        let rows = self.rows(now, stale);
        json!({"agents": rows.iter().map(|r| json!({
            "agent": r.agent, "state": r.state, "version": r.version, "terminals": r.terminals,
            "outbox": r.outbox, "last_error": r.last_error, "heartbeat_age_s": r.heartbeat_age_s,
        })).collect::<Vec<_>>()})
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// How `watch` runs.
pub struct WatchOptions {
    pub prefix: String,
    /// Redraw this often.
    pub every: Duration,
    /// Stop after this long, printing the table once more (`None`: until interrupted).
    pub stop_after: Option<Duration>,
    /// Show an agent as `silent` after this long without a heartbeat (`None`: three of
    /// its own telemetry intervals).
    pub stale: Option<Duration>,
    /// One JSON line per redraw instead of the table.
    pub json: bool,
}

/// Listen on `client` (subscribed to the prefix's status, terminals and telemetry) and
/// print the table every `every`, until `stop_after` or Ctrl-C.
pub async fn watch(mut client: crate::pos::Client, o: WatchOptions) -> anyhow::Result<()> {
    let mut fleet = Fleet::default();
    let started = Instant::now();
    let redraw = std::io::stdout().is_terminal() && !o.json && o.stop_after.is_none();
    let mut tick = tokio::time::interval(o.every);
    tick.tick().await;
    let show = |fleet: &Fleet| {
        let now = Instant::now();
        if o.json {
            println!("{}", fleet.json(now, o.stale));
        } else {
            if redraw {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", fleet.table(now, o.stale));
            if !redraw {
                println!();
            }
        }
    };
    loop {
        let left = o.stop_after.map(|d| d.saturating_sub(started.elapsed()));
        tokio::select! {
            m = client.next() => match m {
                Some(m) => fleet.observe(&o.prefix, &m.topic, &m.payload, Instant::now()),
                None => anyhow::bail!("the broker connection ended"),
            },
            _ = tick.tick() => {
                if o.stop_after.is_none() {
                    show(&fleet);
                }
            }
            _ = tokio::time::sleep(left.unwrap_or(Duration::MAX)), if left.is_some() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    show(&fleet);
    Ok(())
}

/// The filters `watch` subscribes to.
pub fn filters(prefix: &str) -> Vec<String> {
    ["status", "telemetry", "terminals/+"].iter().map(|t| format!("{prefix}/+/{t}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_status_terminals_and_heartbeats() {
        let t0 = Instant::now();
        let stale = Some(Duration::from_secs(180));
        let mut f = Fleet::default();
        f.observe(
            "posbridge",
            "posbridge/shop-1/status",
            br#"{"v":1,"state":"online","version":"0.1.0"}"#,
            t0,
        );
        f.observe(
            "posbridge",
            "posbridge/shop-1/terminals/ip-1",
            br#"{"v":1,"state":"connected"}"#,
            t0,
        );
        f.observe("posbridge", "posbridge/shop-2/telemetry",
            br#"{"v":1,"state":"online","version":"0.2.0","outbox_len":3,"terminals":{"k-1":{"kind":"kaspi","state":"unreachable"}},"last_error":{"k-1":"connect refused"}}"#, t0);
        // Not ours, not JSON, or under another prefix: ignored.
        f.observe("posbridge", "other/shop-3/status", br#"{"state":"online"}"#, t0);
        f.observe("posbridge", "posbridge/shop-4/status", b"garbage", t0);
        f.observe("posbridge", "posbridge/shop-1", b"{}", t0);
        let rows = f.rows(t0, stale);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (rows[0].agent.as_str(), rows[0].state.as_str(), rows[0].terminals.as_str()),
            ("shop-1", "online", "ip-1:connected")
        );
        assert_eq!(rows[0].heartbeat_age_s, None);
        let r = &rows[1];
        assert_eq!(
            (r.state.as_str(), r.version.as_str(), r.outbox.as_str()),
            ("online", "0.2.0", "3")
        );
        assert_eq!(
            (r.terminals.as_str(), r.last_error.as_str()),
            ("k-1:unreachable", "k-1: connect refused")
        );
        // No heartbeat for longer than `stale`: silent, whatever the retained status says.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(f.rows(later, stale)[1].state, "silent");
        // The last will (or a clean stop) says offline; an empty retained terminal clears it.
        f.observe("posbridge", "posbridge/shop-1/status", br#"{"v":1,"state":"offline"}"#, t0);
        f.observe("posbridge", "posbridge/shop-1/terminals/ip-1", b"", t0);
        let r = &f.rows(t0, stale)[0];
        assert_eq!((r.state.as_str(), r.terminals.as_str()), ("offline", ""));
        let table = f.table(t0, stale);
        assert!(table.contains("shop-2") && table.ends_with("2 agents, 1 online\n"), "{table}");
    }

    /// Without `--stale`, an agent is silent after three of its own telemetry intervals
    /// (as its heartbeat says), and a held store shows until the status drops the hold.
    #[test]
    fn silence_follows_each_agents_interval_and_the_hold_its_status() {
        let t0 = Instant::now();
        let mut f = Fleet::default();
        let beat = |interval: u64| {
            format!(r#"{{"v":1,"state":"online","interval_s":{interval},"money_blocked":false}}"#)
        };
        f.observe("p", "p/fast/telemetry", beat(10).as_bytes(), t0);
        f.observe("p", "p/slow/telemetry", beat(600).as_bytes(), t0);
        f.observe("p", "p/unknown/status", br#"{"v":1,"state":"online"}"#, t0);
        let at = |s| t0 + Duration::from_secs(s);
        let states = |f: &Fleet, t, stale| -> Vec<String> {
            f.rows(t, stale).into_iter().map(|r| r.state).collect()
        };
        assert_eq!(states(&f, at(29), None), ["online", "online", "online"]);
        assert_eq!(states(&f, at(31), None), ["silent", "online", "online"]);
        assert_eq!(states(&f, at(1799), None), ["silent", "online", "online"]);
        assert_eq!(states(&f, at(1801), None), ["silent", "silent", "online"]);
        // `--stale` given: the same for every agent.
        assert_eq!(states(&f, at(100), Some(Duration::from_secs(500))), ["online"; 3]);
        // A retained status holding money, then the same status without the hold.
        let held = br#"{"v":1,"state":"online","store":{"money_blocked":{"since":"x"}}}"#;
        f.observe("p", "p/unknown/status", held, t0);
        assert_eq!(f.rows(t0, None)[2].state, "online (money blocked)");
        f.observe("p", "p/unknown/status", br#"{"v":1,"state":"online","store":{}}"#, t0);
        assert_eq!(f.rows(t0, None)[2].state, "online");
    }
}
