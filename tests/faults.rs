//! Fault injection: a stream of mixed commands across simulated terminals while the agent
//! is killed (-9) at named journal points and at random moments, the broker is restarted
//! and terminal answers are lost. After the run: every accepted command id has exactly one
//! final outcome (delivered at least once, every delivery the same), no terminal executed
//! any reference twice, nothing is lost, and the store reopens cleanly.
//!
//! A short run is part of the normal suite. The soak: `POSBRIDGE_SOAK_FAULTS=1000 cargo
//! test --release --test faults -- --nocapture`.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use posbridge::sim::ip::{IpSim, SimOptions, SimStats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A fiscal sale on the Token register (basket adds up to 2000 kuruş).
fn token_sale(id: &str) -> Value {
    json!({"v":1,"id":id,"op":"payment","terminal":"token-1","amount":2000,"currency":"TRY",
        "basket":{"items":[{"name":"Su","price":2000,"quantity":1,"section_no":1}],
                  "payments":[{"type":1,"amount":2000}]}})
}

/// A Kaspi payment (whole tenge; amounts ending in 00 tenge follow the simulator's
/// ordinary draw: card or QR, declined with its fail rate).
fn kaspi_sale(id: &str, tenge: i64) -> Value {
    json!({"v":1,"id":id,"op":"payment","terminal":"kaspi-1","amount":tenge * 100,"currency":"KZT"})
}

/// A pay-by-link payment (amounts ending in 00 complete at the first verify; 58: the first
/// verify's answer is cut short; 59: the create's answer is cut short).
fn kuveyt_sale(id: &str, amount: i64) -> Value {
    json!({"v":1,"id":id,"op":"payment","terminal":"kv-1","amount":amount,"currency":"TRY"})
}

/// A Paywall sale (amounts ending in 00 succeed on the mock).
fn paywall_sale(id: &str, amount: i64) -> Value {
    json!({"v":1,"id":id,"op":"payment","terminal":"pw-1","amount":amount,"currency":"TRY",
        "products":[{"name":"Kahve","amount":amount,"quantity":1,"tax_group_id":10,"unit_code_id":1}]})
}

/// Send `cmd` and book it (by its id) among the commands that must reach a final result.
async fn send_booked(
    cloud: &Cloud, sent: &mut BTreeMap<String, Value>, counts: &mut Counts, cmd: Value,
) {
    cloud.send(cmd.clone()).await;
    let id = cmd["id"].as_str().unwrap_or_default().to_string();
    sent.insert(id, cmd);
    counts.commands += 1;
}

#[derive(Default, Debug)]
struct Counts {
    commands: usize,
    aborts_at_points: usize,
    random_kills: usize,
    broker_restarts: usize,
    lost_answers: usize,
    garbled_answers: usize,
    sync_errors: usize,
    store_damage: usize,
}

impl Counts {
    fn faults(&self) -> usize {
        self.aborts_at_points
            + self.random_kills
            + self.broker_restarts
            + self.lost_answers
            + self.garbled_answers
            + self.sync_errors
            + self.store_damage
    }
}

