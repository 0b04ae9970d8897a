//! The AsyncAPI document (`docs/asyncapi.yaml`) and its JSON Schemas (`docs/schemas/`)
//! against the real agent, so the document cannot drift from the code:
//!
//! - a session that produces every result state, every progress state, every terminal
//!   state, `online` and `offline` runs the agent binary against IP and Token simulators, and every
//!   message the agent publishes is validated against its schema with undocumented
//!   properties forbidden (see [`forbid_undocumented`]);
//! - every property the schemas document for a published message must show up in that
//!   session, unless [`NOT_COVERED`] says why it cannot, and every value of the state
//!   enums must show up too;
//! - the commands the session sends are checked against `command.schema.json` (the ones
//!   the agent takes must be valid, the ones it refuses for their shape invalid), signed
//!   envelopes against `envelope.schema.json`;
//! - every example in the AsyncAPI document is validated the same way, and the document's
//!   channels name the schemas this test validates against.
//!
//! A failure prints the message, the schema file and every validation error.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::*;
use jsonschema::{Draft, Registry, Validator};
use posbridge::api::signature::{open, seal, CommandKeys};
use posbridge::sim::ip::{IpSim, SimOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Schema files by stem (`docs/schemas/{stem}.schema.json`).
const STEMS: [&str; 7] =
    ["command", "envelope", "result", "evt", "status", "terminal", "telemetry"];

/// Where the schemas are registered; relative `$ref`s between the files resolve against it.
const BASE_URI: &str = "https://posbridge.invalid/schemas/";

/// The topics of `mqtt-api.md` below `{prefix}/{agent_id}/`: the schemas of their
/// payloads, QoS and retain flag.
const TOPICS: [(&str, &[&str], u64, bool); 6] = [
    ("cmd", &["command", "envelope"], 1, false),
    ("result", &["result"], 1, false),
    ("evt", &["evt"], 0, false),
    ("status", &["status"], 1, true),
    ("terminals/{terminal}", &["terminal"], 1, true),
    ("telemetry", &["telemetry"], 0, false),
];

/// The payload schemas of what the agent publishes.
const PUBLISHED: [&str; 5] = ["result", "evt", "status", "terminal", "telemetry"];

/// Documented properties the session cannot produce, and why. Everything else the schemas
/// document for a published message must appear in the session.
const NOT_COVERED: &[(&str, &str, &str)] = &[
    ("result", "mode", "cloud-backed terminals (paywall, kuveyt) only; tests/paywall.rs and tests/kuveyt.rs run them"),
    ("evt", "detail.payment_url", "pay-by-link terminals (kuveyt) only"),
    ("evt", "detail.transaction_id", "pay-by-link terminals (kuveyt) only"),
    ("evt", "detail.merchant_unique_code", "paywall terminals only"),
    ("evt", "detail.process_id", "kaspi terminals only"),
    ("evt", "detail.status", "kaspi terminals only"),
    ("evt", "detail.route", "kaspi terminals only"),
    ("evt", "detail.message", "documented for drivers to come; no driver sends it yet"),
    ("result", "device_truncated", "only when a result would pass 256 KiB with its raw device bodies (list items always carry the nested marker, checked here; tests/contract.rs's large-answer test and api::result's unit tests cover the top-level one)"),
    ("result", "truncated", "only when a result would pass 256 KiB even without device bodies (api::result's unit tests)"),
    ("status", "store", "only after the agent found its store damaged at start (tests/crash.rs damages stores)"),
    ("status", "store.moved_aside", "only after store damage at start"),
    ("status", "store.error", "only after store damage at start"),
    ("status", "store.corrupt_records", "only after store damage at start"),
    ("status", "store.salvaged", "only after store damage at start (tests/cli.rs)"),
    ("status", "store.money_blocked", "only after store damage at start (tests/cli.rs)"),
    ("status", "store.money_blocked.since", "only after store damage at start"),
    ("status", "store.money_blocked.moved_aside", "only after store damage at start"),
    ("status", "store.money_blocked.error", "only after store damage at start"),
    ("status", "store.money_blocked.salvaged", "only after store damage at start"),
    ("status", "store.money_blocked.salvaged_unknown", "only after store damage at start"),
    ("status", "store.money_blocked.files_not_searched", "only when a file of the damaged copy could not be read"),
    ("terminal", "identity.serial", "kaspi terminals only"),
    ("terminal", "identity.pos_num", "kaspi terminals only"),
    ("terminal", "identity.mode", "cloud-backed terminals (paywall, kuveyt) only"),
    ("terminal", "identity.url", "paywall terminals only"),
    ("terminal", "identity.terminal_guid", "paywall terminals only"),
    ("terminal", "identity.model", "documented for drivers to come; no driver sends it yet"),
    ("terminal", "identity.firmware", "documented for drivers to come; no driver sends it yet"),
    ("telemetry", "cpu_temp_c", "only where /sys/class/thermal has a sensor"),
];

/// Error codes the main session must produce (the rest of the enum is produced elsewhere:
/// unauthorized in the signed session, device_error/internal by faults it does not inject).
const ERROR_CODES_SEEN: [&str; 11] = [
    "bad_request",
    "unknown_terminal",
    "unsupported_op",
    "invalid_amount",
    "busy",
    "expired",
    "not_found",
    "not_cancellable",
    "device_unavailable",
    "cancelled_by_customer",
    "timeout",
];

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

fn uri(stem: &str) -> String {
    format!("{BASE_URI}{stem}.schema.json")
}

/// Add `"unevaluatedProperties": false` to every object schema that lists its properties
/// and does not itself say whether others are allowed. The published files stay open
/// (consumers must ignore unknown properties); the test holds the code to them exactly,
/// so a property the code adds or renames fails until the schema documents it.
fn forbid_undocumented(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            if m.get("type") == Some(&json!("object"))
                && m.contains_key("properties")
                && !m.contains_key("additionalProperties")
                && !m.contains_key("unevaluatedProperties")
            {
                m.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            for v in m.values_mut() {
                forbid_undocumented(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(forbid_undocumented),
        _ => {}
    }
}

struct Schemas {
    /// As published, by stem.
    raw: BTreeMap<String, Value>,
    /// With undocumented properties forbidden, by stem.
    strict: BTreeMap<String, Validator>,
}

impl Schemas {
    fn load() -> Schemas {
        let mut raw = BTreeMap::new();
        for stem in STEMS {
            let path = docs().join("schemas").join(format!("{stem}.schema.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            assert_eq!(
                v["$schema"],
                "https://json-schema.org/draft/2020-12/schema",
                "{}",
                path.display()
            );
            if let Err(e) = jsonschema::meta::validate(&v) {
                panic!(
                    "{} is not a valid draft 2020-12 schema: {e} at {}",
                    path.display(),
                    e.instance_path()
                );
            }
            raw.insert(stem.to_string(), v);
        }
        let resources: Vec<(String, Value)> = raw
            .iter()
            .map(|(stem, v)| {
                let mut s = v.clone();
                forbid_undocumented(&mut s);
                (uri(stem), s)
            })
            .collect();
        let registry = Registry::new()
            .extend(resources)
            .expect("schema URIs")
            .prepare()
            .expect("schema registry");
        let strict = raw
            .keys()
            .map(|stem| {
                let v = jsonschema::options()
                    .with_draft(Draft::Draft202012)
                    .should_validate_formats(true)
                    .with_registry(&registry)
                    .build(&json!({ "$ref": uri(stem) }))
                    .unwrap_or_else(|e| panic!("{stem}.schema.json does not build: {e}"));
                (stem.clone(), v)
            })
            .collect();
        Schemas { raw, strict }
    }

    fn errors(&self, stem: &str, instance: &Value) -> Vec<String> {
        self.strict[stem]
            .iter_errors(instance)
            .map(|e| format!("at '{}': {e}", e.instance_path()))
            .collect()
    }
}

/// Validates messages, remembers what it saw, and collects failures for one report.
struct Checker<'a> {
    schemas: &'a Schemas,
    failures: Vec<String>,
    /// Property paths seen per schema (`payment.card_mask`, `items[].id`).
    seen: BTreeMap<String, BTreeSet<String>>,
}

impl<'a> Checker<'a> {
    fn new(schemas: &'a Schemas) -> Self {
        Checker { schemas, failures: Vec::new(), seen: BTreeMap::new() }
    }

    /// Check `msg` against `stem`; `expect_valid` false means the schema must refuse it.
    fn check(&mut self, stem: &str, origin: &str, msg: &Value, expect_valid: bool) {
        let errors = self.schemas.errors(stem, msg);
        match (expect_valid, errors.is_empty()) {
            (true, false) => self.failures.push(format!(
                "{origin}: does not match docs/schemas/{stem}.schema.json\n  message: {msg}\n  {}",
                errors.join("\n  ")
            )),
            (false, true) => self.failures.push(format!(
                "{origin}: docs/schemas/{stem}.schema.json accepts what the agent refuses\n  message: {msg}"
            )),
            _ => {}
        }
        if expect_valid {
            collect_paths(msg, "", self.seen.entry(stem.to_string()).or_default());
        }
    }

    fn valid(&mut self, stem: &str, origin: &str, msg: &Value) {
        self.check(stem, origin, msg, true);
    }

    fn assert_clean(&self) {
        assert!(
            self.failures.is_empty(),
            "{} failure(s) against docs/schemas:\n\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn collect_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = join(prefix, k);
                collect_paths(x, &p, out);
                out.insert(p);
            }
        }
        Value::Array(a) => {
            for x in a {
                collect_paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Every property path a schema documents, following `$ref`s across the files (a `$ref`
/// back into a schema already being walked, such as a record's nested `result`, is a leaf).
fn documented_paths(raw: &BTreeMap<String, Value>, stem: &str) -> BTreeSet<String> {
    fn walk(
        raw: &BTreeMap<String, Value>, stem: &str, node: &Value, prefix: &str,
        stack: &mut Vec<String>, out: &mut BTreeSet<String>,
    ) {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let (file, ptr) = r.split_once('#').unwrap_or((r, ""));
            let target = if file.is_empty() {
                stem.to_string()
            } else {
                file.trim_end_matches(".schema.json").to_string()
            };
            let key = format!("{target}#{ptr}");
            if !stack.contains(&key) {
                let to = raw[&target]
                    .pointer(ptr)
                    .unwrap_or_else(|| panic!("{stem}.schema.json: $ref {r} does not resolve"));
                stack.push(key);
                walk(raw, &target, to, prefix, stack, out);
                stack.pop();
            }
        }
        for kw in ["allOf", "anyOf", "oneOf"] {
            for sub in node.get(kw).and_then(Value::as_array).into_iter().flatten() {
                walk(raw, stem, sub, prefix, stack, out);
            }
        }
        for kw in ["then", "else"] {
            if let Some(sub) = node.get(kw) {
                walk(raw, stem, sub, prefix, stack, out);
            }
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let p = join(prefix, k);
                walk(raw, stem, sub, &p, stack, out);
                out.insert(p);
            }
        }
        if let Some(items) = node.get("items").filter(|i| i.is_object()) {
            walk(raw, stem, items, &format!("{prefix}[]"), stack, out);
        }
    }
    let mut out = BTreeSet::new();
    let mut stack = vec![format!("{stem}#")];
    walk(raw, stem, &raw[stem], "", &mut stack, &mut out);
    out
}

/// The values of an `enum` in a schema file.
fn enum_values(raw: &BTreeMap<String, Value>, stem: &str, pointer: &str) -> BTreeSet<String> {
    raw[stem]
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{stem}.schema.json{pointer} is not an enum"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn values_at(msgs: &[Value], pointer: &str) -> BTreeSet<String> {
    msgs.iter()
        .filter_map(|m| m.pointer(pointer).and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn stem_of(sub: &str) -> &'static str {
    match sub {
        "result" => "result",
        "evt" => "evt",
        "status" => "status",
        "telemetry" => "telemetry",
        t if t.starts_with("terminals/") => "terminal",
        other => panic!("no schema for topic {other}"),
    }
}

/// The cloud POS side: every command it sends is checked against `command.schema.json`
/// first, and every message it reads is checked against its schema as soon as it is read,
/// so drift fails at the first message that shows it, in the schema's words.
struct Session<'a> {
    cloud: &'a Cloud,
    chk: Checker<'a>,
    /// How many messages per topic (below the root) were validated already.
    validated: BTreeMap<String, usize>,
}

impl<'a> Session<'a> {
    fn new(cloud: &'a Cloud, schemas: &'a Schemas) -> Self {
        Session { cloud, chk: Checker::new(schemas), validated: BTreeMap::new() }
    }

    /// A command the agent takes: the schema must accept it.
    async fn send(&mut self, cmd: Value) {
        self.chk.valid("command", &format!("command {}", cmd["id"]), &cmd);
        self.chk.assert_clean();
        self.cloud.send(cmd).await;
    }

    /// A command the agent refuses for its shape: the schema must refuse it too.
    async fn send_malformed(&mut self, cmd: Value) {
        self.chk.check("command", &format!("command {}", cmd["id"]), &cmd, false);
        self.chk.assert_clean();
        self.cloud.send_raw(cmd.to_string().into_bytes()).await;
    }

    /// Every message on `{root}/{sub}` so far, the new ones validated.
    fn read(&mut self, sub: &str) -> Vec<Value> {
        let all = self.cloud.all(sub);
        let done = self.validated.entry(sub.to_string()).or_default();
        for (i, m) in all.iter().enumerate().skip(*done) {
            self.chk.valid(stem_of(sub), &format!("{sub} message #{i}"), m);
        }
        *done = all.len();
        self.chk.assert_clean();
        all
    }

    async fn wait_n(&mut self, sub: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Value> = self.read(sub).into_iter().filter(|m| pred(m)).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} message(s) on {sub}; seen: {:#?}",
                self.cloud.all(sub)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait(&mut self, sub: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_n(sub, 1, pred).await.remove(0)
    }

    async fn result(&mut self, id: &str) -> Value {
        self.wait("result", |v| v["id"] == id).await
    }

    /// `ask` each command in turn: its result holds the string `want` at the JSON pointer
    /// `at`.
    async fn asks(&mut self, cases: Vec<(Value, &str, &str)>) {
        for (cmd, at, want) in cases {
            let id = cmd["id"].clone();
            let got = self.ask(cmd).await;
            assert_eq!(got.pointer(at), Some(&json!(want)), "{id} {at}: {got}");
        }
    }

    /// `send`, then the command's result (by its id).
    async fn ask(&mut self, cmd: Value) -> Value {
        let id = cmd["id"].as_str().expect("the command has an id").to_string();
        self.send(cmd).await;
        self.result(&id).await
    }
}

async fn ip_sim(delay_ms: u64) -> IpSim {
    IpSim::loopback(SimOptions::approving(Some(7), delay_ms)).await.expect("ip simulator")
}

const AGENT: &str = "shop-schemas";
const TERMINALS: [&str; 5] = ["ip-1", "ip-slow", "ip-hang", "ip-dead", "token-1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_message_matches_its_schema() {
    let schemas = Schemas::load();
    let stop = CancellationToken::new();
    // ip-1 answers at once; ip-slow takes 3 s per payment (a queue to cancel from);
    // ip-hang takes 2.5 s while the agent waits 0.3 s (an unknown outcome to reconcile).
    let fast = ip_sim(0).await;
    let slow = ip_sim(3000).await;
    let hang = ip_sim(2500).await;
    let (fast_addr, slow_addr, hang_addr) =
        (fast.local_addr(), slow.local_addr(), hang.local_addr());
    let control = fast.control();
    let hang_stats = hang.stats();
    let _sims = [fast.spawn(stop.clone()), slow.spawn(stop.clone()), hang.spawn(stop.clone())];
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = token_sim(7).await;
    let token_addr = token.local_addr();
    token.spawn(stop.clone());

    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec {
        max_bytes: 4096,
        queue_depth: 2,
        // Before [mqtt]: the harness's own [[terminals]] (ip-1, ip-slow) come last.
        extra: format!(
            "[[terminals]]\nid = \"ip-hang\"\nkind = \"ip\"\naddr = \"{hang_addr}\"\nop_timeout = \"300ms\"\nrecovery_window = \"300ms\"\n\
             [[terminals]]\nid = \"ip-dead\"\nkind = \"ip\"\naddr = \"{dead}\"\n\
             [[terminals]]\nid = \"token-1\"\nkind = \"token\"\ntransport = \"tcp\"\naddr = \"{token_addr}\"\nconnect_timeout = \"3s\"\nop_timeout = \"10s\"\nrecovery_window = \"1s\"\n"
        ),
        ..AgentSpec::new(AGENT, broker.port())
            .ip("ip-1", fast_addr)
            .ip("ip-slow", slow_addr)
    };
    let cloud = Cloud::connect(broker.port(), AGENT, "cloud-schemas", false).await;
    let mut s = Session::new(&cloud, &schemas);
    let mut agent = Agent::start(&spec, dir.path());
    s.wait("status", |v| v["state"] == "online").await;

    // Payment succeeded, payment failed, duplicate.
    assert_eq!(s.ask(pay("p-1", "ip-1", 1500)).await["state"], "succeeded");
    control.set_fail_rate(1.0);
    assert_eq!(s.ask(pay("p-2", "ip-1", 2500)).await["state"], "failed");
    control.set_fail_rate(0.0);
    s.send(pay("p-1", "ip-1", 1500)).await;
    s.wait_n("result", 2, |v| v["id"] == "p-1").await;

    // Refund by original; one beyond what is left of the payment.
    assert_eq!(s.ask(json!({"v":1,"id":"r-1","op":"refund","terminal":"ip-1","amount":1000,"original":"p-1"}),).await["state"], "succeeded");
    assert_eq!(
        s.ask(
            json!({"v":1,"id":"r-2","op":"refund","terminal":"ip-1","amount":501,"original":"p-1"})
        )
        .await["error"]["code"],
        "invalid_amount"
    );

    // Malformed JSON, oversize (max_bytes 4096), wrong type, an id that is not one.
    cloud.send_raw(br#"{"v":1,"id":"bad-1","op":"pay"#.to_vec()).await;
    s.send_malformed(json!({"v":1,"id":"big-1","op":"ping","pad":"x".repeat(10_000)})).await;
    s.send_malformed(
        json!({"v":1,"id":"t-1","op":"payment","terminal":"ip-1","amount":"15","currency":"AZN"}),
    )
    .await;
    assert_eq!(s.result("t-1").await["error"]["code"], "bad_request");
    s.send_malformed(json!({"v":1,"id":"has space","op":"ping"})).await;
    s.wait_n("result", 3, |v| v["id"].is_null()).await;

    // Expired, unknown terminal, unsupported op, a dead terminal; device_info, ping,
    // status found and not found; a fiscal register: fiscal_info, device_info, a sale
    // with a basket. (command, where in its result, what.)
    #[rustfmt::skip]
    let asked = vec![
        (json!({"v":1,"id":"e-1","op":"payment","terminal":"ip-1","amount":100,"currency":"AZN","expires_at":"2020-01-01T00:00:00Z"}), "/state", "expired"),
        (pay("u-1", "nope", 100), "/error/code", "unknown_terminal"),
        (json!({"v":1,"id":"f-1","op":"fiscal_info","terminal":"ip-1"}), "/error/code", "unsupported_op"),
        (pay("x-1", "ip-dead", 100), "/state", "failed"),
        (json!({"v":1,"id":"d-1","op":"device_info","terminal":"ip-1"}), "/state", "succeeded"),
        (json!({"v":1,"id":"ping-1","op":"ping","expires_at":"2099-01-01T00:00:00+03:00"}), "/state", "succeeded"),
        (json!({"v":1,"id":"s-1","op":"status","target":"p-1"}), "/target/state", "succeeded"),
        (json!({"v":1,"id":"s-2","op":"status","target":"never-sent"}), "/error/code", "not_found"),
        (json!({"v":1,"id":"fi-1","op":"fiscal_info","terminal":"token-1"}), "/state", "succeeded"),
        (json!({"v":1,"id":"d-2","op":"device_info","terminal":"token-1"}), "/state", "succeeded"),
        (json!({"v":1,"id":"tk-1","op":"payment","terminal":"token-1","amount":2000,"currency":"TRY",
            "basket": {"items": [{"name": "Su", "price": 500, "quantity": 1, "section_no": 1},
                                 {"name": "Armut", "price": 1500, "quantity": 1, "section_no": 1}],
                       "payments": [{"type": 1, "amount": 1000, "description": "nakit"},
                                    {"type": 3, "amount": 1000, "description": "kredi kartı"}]}}), "/state", "succeeded"),
    ];
    s.asks(asked).await;

    // A queue on the slow terminal (queue_depth 2): running, queued, full; repeats of a
    // running and a queued id; cancel of a queued, a running and a finished command.
    s.send(pay("q-1", "ip-slow", 100)).await;
    s.wait("evt", |v| v["id"] == "q-1" && v["state"] == "in_progress").await;
    s.send(pay("q-2", "ip-slow", 200)).await;
    s.send(pay("q-3", "ip-slow", 300)).await;
    assert_eq!(s.ask(pay("q-4", "ip-slow", 400)).await["error"]["code"], "busy");
    s.send(json!({"v":1,"id":"l-0","op":"list","terminal":"ip-slow"})).await;
    let mut records = s.result("l-0").await["items"].as_array().expect("items").clone();
    s.send(pay("q-1", "ip-slow", 100)).await;
    s.send(pay("q-2", "ip-slow", 200)).await;
    s.wait_n("evt", 2, |v| v["detail"]["duplicate"] == true).await;
    // Status of the running one; cancel of a queued, a running and a finished command.
    #[rustfmt::skip]
    let asked = vec![
        (json!({"v":1,"id":"s-3","op":"status","target":"q-1","terminal":"ip-slow"}), "/target/state", "in_progress"),
        (json!({"v":1,"id":"c-1","op":"cancel","target":"q-2"}), "/target/state", "cancelled"),
        (json!({"v":1,"id":"c-2","op":"cancel","target":"q-1"}), "/error/code", "not_cancellable"),
        (json!({"v":1,"id":"c-3","op":"cancel","target":"p-2"}), "/error/code", "not_cancellable"),
    ];
    s.asks(asked).await;
    assert_eq!(s.result("q-2").await["state"], "cancelled");
    assert_eq!(s.result("q-1").await["state"], "succeeded");
    assert_eq!(s.result("q-3").await["state"], "succeeded");

    // An answer that never comes: unknown; once the terminal is done, status reconciles.
    assert_eq!(s.ask(pay("h-1", "ip-hang", 700)).await["state"], "unknown");
    assert!(
        hang_stats.executed("h-1", Duration::from_secs(15)).await,
        "the hanging terminal finishes"
    );
    let mut reconciled = false;
    for i in 0..20 {
        let id = format!("st-h-{i}");
        s.send(json!({"v":1,"id":id,"op":"status","target":"h-1"})).await;
        if s.result(&id).await["target"]["reconciled"].is_object() {
            reconciled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reconciled, "status never reconciled h-1");

    // Lists: everything on record (every command state), and filtered.
    s.send(json!({"v":1,"id":"l-1","op":"list","limit":500})).await;
    records.extend(s.result("l-1").await["items"].as_array().expect("items").iter().cloned());
    assert_eq!(s.ask(json!({"v":1,"id":"l-2","op":"list","terminal":"ip-1","state":"succeeded","since":"2020-01-01T00:00:00Z","limit":10})).await["state"], "succeeded");
    // Pages: one item, then the next page by its cursor.
    let next = s.ask(json!({"v":1,"id":"l-3","op":"list","limit":1})).await["next"].clone();
    assert!(next.is_string(), "a second page exists");
    s.send(json!({"v":1,"id":"l-4","op":"list","limit":1,"cursor":next})).await;
    assert_eq!(s.result("l-4").await["items"].as_array().map(Vec::len), Some(1));

    // Retained terminal states, and a telemetry sample that counted all of the above.
    for (t, state) in [
        ("ip-1", "connected"),
        ("ip-slow", "busy"),
        ("ip-hang", "error"),
        ("ip-dead", "disconnected"),
        ("token-1", "connected"),
    ] {
        let m = s.wait(&format!("terminals/{t}"), |v| v["state"] == state).await;
        assert_eq!(m["terminal"], t, "the topic's last level is the terminal");
    }
    s.wait("telemetry", |v| v["commands"]["unknown"] == 1 && v["commands"]["cancelled"] == 1).await;

    // Clean shutdown: offline.
    let st = agent.sigterm();
    assert!(st.success(), "agent exit: {st:?}\n{}", agent.log());
    let offline = s.wait("status", |v| v["state"] == "offline").await;
    // A store that cannot sync: degraded, and the agent exits non-zero.
    agent.restart(&[(posbridge::faults::IO_ENV, "wal:sync=eio@1")]);
    s.send(json!({"v":1,"id":"deg-1","op":"ping"})).await;
    s.wait("status", |v| v["state"] == "degraded").await;
    let st =
        agent.wait_exit(Duration::from_secs(30)).expect("the agent stops after a store failure");
    assert!(!st.success(), "non-zero exit after a store failure");
    stop.cancel();

    // Everything the agent published (already validated as it was read).
    let mut published: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for sub in ["result", "evt", "status", "telemetry"] {
        published.insert(stem_of(sub), s.read(sub));
    }
    let mut terminal_msgs = Vec::new();
    for t in TERMINALS {
        terminal_msgs.extend(s.read(&format!("terminals/{t}")));
    }
    published.insert("terminal", terminal_msgs);
    let mut chk = s.chk;

    // Every documented property showed up, unless NOT_COVERED says why it cannot.
    for stem in PUBLISHED {
        let documented = documented_paths(&schemas.raw, stem);
        let seen = chk.seen.get(stem).cloned().unwrap_or_default();
        for (_, path, _) in NOT_COVERED.iter().filter(|(s, _, _)| *s == stem) {
            assert!(
                documented.contains(*path),
                "NOT_COVERED names {stem} {path}, which {stem}.schema.json does not document"
            );
        }
        let missing: Vec<&String> = documented
            .iter()
            .filter(|p| !seen.contains(*p))
            .filter(|p| !NOT_COVERED.iter().any(|(s, q, _)| *s == stem && q == p))
            .collect();
        if !missing.is_empty() {
            chk.failures.push(format!(
                "docs/schemas/{stem}.schema.json documents {missing:?}, but the agent never sent them in this \
                 session: either the code no longer sends them (renamed?) and the schema must follow, or the \
                 session cannot produce them and NOT_COVERED must say why"
            ));
        }
    }

    // Every value of the state enums showed up, and nothing else.
    let raw = &schemas.raw;
    for (stem, enum_ptr) in [
        ("result", "/$defs/final_state/enum"),
        ("evt", "/properties/state/enum"),
        ("status", "/properties/state/enum"),
        ("terminal", "/properties/state/enum"),
    ] {
        let want = enum_values(raw, stem, enum_ptr);
        let got = values_at(&published[stem], "/state");
        if want != got {
            chk.failures.push(format!(
                "docs/schemas/{stem}.schema.json{enum_ptr} is {want:?}, but the session's {stem} messages had states {got:?}"
            ));
        }
    }
    let want = enum_values(raw, "command", "/$defs/command_state/enum");
    let got = values_at(&records, "/state");
    if want != got {
        chk.failures.push(format!(
            "docs/schemas/command.schema.json/$defs/command_state/enum is {want:?}, but the records in lists had states {got:?}"
        ));
    }
    let codes = values_at(&published["result"], "/error/code");
    for code in ERROR_CODES_SEEN {
        if !codes.contains(code) {
            chk.failures.push(format!("no result carried error.code {code}; seen: {codes:?}"));
        }
    }

    // The agent's own offline message is the will the document describes.
    let will = asyncapi()["servers"]["mqtt"]["bindings"]["mqtt"]["lastWill"]["message"].clone();
    let mut will: Value =
        serde_json::from_str(will.as_str().expect("lastWill.message")).expect("will is JSON");
    // The document names the version by a placeholder; the agent, by its own.
    assert_eq!(will["version"], "<agent version>", "{will}");
    will["version"] = posbridge::VERSION.into();
    assert_eq!(offline, will, "a clean shutdown publishes the will's payload");
    chk.assert_clean();
}

/// With `security.command_keys`, envelopes and the refusals of unsigned or forged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commands_match_the_schemas() {
    let schemas = Schemas::load();
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, security) = cloud_key(dir.path(), "cloud-1");
    let spec =
        AgentSpec { extra: security, ..AgentSpec::new("shop-signed-schemas", broker.port()) };
    let cloud =
        Cloud::connect(broker.port(), "shop-signed-schemas", "cloud-signed-schemas", false).await;
    let mut s = Session::new(&cloud, &schemas);
    let mut agent = Agent::start(&spec, dir.path());
    s.wait("status", |v| v["state"] == "online").await;

    // The envelope against envelope.schema.json, its signed bytes against command.schema.json.
    let sealed = |cmd: Value, chk: &mut Checker| {
        let env = seal(cmd.to_string().as_bytes(), "cloud-1", &key);
        chk.valid("envelope", &format!("envelope of {}", cmd["id"]), &env);
        let inner = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(env["signed"].as_str().expect("signed"))
            .expect("base64url");
        let inner: Value = serde_json::from_slice(&inner).expect("signed JSON");
        assert_eq!(inner, cmd);
        chk.valid("command", &format!("signed command {}", cmd["id"]), &inner);
        chk.assert_clean();
        env
    };

    cloud
        .send(sealed(
            json!({"v":1,"id":"sp-1","op":"ping","agent":"shop-signed-schemas",
                   "expires_at": soon()}),
            &mut s.chk,
        ))
        .await;
    assert_eq!(s.result("sp-1").await["state"], "succeeded");
    // Unsigned, unknown kid, a signature over other bytes: unauthorized, id null.
    cloud.send(json!({"v":1,"id":"sp-2","op":"ping"})).await;
    let mut env = sealed(json!({"v":1,"id":"sp-3","op":"ping"}), &mut s.chk);
    env["kid"] = json!("cloud-2");
    cloud.send(env).await;
    let mut env = sealed(json!({"v":1,"id":"sp-4","op":"ping"}), &mut s.chk);
    env["sig"] = sealed(json!({"v":1,"id":"sp-5","op":"ping"}), &mut s.chk)["sig"].clone();
    cloud.send(env).await;
    let refused = s.wait_n("result", 3, |v| v["error"]["code"] == "unauthorized").await;
    assert!(refused.iter().all(|r| r["id"].is_null()), "{refused:?}");

    assert!(agent.sigterm().success(), "{}", agent.log());
    s.wait("status", |v| v["state"] == "offline").await;
    for sub in ["result", "evt", "status", "telemetry"] {
        s.read(sub);
    }
}

// ---------------------------------------------------------------- the AsyncAPI document

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(s) => json!(s.parse::<f64>().unwrap_or_else(|_| panic!("YAML number {s}"))),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("YAML key {other:?}"),
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        other => panic!("unsupported YAML node {other:?}"),
    }
}

fn asyncapi() -> Value {
    let path = docs().join("asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml");
    let parsed = yaml_rust2::YamlLoader::load_from_str(&text).expect("asyncapi.yaml is YAML");
    assert_eq!(parsed.len(), 1, "one YAML document");
    yaml_to_json(&parsed[0])
}

/// Follow a local `$ref` (`#/components/messages/result`) in the document.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("$ref {r} does not resolve")),
        None => v,
    }
}

/// The schema stem a message's payload names.
fn payload_stem(msg: &Value) -> String {
    let payload = &msg["payload"];
    assert_eq!(payload["schemaFormat"], "application/schema+json;version=2020-12", "{msg}");
    let r = payload["schema"]["$ref"].as_str().expect("payload.schema.$ref");
    r.strip_prefix("./schemas/")
        .and_then(|f| f.strip_suffix(".schema.json"))
        .unwrap_or_else(|| panic!("payload $ref {r} is not ./schemas/*.schema.json"))
        .to_string()
}

#[test]
fn the_asyncapi_document_matches_the_schemas() {
    let schemas = Schemas::load();
    let mut chk = Checker::new(&schemas);
    let doc = asyncapi();
    assert_eq!(doc["asyncapi"], "3.0.0");

    // Channels: the topics of mqtt-api.md, each with the schemas this test uses.
    let channels = doc["channels"].as_object().expect("channels");
    assert_eq!(channels.len(), TOPICS.len());
    for (name, ch) in channels {
        let address = ch["address"].as_str().expect("address");
        let sub = address
            .strip_prefix("{prefix}/{agent_id}/")
            .unwrap_or_else(|| panic!("channel {name}: address {address}"));
        let (_, stems, qos, retain) = TOPICS
            .iter()
            .find(|t| t.0 == sub)
            .unwrap_or_else(|| panic!("channel {name}: {address} is not a topic of mqtt-api.md"));
        let mut got: Vec<String> = ch["messages"]
            .as_object()
            .expect("messages")
            .values()
            .map(|m| payload_stem(deref(&doc, m)))
            .collect();
        got.sort();
        let mut want: Vec<String> = stems.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "channel {name} ({address})");
        // One operation on it, from the agent's point of view, with the contract's QoS.
        let ops: Vec<&Value> = doc["operations"]
            .as_object()
            .expect("operations")
            .values()
            .filter(|op| op["channel"]["$ref"] == format!("#/channels/{name}"))
            .collect();
        assert_eq!(ops.len(), 1, "channel {name}: one operation");
        let action = if sub == "cmd" { "receive" } else { "send" };
        assert_eq!(ops[0]["action"], action, "channel {name}");
        assert_eq!(ops[0]["bindings"]["mqtt"]["qos"], *qos, "channel {name}");
        assert_eq!(ops[0]["bindings"]["mqtt"]["retain"], *retain, "channel {name}");
    }

    // Servers: persistent session, the will on the status topic.
    for (name, server) in doc["servers"].as_object().expect("servers") {
        let b = &server["bindings"]["mqtt"];
        assert_eq!(b["cleanSession"], false, "server {name}");
        let will = &b["lastWill"];
        assert_eq!(will["topic"], "{prefix}/{agent_id}/status", "server {name}");
        assert_eq!(
            (will["qos"].clone(), will["retain"].clone()),
            (json!(1), json!(true)),
            "server {name}"
        );
        let payload: Value = serde_json::from_str(will["message"].as_str().expect("will message"))
            .expect("will message is JSON");
        chk.valid("status", &format!("server {name} lastWill"), &payload);
    }

    // Every example matches its message's schema.
    for (name, msg) in doc["components"]["messages"].as_object().expect("messages") {
        let stem = payload_stem(msg);
        let examples = msg["examples"].as_array().expect("examples");
        assert!(!examples.is_empty(), "message {name} has no example");
        for ex in examples {
            chk.valid(&stem, &format!("example {name}/{}", ex["name"]), &ex["payload"]);
        }
    }

    // The signed example is a real signature by the key its description shows.
    let signed = &doc["components"]["messages"]["signedCommand"];
    let description = signed["description"].as_str().expect("description");
    let pem: Vec<&str> = description
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .take_while(|l| !l.starts_with("```"))
        .collect();
    let mut keys = CommandKeys::default();
    keys.add_pem("cloud-1", &pem.join("\n")).expect("the example key");
    for ex in signed["examples"].as_array().expect("examples") {
        let opened = open(ex["payload"].to_string().as_bytes(), &keys)
            .unwrap_or_else(|e| panic!("example {}: {}", ex["name"], e.message));
        let cmd: Value = serde_json::from_slice(&opened.command).expect("signed command");
        chk.valid("command", &format!("example {} (signed bytes)", ex["name"]), &cmd);
    }
    chk.assert_clean();
}

/// A deadline five minutes ahead, as a signing cloud sets it.
fn soon() -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
