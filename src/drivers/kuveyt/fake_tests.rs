//! The pay-by-link driver against a scripted provider (the [`PayByLink`] seam): the
//! money rules that do not need HTTP to show — a lost create answer is retried with the
//! same order id (never a second link), and a refused create is a definite answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::*;
use crate::drivers::Answer;
use crate::store::Store;

/// Answers `create` from a script (then `Ok` with the same link) and records every order
/// id it was asked for; `verify` says the link was paid.
struct Scripted {
    creates: Mutex<Vec<Result<(), ProviderError>>>,
    order_ids: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    /// The provider, and the order ids it will have been asked for.
    fn new(creates: Vec<Result<(), ProviderError>>) -> (Scripted, Arc<Mutex<Vec<String>>>) {
        let order_ids = Arc::new(Mutex::new(vec![]));
        let p = Scripted { creates: Mutex::new(creates), order_ids: order_ids.clone() };
        (p, order_ids)
    }
}

#[async_trait]
impl PayByLink for Scripted {
    async fn create(&self, req: &CreateRequest) -> Result<(Created, Value), ProviderError> {
        self.order_ids.lock().expect("lock").push(req.order_id.clone());
        let next = {
            let mut c = self.creates.lock().expect("lock");
            if c.is_empty() {
                Ok(())
            } else {
                c.remove(0)
            }
        };
        next.map(|()| {
            (
                Created {
                    transaction_id: format!("T-{}", req.order_id),
                    payment_url: "https://pay.example/x".into(),
                    payment_id: None,
                    payment_number: None,
                },
                json!({}),
            )
        })
    }
    async fn verify(&self, _transaction_id: &str) -> Result<(LinkStatus, Value), ProviderError> {
        Ok((LinkStatus::Completed { paid_at: None }, json!({ "status": "completed" })))
    }
    async fn probe(&self) -> Result<Value, String> {
        Ok(json!({}))
    }
}

fn driver(p: Scripted) -> KuveytDriver {
    KuveytDriver {
        mode: ProviderMode::Test,
        agent_id: "shop-1".into(),
        poll_interval: Duration::from_millis(1),
        return_url: None,
        cancel_url: None,
        provider: Ok(Box::new(p)),
    }
}

fn context(dir: &std::path::Path) -> OpContext {
    let (store, _) = Store::open(&dir.join("store")).expect("open");
    crate::drivers::test_context(
        &store,
        r#"{"v":1,"id":"p-1","op":"payment","terminal":"kv","amount":15000,"currency":"TRY"}"#,
    )
}

#[tokio::test]
async fn a_lost_create_answer_is_retried_with_the_same_order_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ctx = context(dir.path());
    let lost = || Err(ProviderError::Call(Transport::MaybeSent("reset".into())));
    let (p, asked) = Scripted::new(vec![lost(), lost()]);
    let d = driver(p);
    let fact = d.execute(&mut ctx).await;
    assert!(matches!(fact, Fact::Answer(Answer::Approved { .. })), "{fact:?}");
    // Three creates, one order id — the provider's idempotency key: a retry can only find
    // the link the lost answer was about, never make a second one.
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(asked.iter().all(|o| *o == asked[0]), "{asked:?}");
    let creating = ctx.record.last::<journal::Creating>().expect("creating journalled");
    assert_eq!(creating.order_id, asked[0], "the journalled order id is the one sent");
}

#[tokio::test]
async fn a_refused_create_is_a_definite_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ctx = context(dir.path());
    let (p, _) = Scripted::new(vec![Err(ProviderError::Refused {
        http: 400,
        message: "amount".into(),
        unauthorized: false,
        not_found: false,
    })]);
    let d = driver(p);
    let fact = d.execute(&mut ctx).await;
    assert!(matches!(fact, Fact::Answer(Answer::Refused { .. })), "{fact:?}");
}
