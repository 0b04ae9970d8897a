//! `posbridge-bench`: the agent measured against its physical limits, on loopback only.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release --bin posbridge-bench -- e2e|intake|drain|footprint|all [--n N]
//! ```
//!
//! Starts a broker (mosquitto when installed, configured like the tests: `set_tcp_nodelay
//! true`, a deep queue; otherwise the embedded rumqttd), the simulators and the agent
//! binary (`posbridge run`, a child process next to this binary), and measures each figure
//! together with its limit in the same run. Prints a table and one JSON line
//! (`BENCH_JSON {...}`). Never run in CI: it takes minutes and depends on the machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use posbridge::testkit::{Agent, AgentSpec, Broker, Stream};
use rumqttc::QoS;
use serde_json::{json, Value};

// ------------------------------------------------------------------ figures

struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    limit: f64,
    /// value / limit
    ratio: f64,
    goal: String,
    met: bool,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ------------------------------------------------------------------ broker

// ------------------------------------------------------------------ the test kit

/// The kit's [`Stream`] with the bench's error handling.
struct Client(Stream);

impl Client {
    async fn connect(port: u16, id: &str, sub: Option<&str>, clean: bool) -> Result<Client> {
        Ok(Client(Stream::connect(port, id, sub, clean).await))
    }

    async fn recv(&mut self, within: Duration) -> Result<(String, bytes::Bytes)> {
        self.0
            .recv(within)
            .await
            .context("timed out waiting for a message")
    }
}

impl std::ops::Deref for Client {
    type Target = Stream;
    fn deref(&self) -> &Stream {
        &self.0
    }
}

