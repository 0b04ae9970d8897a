//! The mock over loopback (127.0.0.1:0 only): the garbled-answer conventions.

use serde_json::{json, Value};

use super::{KuveytSim, KuveytSimOptions, LinkSnapshot};

type Mock = crate::sim::cloud::Started<super::Kuveyt>;

async fn mock() -> Mock {
    KuveytSim::start_on_loopback(KuveytSimOptions::default()).await
}

impl Mock {
    /// Status, content type and body text of a POST.
    async fn post(&self, route: &str, body: Value) -> (u16, String, String) {
        let resp = self
            .http
            .post(format!("{}/api/payments/{route}/", self.base))
            .header("x-api-key", "test-api-key")
            .header("x-api-secret", "test-secret")
            .json(&body)
            .send()
            .await
            .expect("send");
        crate::sim::http::answer_parts(resp).await.expect("body")
    }

    async fn create(&self, order_id: &str, amount: &str) -> (u16, String, String) {
        let body = json!({"order_id": order_id, "provider": "kuveyt", "amount": amount,
            "currency": "TRY"});
        self.post("create", body).await
    }

    async fn verify(&self, tid: &str) -> (u16, String, String) {
        let body = json!({"transaction_id": tid, "provider": "kuveyt"});
        self.post("verify", body).await
    }

    fn link(&self, order_id: &str) -> LinkSnapshot {
        self.stats.links().into_iter().find(|l| l.order_id == order_id).expect("link")
    }
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok()
}

#[tokio::test]
async fn amount_58_garbles_the_first_verify_then_says_completed() {
    let m = mock().await;
    let (status, _, created) = m.create("o-58", "150.58").await;
    assert_eq!(status, 200);
    let created: Value = serde_json::from_str(&created).expect("JSON");
    let tid = created["transaction_id"].as_str().expect("tid").to_string();
    let (status, ct, first) = m.verify(&tid).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(!first.is_empty() && !is_json(&first), "{first}");
    // The payment completed at that verify; the books say so.
    let l = m.link("o-58");
    assert_eq!((l.status.as_str(), l.verifies), ("completed", 1));
    let (status, _, again) = m.verify(&tid).await;
    let v: Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!((status, v["payment"]["status"].as_str()), (200, Some("completed")));
    assert_eq!(first, again[..again.len() / 2]);
    assert_eq!(m.stats.counters().payments_created, 1);
    m.stop.cancel();
}

#[tokio::test]
async fn amount_59_creates_the_payment_and_garbles_the_answer() {
    let m = mock().await;
    let (status, ct, first) = m.create("o-59", "150.59").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(!first.is_empty() && !is_json(&first), "{first}");
    assert_eq!(m.stats.counters().payments_created, 1);
    let l = m.link("o-59");
    assert_eq!((l.status.as_str(), l.create_requests), ("pending", 1));
    // A repeat with the same order id returns the same payment, whole.
    let (status, _, again) = m.create("o-59", "150.59").await;
    let v: Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(v["transaction_id"], l.transaction_id.as_str());
    assert_eq!(v["success"], true);
    assert!(first.starts_with(r#"{"message":""#), "{first}");
    assert_eq!(m.stats.counters().payments_created, 1);
    assert_eq!(m.link("o-59").create_requests, 2);
    let (_, _, verified) = m.verify(&l.transaction_id).await;
    let v: Value = serde_json::from_str(&verified).expect("JSON");
    assert_eq!(v["payment"]["status"], "completed");
    m.stop.cancel();
}