async fn sim(seed: u64) -> (IpSim, SimStats) {
    let s = IpSim::loopback(SimOptions {
        fail_rate: 0.1,
        seed: Some(seed),
        delay_ms: 30,
        ..Default::default()
    })
    .await
    .expect("sim");
    let stats = s.stats();
    (s, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_commands_under_faults_keep_every_promise() {
    let target: usize =
        std::env::var("POSBRIDGE_SOAK_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let seed: u64 =
        std::env::var("POSBRIDGE_FAULT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20261123);
    let mut rng = StdRng::seed_from_u64(seed);

    let mut mosq = if mosquitto_available() { Some(Mosquitto::start()) } else { None };
    let port = match &mosq {
        Some(m) => m.port,
        None => embedded().port(),
    };
    let stop = CancellationToken::new();
    let (s1, st1) = sim(seed).await;
    let (s2, st2) = sim(seed + 1).await;
    let (a1, a2) = (s1.local_addr(), s2.local_addr());
    let (c1, c2) = (s1.control(), s2.control());
    let _t1 = s1.spawn(stop.clone());
    let _t2 = s2.spawn(stop.clone());

    // A Token register and a Paywall cloud beside the two IP terminals.
    let token = token_sim(seed).await;
    let token_addr = token.local_addr();
    let token_ctl = token.control();
    let _t3 = token.spawn(stop.clone());
    let (paywall_url, paywall_stats) = cloud_mock::<posbridge::sim::paywall::Paywall>(&stop).await;
    // A Kaspi Smart POS (plain HTTP API) and a pay-by-link provider.
    let kaspi = posbridge::sim::kaspi::KaspiSim::bind(
        "127.0.0.1:0".parse().expect("addr"),
        posbridge::sim::kaspi::SimOptions {
            seed: Some(seed),
            customer_time: Duration::from_millis(50),
            actualize_gap: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .expect("kaspi sim");
    let kaspi_url = kaspi.url();
    let (kaspi_stats, kaspi_ctl) = (kaspi.stats(), kaspi.control());
    let _t5 = kaspi.spawn(stop.clone());
    let (kuveyt_url, kuveyt_stats) = cloud_mock::<posbridge::sim::kuveyt::Kuveyt>(&stop).await;

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("api_key"), "test-api-key\n").expect("key");
    std::fs::write(dir.path().join("client_key"), "test-secret\n").expect("key");
    std::fs::write(dir.path().join("api_secret"), "test-secret\n").expect("key");
    let extra = format!(
        "[[terminals]]\nid = \"token-1\"\nkind = \"token\"\ntransport = \"tcp\"\naddr = \"{token_addr}\"\nconnect_timeout = \"3s\"\nop_timeout = \"10s\"\nrecovery_window = \"2s\"\n\
         [[terminals]]\nid = \"pw-1\"\nkind = \"paywall\"\nmode = \"test\"\ntest_url = \"{paywall_url}\"\nterminal_guid = \"8ff33705-57c7-42dc-8341-a0053e7f3009\"\nop_timeout = \"20s\"\nrecovery_window = \"3s\"\napi_key_file = \"{d}/api_key\"\nclient_key_file = \"{d}/client_key\"\n\
         [[terminals]]\nid = \"kaspi-1\"\nkind = \"kaspi\"\nurl = \"{kaspi_url}\"\nprotected = false\npoll_interval = \"50ms\"\nactualize_interval = \"200ms\"\nactualize_window = \"1s\"\npayment_timeout = \"20s\"\nrequest_timeout = \"3s\"\n\
         [[terminals]]\nid = \"kv-1\"\nkind = \"kuveyt\"\nmode = \"test\"\ntest_url = \"{kuveyt_url}\"\napi_key_file = \"{d}/api_key\"\napi_secret_file = \"{d}/api_secret\"\npoll_interval = \"2s\"\n",
        d = dir.path().display()
    );
    let spec = AgentSpec {
        queue_depth: 64,
        extra,
        ..AgentSpec::new("shop-faults", port).ip("ip-1", a1).ip("ip-2", a2)
    };
    let (cloud, mut agent) = Cloud::with_agent_persistent(&spec, dir.path(), &[]).await;

    let mut counts = Counts::default();
    let mut violations_early: Vec<String> = Vec::new();
    let mut sent: BTreeMap<String, Value> = BTreeMap::new();
    let mut paid: Vec<String> = Vec::new();
    let mut round = 0usize;
    // Two plain payments on every kind first, so every terminal is covered whatever the
    // random mix draws.
    for i in 0..2 {
        for cmd in [
            token_sale(&format!("w{i}-tok")),
            paywall_sale(&format!("w{i}-pw"), 2200),
            kaspi_sale(&format!("w{i}-kaspi"), 1200),
            kuveyt_sale(&format!("w{i}-kv"), 1500),
        ] {
            send_booked(&cloud, &mut sent, &mut counts, cmd).await;
        }
    }
    // Their results first: the warm-up proves every kind works before the faults begin.
    for id in sent.keys().cloned().collect::<Vec<_>>() {
        let _ = cloud.result(&id).await;
    }
    while counts.faults() < target {
        round += 1;
        // A batch of commands: payments on both terminals, refunds of earlier payments,
        // status queries, and now and then a duplicate of something already sent.
        let n = rng.random_range(2..6);
        for i in 0..n {
            let id = format!("f{round}-{i}");
            let term = if rng.random_bool(0.5) { "ip-1" } else { "ip-2" };
            let cmd = match rng.random_range(0..12) {
                0 if !paid.is_empty() => {
                    let orig = &paid[rng.random_range(0..paid.len())];
                    let t = sent[orig]["terminal"].clone();
                    json!({"v":1,"id":id,"op":"refund","terminal":t,"amount":1,"original":orig})
                }
                1 if !sent.is_empty() => {
                    let keys: Vec<&String> = sent.keys().collect();
                    let dup = keys[rng.random_range(0..keys.len())].clone();
                    cloud.send(sent[&dup].clone()).await;
                    continue;
                }
                2 => token_sale(&id),
                3 => paywall_sale(&id, rng.random_range(1..50) * 100),
                4 => kaspi_sale(&id, rng.random_range(1..50) * 100),
                // Pay-by-link takes a verify interval (≥ 2 s) per payment: fewer of them.
                5 if rng.random_bool(0.3) => kuveyt_sale(&id, rng.random_range(1..50) * 100),
                _ => {
                    paid.push(id.clone());
                    pay(&id, term, rng.random_range(100..10_000))
                }
            };
            send_booked(&cloud, &mut sent, &mut counts, cmd).await;
        }
        match rng.random_range(0..12) {
            10 => {
                // The disk fails under the store: EIO on the log's fdatasync or ENOSPC on its
                // write, from the n-th time on. The agent must stop (degraded, non-zero
                // exit) without acknowledging anything more; the restart settles the rest.
                let kind = if rng.random_bool(0.5) { "wal:sync=eio" } else { "wal:append=enospc" };
                let spec = format!("{kind}@{}", rng.random_range(1..6));
                agent.restart(&[(posbridge::faults::IO_ENV, &spec)]);
                // One payment takes two or three syncs, and whatever else the restart has to
                // write may be little: another payment each second until the n-th sync has
                // come, so the fault is always reached (at most 20).
                let mut exited = None;
                for k in 0..20 {
                    let id = format!("f{round}-io{k}");
                    let cmd = pay(&id, "ip-1", 222);
                    send_booked(&cloud, &mut sent, &mut counts, cmd).await;
                    paid.push(id);
                    exited = agent.wait_exit(Duration::from_secs(1));
                    if exited.is_some() {
                        break;
                    }
                }
                match exited {
                    Some(st) if !st.success() => counts.sync_errors += 1,
                    Some(st) => violations_early
                        .push(format!("{spec}: the agent exited {st:?} after a store failure")),
                    None => violations_early
                        .push(format!("{spec}: the agent did not stop after a store failure")),
                }
                agent.restart(&[]);
            }
            // Rare: every damage leaves the store's queued commands `unknown` for good.
            11 if round % 3 == 0 => {
                // Damage like a power cut on an SD card: sled's headers garbled while the
                // agent is stopped. The restart salvages every id it can (none may run
                // again) and holds money until an operator acknowledges.
                // Stopped either way (a SIGTERM that lands before the handler is set kills).
                let _ = agent.sigterm();
                garble_sled_headers(dir.path());
                let held =
                    |v: &Value| v["state"] == "online" && v["store"]["money_blocked"].is_object();
                let before = cloud.all("status").iter().filter(|v| held(v)).count();
                agent.restart(&[]);
                // This start's status (earlier rounds left theirs in the list).
                let fresh = async {
                    while cloud.all("status").iter().filter(|v| held(v)).count() <= before {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                if tokio::time::timeout(Duration::from_secs(30), fresh).await.is_err() {
                    violations_early.push(format!(
                        "round {round}: a damaged store did not hold money on the status\n{}",
                        agent.log()
                    ));
                }
                let st = agent.sigterm();
                assert!(st.success(), "{st:?}\n{}", agent.log());
                let ack = std::process::Command::new(BIN)
                    .args(["store", "acknowledge", "--config"])
                    .arg(dir.path().join("posbridge.toml"))
                    .output()
                    .expect("acknowledge");
                assert!(ack.status.success(), "{ack:?}");
                agent.restart(&[]);
                counts.store_damage += 1;
            }
            0..=4 => {
                let point = JOURNAL_POINTS[rng.random_range(0..JOURNAL_POINTS.len())];
                // Checkpoints within a second (an hour in production), so that the
                // checkpoint's point is reached too.
                agent.restart(&[
                    (posbridge::faults::ENV, point),
                    (posbridge::faults::CHECKPOINT_EVERY_ENV, "1"),
                ]);
                // Re-send the batch's ids as duplicates so the restarted agent has work
                // that crosses the point even if the batch was already finished.
                let extra = format!("f{round}-x");
                let cmd = pay(&extra, "ip-1", 111);
                send_booked(&cloud, &mut sent, &mut counts, cmd).await;
                paid.push(extra);
                if agent.wait_exit(Duration::from_secs(5)).is_some() {
                    counts.aborts_at_points += 1;
                } else {
                    counts.random_kills += 1;
                }
                agent.restart(&[]);
            }
            5..=6 => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
                agent.restart(&[]);
                counts.random_kills += 1;
            }
            7 if mosq.is_some() => {
                if let Some(m) = mosq.as_mut() {
                    m.restart();
                }
                counts.broker_restarts += 1;
            }
            8 => {
                // The device performs the operation, then its answer is lost.
                match rng.random_range(0..4) {
                    0 => if rng.random_bool(0.5) { &c1 } else { &c2 }.lose_next_answer(),
                    1 => token_ctl.set(|k| k.lose_next_result = true),
                    2 => kaspi_ctl.lose_next_answer("payment"),
                    _ => {
                        // Paywall code 55: sold, the answer lost.
                        let id = format!("f{round}-pl");
                        let cmd = paywall_sale(&id, rng.random_range(1..50) * 100 + 55);
                        send_booked(&cloud, &mut sent, &mut counts, cmd).await;
                    }
                }
                counts.lost_answers += 1;
            }
            _ => {
                // The device performs the operation, then its answer is unreadable or
                // names another request.
                match rng.random_range(0..6) {
                    0 => if rng.random_bool(0.5) { &c1 } else { &c2 }.garble_next_answer(),
                    1 => if rng.random_bool(0.5) { &c1 } else { &c2 }.foreign_next_answer(),
                    2 => token_ctl.set(|k| k.garble_next_result = true),
                    3 => kaspi_ctl.garble_status_for_next(2),
                    4 => {
                        // Paywall code 61: sold, the answer's JSON cut short.
                        let id = format!("f{round}-pg");
                        let cmd = paywall_sale(&id, rng.random_range(1..50) * 100 + 61);
                        send_booked(&cloud, &mut sent, &mut counts, cmd).await;
                    }
                    _ => {
                        // Kuveyt 58/59: a verify's or the create's answer cut short.
                        let id = format!("f{round}-kg");
                        let code = if rng.random_bool(0.5) { 58 } else { 59 };
                        let cmd = kuveyt_sale(&id, rng.random_range(1..50) * 100 + code);
                        send_booked(&cloud, &mut sent, &mut counts, cmd).await;
                    }
                }
                counts.garbled_answers += 1;
            }
        }
    }

    // Quiesce: every command id sent must reach a final result.
    let mut violations = violations_early;
    // Pay-by-link payments run one at a time, each at least one verify interval (2 s).
    let kv = sent.values().filter(|c| c["terminal"] == "kv-1").count() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + 3 * kv);
    loop {
        let have: BTreeSet<String> = cloud
            .all("result")
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<&String> = sent.keys().filter(|id| !have.contains(*id)).collect();
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let log = agent.log();
            for id in missing {
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(id.as_str())).collect();
                violations.push(format!(
                    "{id}: no result; agent log mentions:\n  {}",
                    lines.join("\n  ")
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut by_id: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in cloud.all("result") {
        if let Some(id) = r["id"].as_str() {
            let key =
                format!("{}|{}|{}", r["state"], r["payment"]["transaction_id"], r["error"]["code"]);
            by_id.entry(id.to_string()).or_default().insert(key);
        }
    }
    let log = agent.log();
    for (id, outcomes) in &by_id {
        if outcomes.len() != 1 {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains(&format!("id={id} "))
                        || l.contains("store failed")
                        || l.contains("fault injection")
                })
                .collect();
            violations.push(format!(
                "{id}: {} different final outcomes {outcomes:?}; agent log:\n  {}",
                outcomes.len(),
                lines.join("\n  ")
            ));
        }
    }
    for id in sent.keys() {
        let n = st1.executions(id)
            + st2.executions(id)
            + token_ctl.sales(&posbridge::drivers::token::basket_id("shop-faults", id));
        if n > 1 {
            violations.push(format!("{id}: executed {n} times"));
        }
        if !by_id.contains_key(id) {
            violations.push(format!("{id}: no result"));
        }
        // Money moved on the device: the result may be `unknown`, never `failed`.
        let res = cloud.all("result").into_iter().find(|r| r["id"] == id.as_str());
        let moved = token_ctl.sales(&posbridge::drivers::token::basket_id("shop-faults", id)) > 0
            || paywall_stats.payments().iter().any(|p| {
                p.merchant_unique_code
                    == posbridge::drivers::paywall::api::merchant_unique_code("shop-faults", id)
                        .to_string()
                    && p.status == 3
            })
            || kuveyt_stats
                .links()
                .iter()
                .any(|l| l.order_id == format!("shop-faults/{id}") && l.status == "completed");
        if moved && res.as_ref().is_some_and(|r| r["state"] == "failed") {
            violations.push(format!("{id}: money moved but the result is failed: {res:?}"));
        }
    }
    // Never a second sale or payment for one command on the cloud terminals.
    for p in paywall_stats.payments() {
        if p.sale_requests > 1 {
            violations.push(format!(
                "paywall {}: {} sale requests for one MerchantUniqueCode",
                p.merchant_unique_code, p.sale_requests
            ));
        }
    }
    let kaspi_ids = sent.values().filter(|c| c["terminal"] == "kaspi-1").count() as u64;
    if kaspi_stats.counts().payments_started > kaspi_ids {
        violations.push(format!(
            "kaspi: {} payments started for {kaspi_ids} commands",
            kaspi_stats.counts().payments_started
        ));
    }
    let kuveyt_ids = sent.values().filter(|c| c["terminal"] == "kv-1").count() as u64;
    if kuveyt_stats.counters().payments_created > kuveyt_ids {
        violations.push(format!(
            "kuveyt: {} payments created for {kuveyt_ids} commands",
            kuveyt_stats.counters().payments_created
        ));
    }
    // The run really exercised every kind of terminal.
    for term in ["ip-1", "ip-2", "token-1", "pw-1", "kaspi-1", "kv-1"] {
        let ok =
            cloud.all("result").iter().any(|r| r["terminal"] == term && r["state"] == "succeeded");
        if !ok {
            violations.push(format!("no command succeeded on {term}: the run did not cover it"));
        }
    }
    // The store reopens cleanly after all that.
    let st = agent.sigterm();
    assert!(st.success());
    agent.restart(&[]);
    let status = cloud.wait("status", Duration::from_secs(20), |v| v["state"] == "online").await;
    if status.get("store").is_some() {
        violations.push(format!("store reported damage: {status}"));
    }
    println!(
        "fault injection: {} commands, {} faults injected ({} aborts at journal points, {} random kill -9, {} broker restarts, {} lost device answers, {} garbled or foreign device answers, {} store write/sync errors (EIO, ENOSPC), {} damaged stores), {} violations",
        counts.commands,
        counts.faults(),
        counts.aborts_at_points,
        counts.random_kills,
        counts.broker_restarts,
        counts.lost_answers,
        counts.garbled_answers,
        counts.sync_errors,
        counts.store_damage,
        violations.len()
    );
    assert!(violations.is_empty(), "violations: {violations:#?}");
    stop.cancel();
}
