//! The simulated Smart POS's books and route logic (`kaspi.md`), without I/O: processes,
//! payments and refunds, tokens, and the fault knobs. The server in `mod.rs` feeds it
//! parsed requests and the current time. `looks` shows a process (`/v2/status`,
//! `/v2/actualize`), `tokens` is the protected API.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::drivers::kaspi::api::code;

mod looks;
mod tokens;

use self::tokens::Client;

/// One HTTP answer: status and JSON (or plain) body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub http: u16,
    pub body: String,
}

impl Reply {
    fn ok(data: Value) -> Reply {
        Reply { http: 200, body: json!({ "data": data, "statusCode": 0 }).to_string() }
    }

    fn err(http: u16, status_code: i64, text: &str) -> Reply {
        Reply { http, body: json!({ "errorText": text, "statusCode": status_code }).to_string() }
    }

    fn service(message: &str) -> Reply {
        Reply {
            http: 200,
            body: json!({ "data": { "message": message }, "errorText": "Error acquired in service process", "statusCode": code::SERVICE_ERROR }).to_string(),
        }
    }

    fn invalid_url() -> Reply {
        Reply::err(404, code::GENERIC, "Invalid Url. Please, contact developers")
    }

    fn missing(name: &str) -> Reply {
        Reply::err(400, code::GENERIC, &format!("Missing param: {name}"))
    }

    fn unvalidated(name: &str, cause: &str) -> Reply {
        Reply::err(400, code::GENERIC, &format!("Param unvalidated: {name}. {cause}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Qr,
    Card,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Qr => "qr",
            Method::Card => "card",
        }
    }
}

/// How a process will end once the customer has acted.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Success,
    Fail {
        sub: &'static str,
        message: &'static str,
    },
    /// kaspi.md: a QR payment stays `unknown` for the QR lifetime, then actualizes to `fail`.
    UnknownThenFail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Payment,
    Refund,
}

#[derive(Debug)]
struct Proc {
    kind: Kind,
    tenge: i64,
    method: Method,
    plan: Plan,
    started: Instant,
    /// `unknown` answers still to give (fault knob) before the real outcome shows.
    unknown_left: u64,
    /// `/v2/status` answers still to garble (amount `…19`, fault knob).
    garble_status_left: u64,
    /// An actualize has made the final outcome visible to `/status` as well.
    actualized: bool,
    cheque: Value,
    /// Refunds: the payment's refund id. Payments: tenge still refundable.
    refund_of: Option<String>,
    refundable: i64,
    counted_final: bool,
}

/// Tunables the server passes on (see `SimOptions`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub customer_time: Duration,
    pub qr_lifetime: Duration,
    pub token_lifetime: Duration,
    pub actualize_gap: Duration,
    pub protected: bool,
    pub fail_rate: f64,
    pub terminal_id: String,
    pub serial: String,
}

/// Counters a test reads to prove what the terminal did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub payments_started: u64,
    pub refunds_started: u64,
    pub status_calls: u64,
    pub actualize_calls: u64,
    /// Actualize calls for one process closer together than `actualize_gap`.
    pub actualize_too_soon: u64,
    pub registers: u64,
    pub revokes: u64,
    /// Requests refused with 401/403.
    pub auth_refused: u64,
    pub last_owncheque: Option<String>,
}

pub struct Terminal {
    pub settings: Settings,
    rng: StdRng,
    next_id: u64,
    procs: HashMap<String, Proc>,
    /// Process id by its refund id (orderNumber / rrn) for successful payments.
    by_refund_id: HashMap<String, String>,
    /// Starts per process id (always 1: the proof tests read).
    starts: HashMap<String, u64>,
    last_actualize: HashMap<String, Instant>,
    clients: HashMap<String, Client>,
    register_pending: bool,
    pub counts: Counts,
    // Knobs.
    pub unknown_next: u64,
    pub lose_next: Option<String>,
    pub refresh_broken: bool,
    /// The next process started garbles its first N `/v2/status` answers.
    pub garble_status_next: u64,
    /// The next payment started shows `chequeInfo.amount` off by this many tenge.
    pub cheque_off_next: i64,
    /// Set while a start request of the `…18` convention is handled: its answer is lost.
    lose_this_answer: bool,
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Reply> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Reply::missing(name))
}

fn amount_param(params: &HashMap<String, String>) -> Result<i64, Reply> {
    let raw = param(params, "amount")?;
    match raw.parse::<i64>() {
        Ok(v) if v > 0 => Ok(v),
        Ok(_) => Err(Reply::unvalidated("amount", "Must be greater 0")),
        Err(_) => Err(Reply::unvalidated("amount", "Must be an integer")),
    }
}

