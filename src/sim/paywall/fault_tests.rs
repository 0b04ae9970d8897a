//! The mock over loopback (127.0.0.1:0 only): the answer faults and what `list`
//! answers.

use serde_json::{json, Value};

use super::{PaymentSnapshot, PaywallSim, PaywallSimOptions};
use crate::drivers::paywall::api::STATUS_SUCCEEDED;

const TERMINAL: &str = "8ff33705-57c7-42dc-8341-a0053e7f3009";

type Mock = crate::sim::cloud::Started<super::Paywall>;

async fn mock() -> Mock {
    PaywallSim::start_on_loopback(PaywallSimOptions::default()).await
}

impl Mock {
    fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        r.header("apikeyprivate", "test-api-key").header("apiclientprivate", "test-secret")
    }

    /// Status, content type and body of a sale; `None` when the answer was lost.
    async fn sale(&self, muc: &str, amount: &str) -> Option<(u16, String, String)> {
        let body = format!(
            r#"{{"TerminalId":"{TERMINAL}","MerchantUniqueCode":"{muc}","Amount":{amount},"CurrencyId":1,"Products":[{{"Name":"Su","TaxGroupId":10,"UnitCodeId":1,"Amount":{amount},"Quantity":1}}]}}"#
        );
        let url = format!("{}/api/payment/sync/sale", self.base);
        let resp = self
            .authed(self.http.post(url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()?;
        crate::sim::http::answer_parts(resp).await.ok()
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp =
            self.authed(self.http.get(format!("{}{path}", self.base))).send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON"))
    }

    async fn list(&self, muc: &str) -> (u16, Value) {
        self.get_json(&format!("/api/payment/list?MerchantUniqueCode={muc}")).await
    }

    fn payment(&self, muc: &str) -> PaymentSnapshot {
        self.stats.payments().into_iter().find(|p| p.merchant_unique_code == muc).expect("payment")
    }
}

#[tokio::test]
async fn list_answers_an_empty_result_for_an_unknown_code_and_the_sale_for_a_known_one() {
    let m = mock().await;
    let unknown = "00000000-0000-4000-8000-000000000001";
    let (status, v) = m.list(unknown).await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"result": [], "errorCode": 0, "succeeded": true, "failed": false}));
    let muc = "3a0f4d0f-c5cf-57b6-8ec2-861f71b7fb90";
    let (status, _, _) = m.sale(muc, "22.00").await.expect("answer");
    assert_eq!(status, 200);
    let (status, v) = m.list(&muc.to_ascii_uppercase()).await;
    assert_eq!(status, 200);
    let p = m.payment(muc);
    assert_eq!(
        v,
        json!({"result": [{
            "paymentRequestId": p.payment_request_id,
            "paymentRequestActivityId": v["result"][0]["paymentRequestActivityId"],
            "paymentRequestActivityTypeId": 1,
            "paymentStatus": STATUS_SUCCEEDED,
            "merchantUniqueCode": muc,
            "terminalId": TERMINAL,
            "amount": "22.00",
            "environment": "test",
        }], "errorCode": 0, "succeeded": true, "failed": false})
    );
    m.stop.cancel();
}

#[tokio::test]
async fn amount_61_sells_and_cuts_the_answer_short() {
    let m = mock().await;
    let muc = "6161aaaa-0000-4000-8000-000000000061";
    let (status, ct, first) = m.sale(muc, "22.61").await.expect("answer");
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(serde_json::from_str::<Value>(&first).is_err(), "{first}");
    assert_eq!(m.stats.counters().payments_created, 1);
    assert_eq!(m.payment(muc).status, STATUS_SUCCEEDED);
    // A repeat is answered whole, from the books: the text the first answer was cut from.
    let (status, _, again) = m.sale(muc, "22.61").await.expect("answer");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!(v["Succeeded"], true);
    assert_eq!(v["Result"]["paymentRequestId"], m.payment(muc).payment_request_id.as_str());
    assert_eq!(first, again[..again.len() / 2]);
    let (_, listed) = m.list(muc).await;
    assert_eq!(listed["result"][0]["paymentStatus"], STATUS_SUCCEEDED);
    assert_eq!((m.stats.counters().payments_created, m.payment(muc).sale_requests), (1, 2));
    m.stop.cancel();
}

#[tokio::test]
async fn amount_62_loses_the_answer_and_hides_the_sale_from_list_until_published() {
    let m = mock().await;
    let muc = "6262aaaa-0000-4000-8000-000000000062";
    assert!(m.sale(muc, "22.62").await.is_none(), "the answer must be lost");
    assert_eq!(m.stats.counters().payments_created, 1);
    let p = m.payment(muc);
    assert_eq!((p.status, p.listed), (STATUS_SUCCEEDED, false));
    let (status, v) = m.list(muc).await;
    assert_eq!((status, v["result"].clone()), (200, json!([])));
    let (status, v) = m.get_json(&format!("/api/payment/inquiry/{}", p.payment_request_id)).await;
    assert_eq!(status, 200);
    assert_eq!(v["Result"]["paymentStatus"], STATUS_SUCCEEDED);
    assert_eq!(v["Result"]["merchantUniqueCode"], muc);
    // A repeat is answered normally; list still hides the sale.
    let (status, _, again) = m.sale(muc, "22.62").await.expect("answer");
    let v: Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!((status, &v["Result"]["paymentRequestId"]), (200, &json!(p.payment_request_id)));
    assert_eq!(m.list(muc).await.1["result"], json!([]));
    // Published through the control route: list shows it from now on.
    let publish =
        |code: &str| m.http.post(format!("{}/_sim/payments/{code}/publish", m.root)).send();
    let unknown = publish("00000000-0000-4000-8000-000000000002").await.expect("send");
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(publish(muc).await.expect("send").status().as_u16(), 200);
    let (_, v) = m.list(muc).await;
    assert_eq!(v["result"][0]["paymentRequestId"], p.payment_request_id.as_str());
    assert_eq!(v["result"][0]["paymentStatus"], STATUS_SUCCEEDED);
    assert_eq!(m.stats.counters().payments_created, 1);
    // The handle does the same.
    assert!(m.stats.publish(muc));
    m.stop.cancel();
}
