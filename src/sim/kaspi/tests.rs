//! The simulator over real HTTP: routes, error codes, timing, tokens, knobs.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::*;

async fn sim(opts: SimOptions) -> (String, SimStats, SimControl, CancellationToken) {
    let s = KaspiSim::bind("127.0.0.1:0".parse().expect("addr"), opts).await.expect("bind");
    let (url, stats, control) = (s.url(), s.stats(), s.control());
    let stop = CancellationToken::new();
    s.spawn(stop.clone());
    (url, stats, control, stop)
}

/// A sim with the `quick` options, changed by `change`.
async fn quick_sim(
    change: impl FnOnce(&mut SimOptions),
) -> (String, SimStats, SimControl, CancellationToken) {
    let mut opts = quick();
    change(&mut opts);
    sim(opts).await
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut r = c.get(url);
    if let Some(t) = token {
        r = r.header("accesstoken", t);
    }
    let resp = r.send().await.expect("send");
    let code = resp.status().as_u16();
    let body = resp.text().await.expect("body");
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// The `statusCode` of the answer to a GET of `url` (no token).
async fn status_code(url: &str) -> Value {
    get(url, None).await.1["statusCode"].clone()
}

/// The process id of the operation a GET of `url` (no token) started.
async fn started(url: &str) -> String {
    let (_, v) = get(url, None).await;
    v["data"]["processId"].as_str().expect("pid").to_string()
}

/// A payment of `amount` started: its process id.
async fn payment(url: &str, amount: u32) -> String {
    started(&format!("{url}/v2/payment?amount={amount}")).await
}

fn quick() -> SimOptions {
    SimOptions { seed: Some(7), customer_time: Duration::ZERO, ..Default::default() }
}

#[tokio::test]
async fn payment_conventions_and_errors() {
    let (url, stats, _c, stop) = sim(quick()).await;
    let pid = started(&format!("{url}/v2/payment?amount=1511&owncheque=true")).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "success");
    assert_eq!(v["data"]["chequeInfo"]["method"], "qr");
    assert_eq!(v["data"]["chequeInfo"]["amount"], "1 511 ₸");
    assert_eq!(stats.counts().last_owncheque.as_deref(), Some("true"));
    let pid = payment(&url, 213).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "fail");
    assert_eq!(v["data"]["subStatus"], "CardTransactionFailure");
    for (amount, http, code) in [("106", 200, 106), ("0", 400, 999), ("abc", 400, 999)] {
        let (h, v) = get(&format!("{url}/v2/payment?amount={amount}"), None).await;
        assert_eq!((h, v["statusCode"].as_i64()), (http, Some(code)), "{amount}: {v}");
    }
    let (h, v) = get(&format!("{url}/v2/payment"), None).await;
    assert_eq!((h, v["errorText"].as_str()), (400, Some("Missing param: amount")));
    let (h, v) = get(&format!("{url}/v2/nope"), None).await;
    assert_eq!(h, 404, "{v}");
    assert_eq!(status_code(&format!("{url}/v2/status?processId=42")).await, 101);
    assert_eq!(stats.counts().payments_started, 2);
    stop.cancel();
}

#[tokio::test]
async fn refund_rules() {
    let (url, stats, _c, stop) = sim(quick()).await;
    let pid = payment(&url, 1012).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    let rrn = v["data"]["chequeInfo"]["rrn"].as_str().expect("rrn").to_string();
    let (h, v) =
        get(&format!("{url}/v2/refund?method=qr&amount=1&transactionId={rrn}"), None).await;
    assert_eq!(h, 400, "method must match: {v}");
    let (_, v) =
        get(&format!("{url}/v2/refund?method=cash&amount=1&transactionId={rrn}"), None).await;
    assert_eq!(v["errorText"], "Param unvalidated: method. Unknown payment method");
    let rid =
        started(&format!("{url}/v2/refund?method=card&amount=1000&transactionId={rrn}")).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={rid}"), None).await;
    assert_eq!(v["data"]["chequeInfo"]["type"], "refund");
    assert_eq!(v["data"]["chequeInfo"]["amount"], "- 1 000 ₸");
    let (h, _) =
        get(&format!("{url}/v2/refund?method=card&amount=13&transactionId={rrn}"), None).await;
    assert_eq!(h, 400, "over-refund refused");
    assert_eq!(stats.counts().refunds_started, 1);
    stop.cancel();
}