fn owncheque_param(params: &HashMap<String, String>) -> Result<Option<String>, Reply> {
    match params.get("owncheque").map(String::as_str) {
        None => Ok(None),
        Some(v @ ("true" | "false")) => Ok(Some(v.to_string())),
        Some(_) => Err(Reply::unvalidated("owncheque", "Must be true or false")),
    }
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

fn tenge_text(tenge: i64, refund: bool) -> String {
    // "1 500 ₸": thousands separated by spaces, as on Kaspi cheques.
    let s = tenge.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    if refund {
        format!("- {out} ₸")
    } else {
        format!("{out} ₸")
    }
}

impl Terminal {
    pub fn new(settings: Settings, rng: StdRng) -> Terminal {
        Terminal {
            settings,
            rng,
            next_id: 0,
            procs: HashMap::new(),
            by_refund_id: HashMap::new(),
            starts: HashMap::new(),
            last_actualize: HashMap::new(),
            clients: HashMap::new(),
            register_pending: false,
            counts: Counts::default(),
            unknown_next: 0,
            lose_next: None,
            refresh_broken: false,
            garble_status_next: 0,
            cheque_off_next: 0,
            lose_this_answer: false,
        }
    }

    pub fn starts_of(&self, process_id: &str) -> u64 {
        self.starts.get(process_id).copied().unwrap_or(0)
    }

    pub fn process_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.starts.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the answer to this route should be dropped (knob, one-shot; or the
    /// `…18` convention for the start request just handled).
    pub fn take_lose(&mut self, route: &str) -> bool {
        if std::mem::take(&mut self.lose_this_answer) {
            return true;
        }
        if self.lose_next.as_deref() == Some(route) {
            self.lose_next = None;
            return true;
        }
        false
    }

    /// Is an operation still running (kaspi.md: error 107)?
    fn busy(&self, now: Instant) -> bool {
        self.procs.values().any(|p| now.duration_since(p.started) < self.settings.customer_time)
    }

    /// What a payment and a refund do once their own parameters are read: note
    /// `owncheque`, then refuse while an operation is still running (107).
    fn admit(&mut self, now: Instant, params: &HashMap<String, String>) -> Result<(), Reply> {
        self.counts.last_owncheque = owncheque_param(params)?;
        if self.busy(now) {
            return Err(Reply::err(
                200,
                code::LAST_OPERATION_RUNNING,
                "Could not register transaction. Last operation was not completed.",
            ));
        }
        Ok(())
    }

    fn new_process_id(&mut self) -> String {
        self.next_id += 1;
        (1_678_090_451_700u64 + self.next_id).to_string()
    }

    /// Amount conventions (whole tenge, last two digits; docs/terminals/kaspi.md):
    /// 06 blocked (106), 07 start failure (108), 11 QR ok, 12 card ok, 13 card declined,
    /// 14 QR declined, 15 customer cancels, 16 QR stays unknown then actualizes to fail,
    /// 17 card ok but `/v2/status` and actualize show a `chequeInfo.amount` one tenge
    /// more than requested (the books keep the requested amount: that is what can be
    /// refunded), 18 card ok but the answer to the start request is lost (the connection
    /// closes without one; refunds of an amount ending in 18 too), 19 card ok but the
    /// first 3 `/v2/status` answers of the process are garbled (HTTP 200, the JSON cut
    /// short); 20 card ok, but a careless firmware puts the full card number in
    /// `cardMask` and track 2 data in `chequeInfo.track2` (the agent must mask both);
    /// anything else: method drawn from the seed, declined with probability
    /// `fail_rate`. Refunds always succeed; of these conventions only 18 applies to them.
    fn plan_for(&mut self, tenge: i64) -> Result<(Method, Plan), Reply> {
        let coin: bool = self.rng.random();
        let drawn = if coin { Method::Qr } else { Method::Card };
        Ok(match tenge % 100 {
            6 => return Err(Reply::err(200, code::PAYMENTS_BLOCKED, "Payments are blocked")),
            7 => {
                return Err(Reply::err(
                    200,
                    code::START_FAILED,
                    "Could not register transaction. Something went wrong.",
                ))
            }
            11 => (Method::Qr, Plan::Success),
            12 => (Method::Card, Plan::Success),
            13 => (
                Method::Card,
                Plan::Fail {
                    sub: "CardTransactionFailure", message: "Операция отклонена банком"
                },
            ),
            14 => (
                Method::Qr,
                Plan::Fail {
                    sub: "QrTransactionFailure", message: "Клиент отклонил покупку"
                },
            ),
            15 => (
                drawn,
                Plan::Fail {
                    sub: "ProcessCancelled",
                    message: "Сатып алымды жою; Сатып алушы сатып алуды растаған жоқ",
                },
            ),
            16 => (Method::Qr, Plan::UnknownThenFail),
            17..=20 => (Method::Card, Plan::Success),
            _ => {
                let declined = self.rng.random::<f64>() < self.settings.fail_rate;
                let plan = match (declined, drawn) {
                    (false, _) => Plan::Success,
                    (true, Method::Card) => Plan::Fail {
                        sub: "CardTransactionFailure",
                        message: "Операция отклонена банком",
                    },
                    (true, Method::Qr) => Plan::Fail {
                        sub: "QrTransactionFailure",
                        message: "Клиент отклонил покупку",
                    },
                };
                (drawn, plan)
            }
        })
    }

    fn cheque(&mut self, kind: Kind, method: Method, tenge: i64, refund_id: Option<&str>) -> Value {
        let refund = kind == Kind::Refund;
        let mut c = json!({
            "address": "пр. Абая, 1",
            "amount": tenge_text(tenge, refund),
            "bin": "960419351140",
            "city": "Алматы",
            "date": chrono::Local::now().format("%d.%m.%y %H:%M:%S").to_string(),
            "method": method.as_str(),
            "status": "Успешно",
            "storeName": "Kaspi Mark",
            "terminalId": self.settings.terminal_id,
            "type": if refund { "refund" } else { "payment" },
        });
        match method {
            Method::Qr => {
                let order = match refund_id {
                    Some(id) => id.to_string(),
                    None => digits(&mut self.rng, 9),
                };
                c["orderNumber"] = order.into();
            }
            Method::Card => {
                let rrn = match refund_id {
                    Some(id) => id.to_string(),
                    None => digits(&mut self.rng, 12),
                };
                c["rrn"] = rrn.into();
                c["cardMask"] = format!("440043*****{}", digits(&mut self.rng, 4)).into();
                if tenge % 100 == 20 && !refund {
                    c["cardMask"] = "4111111111111111".into();
                    c["track2"] = "4111111111111111=25121010000000000000".into();
                }
                c["authorizationCode"] = digits(&mut self.rng, 6).into();
                if !refund {
                    c["hostResponseCode"] = "000".into();
                    c["icc"] = "Visa Debit".into();
                }
            }
        }
        c
    }

    fn start(&mut self, now: Instant, mut p: Proc) -> Reply {
        let id = self.new_process_id();
        p.unknown_left = std::mem::take(&mut self.unknown_next);
        p.garble_status_left = std::mem::take(&mut self.garble_status_next);
        if p.kind == Kind::Payment && p.tenge % 100 == 19 {
            p.garble_status_left = p.garble_status_left.max(3);
        }
        // `…18`: the process runs, its start answer (the processId) never arrives; the
        // books still hold it (`SimStats::process_ids`, `/v2/status` by that id).
        self.lose_this_answer = p.tenge % 100 == 18;
        *self.starts.entry(id.clone()).or_default() += 1;
        match p.kind {
            Kind::Payment => self.counts.payments_started += 1,
            Kind::Refund => self.counts.refunds_started += 1,
        }
        p.started = now;
        self.procs.insert(id.clone(), p);
        Reply::ok(json!({ "processId": id, "status": "wait" }))
    }

    pub fn payment(&mut self, now: Instant, params: &HashMap<String, String>) -> Reply {
        let tenge = match amount_param(params) {
            Ok(t) => t,
            Err(r) => return r,
        };
        if let Err(r) = self.admit(now, params) {
            return r;
        }
        let (method, plan) = match self.plan_for(tenge) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let mut shown = tenge + std::mem::take(&mut self.cheque_off_next);
        if tenge % 100 == 17 {
            shown += 1;
        }
        let cheque = self.cheque(Kind::Payment, method, shown, None);
        self.start(
            now,
            Proc {
                kind: Kind::Payment,
                tenge,
                method,
                plan,
                started: now,
                unknown_left: 0,
                garble_status_left: 0,
                actualized: false,
                cheque,
                refund_of: None,
                refundable: tenge,
                counted_final: false,
            },
        )
    }

    pub fn refund(&mut self, now: Instant, params: &HashMap<String, String>) -> Reply {
        let method = match param(params, "method") {
            Ok("qr") => Method::Qr,
            Ok("card") => Method::Card,
            Ok(_) => return Reply::unvalidated("method", "Unknown payment method"),
            Err(r) => return r,
        };
        let tenge = match amount_param(params) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let txn = match param(params, "transactionId") {
            Ok(t) => t.to_string(),
            Err(r) => return r,
        };
        if let Err(r) = self.admit(now, params) {
            return r;
        }
        let Some(pay) = self.by_refund_id.get(&txn).and_then(|pid| self.procs.get(pid)) else {
            return Reply::unvalidated("transactionId", "Transaction not found");
        };
        if pay.method != method {
            return Reply::unvalidated("method", "Refund must use the payment's method");
        }
        if tenge > pay.refundable {
            return Reply::unvalidated("amount", "Refunds exceed the payment amount");
        }
        let cheque = self.cheque(Kind::Refund, method, tenge, Some(&txn));
        self.start(
            now,
            Proc {
                kind: Kind::Refund,
                tenge,
                method,
                plan: Plan::Success,
                started: now,
                unknown_left: 0,
                garble_status_left: 0,
                actualized: false,
                cheque,
                refund_of: Some(txn),
                refundable: 0,
                counted_final: false,
            },
        )
    }

    pub fn device_info(&self) -> Reply {
        Reply::ok(
            json!({ "posNum": "0", "serialNum": self.settings.serial, "terminalId": self.settings.terminal_id }),
        )
    }

    pub fn forget_processes(&mut self) {
        self.procs.clear();
        self.by_refund_id.clear();
    }

    /// Processes held `unknown` by the knob show their real outcome from the next look.
    pub fn settle_unknown(&mut self) {
        self.unknown_next = 0;
        for p in self.procs.values_mut() {
            p.unknown_left = 0;
        }
    }
}