fn agent_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("posbridge");
    if !bin.exists() {
        // `cargo run --bin posbridge-bench` builds only this binary: build the agent too.
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = if cfg!(debug_assertions) {
                vec![]
            } else {
                vec!["--release"]
            };
            let st = Command::new(cargo)
                .args(["build", "--bin", "posbridge"])
                .args(profile)
                .status()?;
            if !st.success() {
                bail!("cargo build --bin posbridge failed");
            }
        }
    }
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release --bins` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// The agent for one figure: unsigned commands, quiet logs (BENCH_LOG=debug to see what it
/// does; logging costs time), no telemetry during the run.
fn spec(agent_id: &str, port: u16, queue_depth: usize) -> AgentSpec {
    AgentSpec {
        queue_depth,
        keep_alive: "30s".into(),
        telemetry_interval: "60s".into(),
        log_level: std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ..AgentSpec::new(agent_id, port)
    }
}

/// An IP terminal with customer time allowed for.
fn ip_terminal(s: AgentSpec, id: &str, addr: &str) -> Result<AgentSpec> {
    Ok(s.ip_with(id, addr.parse()?, &[("op_timeout", "120s")]))
}

fn start_agent(dir: &Path, spec: &AgentSpec) -> Result<Agent> {
    // The kit's Agent runs the binary named here (built if missing).
    std::env::set_var("POSBRIDGE_BIN", agent_bin()?);
    Ok(Agent::start(spec, dir))
}

/// Graceful broker stop (mosquitto saves its sessions) and start again.
fn pause(broker: &mut Broker) -> Result<()> {
    match broker {
        Broker::Mosquitto(m) => {
            m.stop();
            Ok(())
        }
        Broker::Embedded { .. } => bail!("the embedded broker cannot be restarted"),
    }
}

fn resume(broker: &mut Broker) {
    if let Broker::Mosquitto(m) = broker {
        m.resume();
    }
}

async fn ip_sim(delay_ms: u64) -> Result<(String, tokio_util::sync::CancellationToken)> {
    use posbridge::sim::ip::{IpSim, SimOptions};
    let stop = tokio_util::sync::CancellationToken::new();
    let sim = IpSim::bind(
        "127.0.0.1:0".parse()?,
        SimOptions {
            fail_rate: 0.0,
            seed: Some(1),
            delay_ms,
            ..Default::default()
        },
    )
    .await?;
    let addr = sim.local_addr().to_string();
    sim.spawn(stop.clone());
    Ok((addr, stop))
}

async fn wait_online(c: &mut Client, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (topic, p) = c.recv(left).await.context("agent never came online")?;
        if topic.ends_with("/status") && contains(&p, b"\"online\"") {
            return Ok(());
        }
    }
}

// ------------------------------------------------------------------ floors

/// QoS 1 request → reply between two plain clients through the broker: `n` samples (µs).
async fn floor_rr(port: u16, n: usize) -> Result<Vec<f64>> {
    let mut a = Client::connect(port, "floor-a", Some("floor/rep"), true).await?;
    let mut b = Client::connect(port, "floor-b", Some("floor/req"), true).await?;
    let payload = vec![b'x'; 120];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        a.client
            .publish("floor/req", QoS::AtLeastOnce, false, payload.clone())
            .await?;
        let (_, p) = b.recv(Duration::from_secs(5)).await?;
        b.client
            .publish("floor/rep", QoS::AtLeastOnce, false, p.to_vec())
            .await?;
        a.recv(Duration::from_secs(5)).await?;
        if i >= 20 {
            out.push(micros(t.elapsed()));
        }
    }
    Ok(out)
}

/// One pay on a kept-alive connection to the IP simulator: `n` samples (µs).
async fn floor_sim(addr: &str, n: usize) -> Result<Vec<f64>> {
    use posbridge::drivers::ip::proto::{IpClient, Request};
    let mut c = IpClient::connect(addr, Duration::from_secs(5)).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let req = Request::Pay {
            r#ref: format!("floor-{i}"),
            amount: 1500,
            currency: "AZN".into(),
        };
        let t = Instant::now();
        c.call(&req, Duration::from_secs(5)).await?;
        if i >= 20 {
            out.push(micros(t.elapsed()));
        }
    }
    Ok(out)
}

/// One durable write at its physical limit: append ~400 B to a file and `fdatasync` it
/// (what no store can go below: one write and one sync of the device), `n` samples (µs).
fn floor_sync(dir: &Path, n: usize) -> Result<Vec<f64>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("floor-log"))?;
    let v = vec![b'r'; 400];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        f.write_all(&v)?;
        f.sync_data()?;
        if i >= 20 {
            out.push(micros(t.elapsed()));
        }
    }
    Ok(out)
}

/// Syncs the durability promise needs for one payment: the command before its PUBACK, the
/// journal before the device step, the answer + result before the result is published.
const PROMISE_SYNCS: f64 = 3.0;

// ------------------------------------------------------------------ codec

/// A Token basket message of about 2 KiB, shaped like the driver's (items, prices, VAT).
fn basket_2k() -> Vec<u8> {
    let mut items = Vec::new();
    for i in 0u64.. {
        items.push(json!({
            "itemName": format!("Article {i} — sample goods"),
            "itemCodeType": 1, "itemCode": format!("{:013}", 4_600_000_000_000u64 + i),
            "itemQuantityType": 0, "itemQuantity": 1000 + i, "itemPrice": 1_250 + 17 * i,
            "itemSum": 1_250 + 17 * i, "itemVatPercent": 18.0,
        }));
        let v = json!({"cashier": "bench", "currency": "AZN", "items": items, "sum": 99_999});
        let s = serde_json::to_vec(&v).unwrap_or_default();
        if s.len() >= 2048 {
            return s;
        }
    }
    Vec::new()
}

/// Median ns of `f` over `n` runs (after a warm-up of n/10).
fn median_ns(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 + 1 {
        f();
    }
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    pct(&mut v, 0.5)
}

/// Token codec: encode (compress + encrypt + frame) and decode of a 2 KiB basket, against
/// zlib and AES-256-ECB alone on the same bytes (what the codec cannot go below).
fn bench_codec(n: usize, figs: &mut Vec<Figure>, j: &mut Value) -> Result<()> {
    use aes::cipher::{BlockEncryptMut, KeyInit};
    use bytes::BytesMut;
    use posbridge::drivers::token::codec::{ty, Inbound, Message, TokenCodec};
    use posbridge::drivers::token::crypto::Key;
    use std::hint::black_box;
    use std::io::Read;
    use tokio_util::codec::{Decoder, Encoder};

    let payload = basket_2k();
    let msg = Message::new(ty::BASKET, payload.clone());
    let mut enc = TokenCodec::new(Key::bootstrap());
    let mut wire = BytesMut::new();
    enc.encode(&msg, &mut wire)?;
    let mut dec = TokenCodec::new(Key::bootstrap());
    match dec.decode(&mut wire.clone())? {
        Some(Inbound::Message(m)) if m.payload == payload => {}
        _ => bail!("the codec does not round-trip the bench basket"),
    }
    let encode = median_ns(n, || {
        let mut dst = BytesMut::with_capacity(4096);
        let _ = enc.encode(black_box(&msg), &mut dst);
        black_box(dst);
    });
    let decode = median_ns(n, || {
        let mut src = wire.clone();
        black_box(dec.decode(&mut src).ok());
    });
    let zlib_c = median_ns(n, || {
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(2048),
            flate2::Compression::default(),
        );
        let _ = z.write_all(black_box(&payload));
        black_box(z.finish().ok());
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&payload)?;
    let compressed = z.finish()?;
    let zlib_d = median_ns(n, || {
        let mut out = Vec::with_capacity(4096);
        let _ = flate2::read::ZlibDecoder::new(black_box(&compressed[..])).read_to_end(&mut out);
        black_box(out);
    });
    let key = Key::bootstrap();
    let aes = median_ns(n, || {
        black_box(
            ecb::Encryptor::<aes::Aes256>::new(key.as_bytes().into())
                .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(black_box(&payload)),
        );
    });
    // Decrypting the compressed body costs at most what encrypting the plain one does.
    let value = encode + decode;
    let limit = zlib_c + zlib_d + 2.0 * aes;
    let mbps = |ns: f64| payload.len() as f64 / ns * 1e3;
    println!(
        "codec: 2 KiB basket: encode {:.1} µs ({:.0} MB/s), decode {:.1} µs ({:.0} MB/s); alone: zlib compress {:.1} µs, inflate {:.1} µs, AES-256-ECB {:.1} µs ({:.0} MB/s)",
        encode / 1e3, mbps(encode), decode / 1e3, mbps(decode), zlib_c / 1e3, zlib_d / 1e3, aes / 1e3, mbps(aes)
    );
    figs.push(Figure {
        name: "token codec enc+dec 2 KiB".into(),
        value: value / 1e3,
        unit: "µs",
        limit: limit / 1e3,
        ratio: value / limit,
        goal: "report (zlib+AES alone)".into(),
        met: true,
    });
    j["codec"] = json!({
        "payload_bytes": payload.len(), "encode_ns": encode, "decode_ns": decode,
        "encode_mb_s": mbps(encode), "decode_mb_s": mbps(decode),
        "zlib_compress_ns": zlib_c, "zlib_inflate_ns": zlib_d, "aes_ecb_encrypt_ns": aes,
        "ratio": value / limit,
    });
    Ok(())
}

// ------------------------------------------------------------------ e2e

async fn bench_e2e(broker: &Broker, n: usize, figs: &mut Vec<Figure>, j: &mut Value) -> Result<()> {
    let port = broker.port();
    let (sim_addr, _sim) = ip_sim(0).await?;
    let dir = tempfile::tempdir()?;
    let spec = ip_terminal(spec("bench-e2e", port, 16), "ip-1", &sim_addr)?;
    let mut cloud =
        Client::connect(port, "bench-e2e-cloud", Some("posbridge/bench-e2e/#"), true).await?;
    let agent = start_agent(dir.path(), &spec)?;
    if let Err(e) = wait_online(&mut cloud, Duration::from_secs(20)).await {
        bail!("{e:#}\n{}", agent.log_tail(20));
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let id = format!("e2e-{i}");
        let cmd =
            json!({"v":1,"id":id,"op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN"});
        let t = Instant::now();
        cloud
            .client
            .publish(
                "posbridge/bench-e2e/cmd",
                QoS::AtLeastOnce,
                false,
                cmd.to_string(),
            )
            .await?;
        loop {
            let (topic, p) = match cloud.recv(Duration::from_secs(30)).await {
                Ok(m) => m,
                Err(e) => bail!("{e:#}\n{}", agent.log_tail(20)),
            };
            if topic.ends_with("/result") {
                let v: Value = serde_json::from_slice(&p)?;
                if v["id"] == id.as_str() {
                    if v["state"] != "succeeded" {
                        bail!("payment {id} ended {v}");
                    }
                    break;
                }
            }
        }
        if i >= 20 {
            lat.push(micros(t.elapsed()));
        }
    }
    drop(agent);
    let mut rr = floor_rr(port, n).await?;
    let mut sim = floor_sim(&sim_addr, n).await?;
    let fdir = tempfile::tempdir()?;
    let mut sync = tokio::task::block_in_place(|| floor_sync(fdir.path(), n))?;
    let (rr50, sim50, sync50) = (pct(&mut rr, 0.5), pct(&mut sim, 0.5), pct(&mut sync, 0.5));
    let floor = rr50 + sim50 + PROMISE_SYNCS * sync50;
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    figs.push(Figure {
        name: "payment round trip p50".into(),
        value: p50,
        unit: "µs",
        limit: floor,
        ratio: p50 / floor,
        goal: "≤ 1.2 × floor".into(),
        met: p50 <= 1.2 * floor,
    });
    figs.push(Figure {
        name: "payment round trip p99".into(),
        value: p99,
        unit: "µs",
        limit: floor,
        ratio: p99 / floor,
        goal: "≤ floor + 2 ms".into(),
        met: p99 <= floor + 2000.0,
    });
    j["e2e"] = json!({
        "n": n, "p50_us": p50, "p99_us": p99, "floor_us": floor,
        "floor_parts_us": {"qos1_rr_p50": rr50, "sim_call_p50": sim50, "sync_p50": sync50, "syncs": PROMISE_SYNCS},
        "ratio_p50": p50 / floor, "p99_minus_floor_us": p99 - floor,
    });
    println!(
        "e2e: floor parts p50: QoS1 rr {rr50:.0} µs, sim call {sim50:.0} µs, durable write {sync50:.0} µs × {PROMISE_SYNCS}"
    );
    Ok(())
}

// ------------------------------------------------------------------ intake

/// Broker QoS 1 throughput between two plain clients: msg/s for `n` messages of `size`.
async fn floor_throughput(port: u16, n: usize, size: usize) -> Result<f64> {
    let mut sub = Client::connect(port, "tp-sub", Some("tp/x"), true).await?;
    let publ = Client::connect(port, "tp-pub", None, true).await?;
    let payload = vec![b'x'; size];
    let t = Instant::now();
    let c = publ.client.clone();
    let feeder = tokio::spawn(async move {
        for _ in 0..n {
            if c.publish("tp/x", QoS::AtLeastOnce, false, payload.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    for _ in 0..n {
        sub.recv(Duration::from_secs(30)).await?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    feeder.abort();
    Ok(rate)
}

async fn bench_intake(
    broker: &Broker,
    n: usize,
    figs: &mut Vec<Figure>,
    j: &mut Value,
) -> Result<()> {
    let port = broker.port();
    const TERMINALS: usize = 50;
    // Every terminal's first payment hangs at the (slow) simulator; the rest queue behind it.
    let (sim_addr, _sim) = ip_sim(600_000).await?;
    let dir = tempfile::tempdir()?;
    let mut spec = spec("bench-in", port, n / TERMINALS + 10);
    for t in 0..TERMINALS {
        spec = ip_terminal(spec, &format!("t{t}"), &sim_addr)?;
    }
    // `accepted` events are QoS 0 and may be dropped by the broker in a burst (the
    // contract allows it), so they cannot be counted. Instead a `ping` goes last: intake
    // stores and acknowledges in arrival order, so its (QoS 1) result means every payment
    // before it was stored, synced and PUBACKed. Any payment result would be a rejection.
    let mut cloud = Client::connect(
        port,
        "bench-in-cloud",
        Some("posbridge/bench-in/result"),
        true,
    )
    .await?;
    let mut status = Client::connect(
        port,
        "bench-in-status",
        Some("posbridge/bench-in/status"),
        true,
    )
    .await?;
    let agent = start_agent(dir.path(), &spec)?;
    if let Err(e) = wait_online(&mut status, Duration::from_secs(20)).await {
        bail!("{e:#}\n{}", agent.log_tail(20));
    }
    let mut cmds: Vec<String> = (0..n)
        .map(|i| {
            json!({"v":1,"id":format!("in-{i}"),"op":"payment","terminal":format!("t{}", i % TERMINALS),"amount":1500,"currency":"AZN"}).to_string()
        })
        .collect();
    let size = cmds.iter().map(String::len).sum::<usize>() / n.max(1);
    cmds.push(json!({"v":1,"id":"in-last","op":"ping"}).to_string());
    let publ = Client::connect(port, "bench-in-pub", None, true).await?;
    let t = Instant::now();
    let c = publ.client.clone();
    let feeder = tokio::spawn(async move {
        for cmd in cmds {
            if c.publish("posbridge/bench-in/cmd", QoS::AtLeastOnce, false, cmd)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (_, p) = match cloud.recv(Duration::from_secs(120)).await {
        Ok(m) => m,
        Err(e) => bail!(
            "no result for the closing ping: {e:#}\n{}",
            agent.log_tail(20)
        ),
    };
    if !contains(&p, b"\"in-last\"") {
        bail!(
            "a payment was refused during intake: {}",
            String::from_utf8_lossy(&p)
        );
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    feeder.abort();
    drop(agent);
    let floor = floor_throughput(port, n, size).await?;
    figs.push(Figure {
        name: "durable intake".into(),
        value: rate,
        unit: "cmd/s",
        limit: floor,
        ratio: rate / floor,
        goal: "≥ 0.5 × broker QoS1".into(),
        met: rate >= 0.5 * floor,
    });
    j["intake"] = json!({"n": n, "cmd_per_s": rate, "broker_qos1_msg_per_s": floor, "ratio": rate / floor, "payload_bytes": size});
    Ok(())
}

// ------------------------------------------------------------------ drain

async fn bench_drain(
    broker: &mut Broker,
    n: usize,
    figs: &mut Vec<Figure>,
    j: &mut Value,
) -> Result<()> {
    if matches!(broker, Broker::Embedded { .. }) {
        println!("drain: skipped (needs mosquitto: the embedded broker cannot be restarted)");
        return Ok(());
    }
    let port = broker.port();
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    // A persistent cloud session, so results published while it reconnects are queued.
    {
        let c = Client::connect(
            port,
            "bench-dr-cloud",
            Some("posbridge/bench-dr/result"),
            false,
        )
        .await?;
        c.client.disconnect().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pause(broker)?;
    // The outbox, filled with n results as the engine writes them, then closed.
    {
        let (store, _) = posbridge::store::Store::open(&store_dir)?;
        for i in 0..n {
            let mut rej = posbridge::api::Rejection::new(
                posbridge::api::ErrorCode::Busy,
                format!("bench result {i}: terminal busy (commands.queue_depth)"),
            );
            rej.id = Some(format!("dr-{i}"));
            let msg = posbridge::store::OutMsg::result(&posbridge::api::ResultMsg::rejected(&rej));
            store.write(&[], &[msg])?;
        }
        store.commit().await?;
    }
    let agent = start_agent(dir.path(), &spec("bench-dr", port, 16))?;
    // The agent is up, has tried and failed to connect; the broker is away 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    resume(broker);
    let t = Instant::now();
    let mut cloud = Client::connect(
        port,
        "bench-dr-cloud",
        Some("posbridge/bench-dr/result"),
        false,
    )
    .await?;
    let mut got = std::collections::HashSet::new();
    while got.len() < n {
        let (_, p) = match cloud.recv(Duration::from_secs(60)).await {
            Ok(m) => m,
            Err(e) => bail!("{}/{n} delivered: {e:#}\n{}", got.len(), agent.log_tail(20)),
        };
        let v: Value = serde_json::from_slice(&p)?;
        if let Some(id) = v["id"].as_str() {
            got.insert(id.to_string());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    drop(agent);
    figs.push(Figure {
        name: format!("outbox drain ({n})"),
        value: secs * 1000.0,
        unit: "ms",
        limit: 2000.0,
        ratio: secs / 2.0,
        goal: "≤ 2 s after broker returns".into(),
        met: secs <= 2.0,
    });
    j["drain"] = json!({"n": n, "ms_after_broker_returns": secs * 1000.0, "outage_s": 3});
    Ok(())
}

// ------------------------------------------------------------------ footprint

async fn bench_footprint(broker: &Broker, figs: &mut Vec<Figure>, j: &mut Value) -> Result<()> {
    let port = broker.port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ip_addr, _ip) = ip_sim(0).await?;
    let token = posbridge::sim::token::TokenSim::bind(
        "127.0.0.1:0".parse()?,
        posbridge::sim::token::SimOptions::default(),
        None,
    )
    .await?;
    let token_addr = token.local_addr();
    token.spawn(shutdown.clone());
    let kaspi = posbridge::sim::kaspi::KaspiSim::bind(
        "127.0.0.1:0".parse()?,
        posbridge::sim::kaspi::SimOptions::default(),
    )
    .await?;
    let kaspi_url = kaspi.url();
    kaspi.spawn(shutdown.clone());
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let pw = posbridge::sim::paywall::PaywallSim::bind(any, Default::default()).await?;
    let kv = posbridge::sim::kuveyt::KuveytSim::bind(any, Default::default()).await?;
    let (pw_url, kv_url) = (pw.base_url("test"), kv.base_url("test"));
    pw.spawn(shutdown.clone());
    kv.spawn(shutdown.clone());
    let dir = tempfile::tempdir()?;
    let (k, s) = (dir.path().join("api_key"), dir.path().join("secret"));
    std::fs::write(&k, "test-api-key")?;
    std::fs::write(&s, "test-secret")?;
    let mut spec = ip_terminal(spec("bench-fp", port, 16), "ip-1", &ip_addr)?;
    spec.extra = format!(
        "[[terminals]]\nid = \"token-1\"\nkind = \"token\"\ntransport = \"tcp\"\naddr = \"{token_addr}\"\n\
         [[terminals]]\nid = \"kaspi-1\"\nkind = \"kaspi\"\nurl = \"{kaspi_url}\"\nprotected = false\n\
         [[terminals]]\nid = \"paywall-1\"\nkind = \"paywall\"\nmode = \"test\"\ntest_url = \"{pw_url}\"\nterminal_guid = \"8ff33705-57c7-42dc-8341-a0053e7f3009\"\napi_key_file = \"{k}\"\nclient_key_file = \"{s}\"\n\
         [[terminals]]\nid = \"kuveyt-1\"\nkind = \"kuveyt\"\nmode = \"test\"\ntest_url = \"{kv_url}\"\napi_key_file = \"{k}\"\napi_secret_file = \"{s}\"\n",
        k = k.display(),
        s = s.display()
    );
    let mut cloud = Client::connect(
        port,
        "bench-fp-cloud",
        Some("posbridge/bench-fp/status"),
        true,
    )
    .await?;
    let bin = agent_bin()?;
    let t = Instant::now();
    let agent = start_agent(dir.path(), &spec)?;
    if let Err(e) = wait_online(&mut cloud, Duration::from_secs(20)).await {
        bail!("{e:#}\n{}", agent.log_tail(20));
    }
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    // Idle: let the drivers finish connecting and the allocator settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = agent.proc_status("VmRSS:").unwrap_or(0) as f64 / 1024.0;
    let mib = |f: &str| agent.proc_status(f).unwrap_or(0) as f64 / 1024.0;
    let (anon, file) = (mib("RssAnon:"), mib("RssFile:"));
    let threads = agent.proc_status("Threads:").unwrap_or(0);
    println!("footprint: idle RSS {rss:.1} MiB = anon {anon:.1} + file-backed {file:.1} (+ shmem); {threads} threads");
    j["footprint_parts"] = json!({"rss_anon_mib": anon, "rss_file_mib": file, "threads": threads});
    drop(agent);
    shutdown.cancel();
    let size = std::fs::metadata(&bin)?.len() as f64 / (1024.0 * 1024.0);
    let stripped = {
        let out = dir.path().join("posbridge.stripped");
        let ok = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(&bin)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            std::fs::metadata(&out)?.len() as f64 / (1024.0 * 1024.0)
        } else {
            size
        }
    };
    figs.push(Figure {
        name: "idle RSS, 5 terminal kinds".into(),
        value: rss,
        unit: "MiB",
        limit: 8.0,
        ratio: rss / 8.0,
        goal: "≤ 8 MiB".into(),
        met: rss <= 8.0,
    });
    figs.push(Figure {
        name: format!("binary, stripped ({})", std::env::consts::ARCH),
        value: stripped,
        unit: "MiB",
        limit: 8.0,
        ratio: stripped / 8.0,
        goal: "≤ 8 MiB (aarch64)".into(),
        met: stripped <= 8.0,
    });
    figs.push(Figure {
        name: "start to online".into(),
        value: start_ms,
        unit: "ms",
        limit: 200.0,
        ratio: start_ms / 200.0,
        goal: "≤ 200 ms".into(),
        met: start_ms <= 200.0,
    });
    j["footprint"] = json!({"idle_rss_mib": rss, "binary_mib": size, "binary_stripped_mib": stripped, "start_to_online_ms": start_ms, "arch": std::env::consts::ARCH});
    Ok(())
}

// ------------------------------------------------------------------ main

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args
        .first()
        .map(String::as_str)
        .unwrap_or("all")
        .to_string();
    const USAGE: &str =
        "usage: posbridge-bench e2e|intake|drain|footprint|codec|all [--n N] [--quick]";
    let mut n_e2e = 300;
    let mut n_intake = 10_000;
    let mut n_drain = 10_000;
    let mut n_codec = 20_000;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--quick" {
            // CI: proves every figure still runs; the numbers mean nothing.
            (n_e2e, n_intake, n_drain, n_codec) = (20, 200, 200, 200);
            continue;
        }
        let v: Option<usize> = it.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--n", Some(v)) => {
                n_e2e = v;
                n_intake = v;
                n_drain = v;
                n_codec = v;
            }
            _ => bail!(USAGE),
        }
    }
    if !["e2e", "intake", "drain", "footprint", "codec", "all"].contains(&what.as_str()) {
        bail!(USAGE);
    }
    let mut failed = 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut broker = Broker::start();
        println!(
            "posbridge-bench: broker {} on 127.0.0.1:{}, {} CPUs",
            broker.name(),
            broker.port(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        let mut figs = Vec::new();
        let mut j = json!({"broker": broker.name(), "version": posbridge::VERSION});
        let all = what == "all";
        let mut report = |name: &str, r: Result<()>| {
            if let Err(e) = r {
                eprintln!("{name} failed: {e:#}");
                failed += 1;
            }
        };
        if all || what == "footprint" {
            report(
                "footprint",
                bench_footprint(&broker, &mut figs, &mut j).await,
            );
        }
        if all || what == "codec" {
            report("codec", bench_codec(n_codec, &mut figs, &mut j));
        }
        if all || what == "e2e" {
            report("e2e", bench_e2e(&broker, n_e2e, &mut figs, &mut j).await);
        }
        if all || what == "intake" {
            report(
                "intake",
                bench_intake(&broker, n_intake, &mut figs, &mut j).await,
            );
        }
        if all || what == "drain" {
            report(
                "drain",
                bench_drain(&mut broker, n_drain, &mut figs, &mut j).await,
            );
        }
        println!();
        println!(
            "| {:<30} | {:>12} | {:>12} | {:>7} | {:<28} | {:<4} |",
            "figure", "value", "limit", "ratio", "goal", "met"
        );
        println!("|{}|", "-".repeat(112));
        for f in &figs {
            println!(
                "| {:<30} | {:>8.1} {:<5}| {:>12.1} | {:>7.3} | {:<28} | {:<4} |",
                f.name,
                f.value,
                f.unit,
                f.limit,
                f.ratio,
                f.goal,
                if f.met { "yes" } else { "NO" }
            );
        }
        println!("BENCH_JSON {j}");
        if failed > 0 {
            bail!("{failed} figure(s) could not be measured (see above)");
        }
        Ok(())
    })
}