#[tokio::test]
async fn unknown_actualize_and_rate_counting() {
    let (url, stats, control, stop) = quick_sim(|o| o.qr_lifetime = Duration::ZERO).await;
    let pid = payment(&url, 116).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "unknown");
    let (_, v) = get(&format!("{url}/v2/actualize?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "fail", "{v}");
    assert_eq!(status_code(&format!("{url}/v2/actualize?processId={pid}")).await, 103);
    assert_eq!(stats.counts().actualize_too_soon, 1);
    // Knob: unknown until settled.
    control.unknown_for_next(u64::MAX);
    let pid = payment(&url, 111).await;
    let (_, v) = get(&format!("{url}/v2/actualize?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "unknown");
    control.settle_unknown();
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "success");
    control.forget_processes();
    assert_eq!(status_code(&format!("{url}/v2/status?processId={pid}")).await, 101);
    stop.cancel();
}

#[tokio::test]
async fn busy_while_the_customer_acts() {
    let (url, _s, _c, stop) = quick_sim(|o| o.customer_time = Duration::from_secs(30)).await;
    let pid = payment(&url, 100).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(
        (v["data"]["status"].as_str(), v["data"]["subStatus"].as_str()),
        (Some("wait"), Some("WaitUser"))
    );
    assert_eq!(status_code(&format!("{url}/v2/payment?amount=100")).await, 107);
    stop.cancel();
}

#[tokio::test]
async fn tokens_register_revoke_expire() {
    let (url, stats, control, stop) = quick_sim(|o| {
        o.protected = true;
        o.cashier = Cashier::Allow(Duration::from_millis(50));
    })
    .await;
    let (h, v) = get(&format!("{url}/v2/deviceinfo"), None).await;
    assert_eq!((h, v["errorText"].as_str()), (401, Some("Authorization failed")));
    let (_, v) = get(&format!("{url}/v2/register?name=Kassa1"), None).await;
    let access = v["data"]["accessToken"].as_str().expect("access").to_string();
    let refresh = v["data"]["refreshToken"].as_str().expect("refresh").to_string();
    assert!(crate::drivers::kaspi::api::parse_expiration(
        v["data"]["expirationDate"].as_str().expect("exp")
    )
    .is_some());
    let (h, _) = get(&format!("{url}/v2/deviceinfo"), Some(&access)).await;
    assert_eq!(h, 200);
    control.expire_tokens_now();
    let (h, _) = get(&format!("{url}/v2/deviceinfo"), Some(&access)).await;
    assert_eq!(h, 403);
    let (_, v) =
        get(&format!("{url}/v2/revoke?name=Kassa1&refreshToken=wrong"), Some(&access)).await;
    assert_eq!(v["statusCode"], 105);
    let (_, v) =
        get(&format!("{url}/v2/revoke?name=Kassa1&refreshToken={refresh}"), Some(&access)).await;
    let access2 = v["data"]["accessToken"].as_str().expect("access2").to_string();
    let (h, _) = get(&format!("{url}/v2/deviceinfo"), Some(&access)).await;
    assert_eq!(h, 401, "the old token died at once");
    let (h, _) = get(&format!("{url}/v2/deviceinfo"), Some(&access2)).await;
    assert_eq!(h, 200);
    control.require_renewal();
    let (h, v) = get(&format!("{url}/v2/deviceinfo"), Some(&access2)).await;
    assert_eq!((h, v["errorText"].as_str()), (401, Some("Session expires and need to be updated")));
    // A second register while the cashier still decides: 105.
    control.set_cashier(Cashier::Ignore);
    let u2 = url.clone();
    let pending = tokio::spawn(async move {
        let c = reqwest::Client::new();
        let _ = c
            .get(format!("{u2}/v2/register?name=Kassa2"))
            .timeout(Duration::from_millis(500))
            .send()
            .await;
    });
    // Wait until the first request is with the cashier.
    tokio::time::timeout(Duration::from_secs(5), async {
        while stats.counts().registers < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("register pending");
    let (_, v) = get(&format!("{url}/v2/register?name=Kassa3"), None).await;
    assert_eq!(v["data"]["message"], "Register Error. Last register request not completed");
    pending.await.expect("join");
    assert_eq!(stats.counts().revokes, 2);
    stop.cancel();
}

/// A GET whose answer is expected to be lost: the request fails, no response arrives.
async fn get_lost(url: &str) {
    let c = reqwest::Client::builder().no_proxy().build().expect("client");
    let r = c.get(url).timeout(Duration::from_secs(5)).send().await;
    assert!(r.is_err(), "expected a lost answer, got {r:?}");
}

/// Status and body text as they came (for answers that are not JSON).
async fn get_text(url: &str) -> (u16, String, String) {
    let c = reqwest::Client::builder().no_proxy().build().expect("client");
    let resp = c.get(url).send().await.expect("send");
    crate::sim::http::answer_parts(resp).await.expect("body")
}

#[tokio::test]
async fn amount_17_shows_one_tenge_more_than_requested() {
    let (url, stats, _c, stop) = sim(quick()).await;
    let pid = payment(&url, 1517).await;
    for _ in 0..2 {
        let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
        assert_eq!(v["data"]["status"], "success", "{v}");
        assert_eq!(v["data"]["chequeInfo"]["method"], "card");
        assert_eq!(v["data"]["chequeInfo"]["amount"], "1 518 ₸");
    }
    assert_eq!((stats.starts_of(&pid), stats.counts().payments_started), (1, 1));
    // The books keep what was requested: 1517 can be refunded, not 1518.
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    let rrn = v["data"]["chequeInfo"]["rrn"].as_str().expect("rrn").to_string();
    let refund =
        |amount: i64| format!("{url}/v2/refund?method=card&amount={amount}&transactionId={rrn}");
    let (h, _) = get(&refund(1518), None).await;
    assert_eq!(h, 400);
    let (_, v) = get(&refund(1517), None).await;
    assert!(v["data"]["processId"].is_string(), "{v}");
    stop.cancel();
}

#[tokio::test]
async fn amount_18_runs_the_process_and_loses_the_start_answer() {
    let (url, stats, _c, stop) = sim(quick()).await;
    get_lost(&format!("{url}/v2/payment?amount=1518")).await;
    assert_eq!(stats.counts().payments_started, 1);
    let ids = stats.process_ids();
    assert_eq!(ids.len(), 1);
    let pid = &ids[0];
    assert_eq!(stats.starts_of(pid), 1);
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(v["data"]["status"], "success", "{v}");
    assert_eq!(v["data"]["chequeInfo"]["amount"], "1 518 ₸");
    let rrn = v["data"]["chequeInfo"]["rrn"].as_str().expect("rrn").to_string();
    // A refund ending in 18 too: it runs, its start answer is lost.
    get_lost(&format!("{url}/v2/refund?method=card&amount=118&transactionId={rrn}")).await;
    assert_eq!(stats.counts().refunds_started, 1);
    let rid = stats.process_ids().into_iter().find(|id| id != pid).expect("refund process");
    let (_, v) = get(&format!("{url}/v2/status?processId={rid}"), None).await;
    assert_eq!(v["data"]["status"], "success", "{v}");
    assert_eq!(v["data"]["chequeInfo"]["amount"], "- 118 ₸");
    // Other amounts are answered as before.
    let (h, v) = get(&format!("{url}/v2/payment?amount=1512"), None).await;
    assert_eq!(h, 200);
    assert!(v["data"]["processId"].is_string(), "{v}");
    stop.cancel();
}

#[tokio::test]
async fn amount_19_garbles_the_first_three_status_answers() {
    let (url, stats, control, stop) = sim(quick()).await;
    let pid = payment(&url, 1519).await;
    let status = format!("{url}/v2/status?processId={pid}");
    let mut cut = Vec::new();
    for _ in 0..3 {
        let (h, ct, body) = get_text(&status).await;
        assert_eq!(h, 200);
        assert!(ct.starts_with("application/json"), "{ct}");
        assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
        cut.push(body);
    }
    let (_, v) = get(&status, None).await;
    assert_eq!(v["data"]["status"], "success", "{v}");
    assert_eq!(v["data"]["chequeInfo"]["method"], "card");
    let whole = serde_json::to_string(&v).expect("json");
    assert!(whole.len() / 2 >= cut[0].len() && !cut[0].is_empty());
    assert!(cut.iter().all(|c| c.starts_with("{\"data\":{")), "{cut:?}");
    assert_eq!((stats.starts_of(&pid), stats.counts().status_calls), (1, 4));
    // The knob does the same for any amount.
    control.garble_status_for_next(1);
    let pid = payment(&url, 1512).await;
    let status = format!("{url}/v2/status?processId={pid}");
    let (_, _, body) = get_text(&status).await;
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    let (_, v) = get(&status, None).await;
    assert_eq!(v["data"]["status"], "success", "{v}");
    control.cheque_amount_off_next(-2);
    let pid = payment(&url, 1512).await;
    let (_, v) = get(&format!("{url}/v2/status?processId={pid}"), None).await;
    assert_eq!(v["data"]["chequeInfo"]["amount"], "1 510 ₸");
    stop.cancel();
}
