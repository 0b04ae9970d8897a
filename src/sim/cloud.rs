//! The one mock server the cloud providers' mocks (`sim paywall`, `sim kuveyt`) run on.
//!
//! [`CloudMock`] binds the listener (plain HTTP, or HTTPS with a self-signed certificate
//! made at start), serves one base URL per environment on it (`…/test` and `…/live`, each
//! with its own [`Keys`]), checks a request's keys against its environment, holds the
//! provider's books under one lock with a change notification for the tests' waits, and
//! serves until shut down. The control route `POST /_sim/payments/{id}/complete` is the
//! same for both. A [`Provider`] brings only its own semantics: its routes, its books,
//! how it refuses, how a waiting payment is finished.
//!
//! `PaywallSim` is `CloudMock<Paywall>` and `PaywallStats` is `MockStats<Paywall>`;
//! likewise for Kuveyt.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{self, TestCert};
use super::listen;

/// Credentials of one environment.
#[derive(Debug, Clone)]
pub struct Keys {
    pub api_key: String,
    pub client_key: String,
}

impl Keys {
    /// The mocks' default keys of `env`: `{env}-api-key` and `{env}-secret`.
    pub fn sample(env: &str) -> Keys {
        Keys { api_key: format!("{env}-api-key"), client_key: format!("{env}-secret") }
    }
}

/// What every mock's options carry.
pub trait MockOptions: Clone + Send + Sync + 'static {
    /// The keys of the `test` and of the `live` environment.
    fn keys(&self) -> (&Keys, &Keys);
    /// Serve HTTPS with a certificate made at start.
    fn tls(&self) -> bool;
}

/// One cloud provider's semantics, served by [`CloudMock`].
pub trait Provider: Sized + Send + Sync + 'static {
    /// The mock's name in its log lines (`paywall mock listening`).
    const NAME: &'static str;
    /// The request headers carrying an environment's `api_key` and `client_key`.
    const KEY_HEADERS: (&'static str, &'static str);
    /// The status `POST /_sim/payments/{id}/complete` sets when its body names none.
    const COMPLETE_DEFAULT: &'static str;
    /// The `error` of that route's `404`.
    const COMPLETE_MISSING: &'static str;

    type Options: MockOptions;
    /// Payments and counters, behind the mock's one lock.
    type Books: Default + Send + 'static;

    /// The provider's routes: its API under `/{env}/…` and its own `/_sim/…` routes.
    fn routes() -> Router<Arc<Shared<Self>>>;
    /// The answer to a request for an environment other than `test` and `live`.
    fn no_such_env() -> Response;
    /// The answer to keys that are not `env`'s.
    fn bad_keys(env: &str) -> Response;
    /// Finish the payment `id` names as the customer would (`status` in the provider's
    /// words); `false` if there is no such waiting payment or no such status.
    fn complete(shared: &Shared<Self>, id: &str, status: &str) -> bool;
}

/// What the handlers share: the options, the address, the books.
pub struct Shared<P: Provider> {
    pub(crate) opts: P::Options,
    addr: SocketAddr,
    tls: bool,
    books: Mutex<P::Books>,
    changed: Notify,
    unauthorized: AtomicU64,
}

/// The axum state of a provider's handlers.
pub(crate) type MockState<P> = State<Arc<Shared<P>>>;

impl<P: Provider> Shared<P> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, P::Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wake the tests waiting on a change (after the lock is released).
    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Change the books, then wake the waiting tests.
    pub(crate) fn bump(&self, f: impl FnOnce(&mut P::Books)) {
        f(&mut self.lock());
        self.notify();
    }

    /// Base URL of an environment (`test` or `live`), as the agent's `test_url`/`live_url`.
    pub(crate) fn base_url(&self, env: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/{env}", self.addr)
    }

    /// Requests refused for keys that were not their environment's.
    pub(crate) fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    /// What every API route does first: `count` the request (authorised or not), then
    /// check its keys. `Some` is the answer to give instead.
    pub(crate) fn admit(
        &self, env: &str, headers: &HeaderMap, count: impl FnOnce(&mut P::Books),
    ) -> Option<Response> {
        self.bump(count);
        self.authorise(env, headers)
    }

    /// `Some` is the answer to give instead: no such environment, or not its keys (counted).
    fn authorise(&self, env: &str, headers: &HeaderMap) -> Option<Response> {
        let (test, live) = self.opts.keys();
        let keys = match env {
            "test" => test,
            "live" => live,
            _ => return Some(P::no_such_env()),
        };
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let (key, secret) = P::KEY_HEADERS;
        if h(key) != keys.api_key || h(secret) != keys.client_key {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
            self.notify();
            return Some(P::bad_keys(env));
        }
        None
    }
}

/// A provider's mock, bound and not yet serving.
pub struct CloudMock<P: Provider> {
    listener: TcpListener,
    cert: Option<TestCert>,
    shared: Arc<Shared<P>>,
}

/// A mock serving on loopback, for the simulators' own tests: the test environment's base
/// URL, the server's root URL, the books, the token that stops it and a client for it.
#[cfg(test)]
pub(crate) struct Started<P: Provider> {
    pub base: String,
    pub root: String,
    pub stats: MockStats<P>,
    pub stop: CancellationToken,
    pub http: reqwest::Client,
}

/// The books of a running mock, for tests. Cheap to clone.
pub struct MockStats<P: Provider> {
    pub(crate) shared: Arc<Shared<P>>,
}

impl<P: Provider> Clone for MockStats<P> {
    fn clone(&self) -> Self {
        MockStats { shared: Arc::clone(&self.shared) }
    }
}

impl<P: Provider> CloudMock<P> {
    pub async fn bind(addr: SocketAddr, opts: P::Options) -> std::io::Result<CloudMock<P>> {
        let (listener, addr) = listen::bind(addr).await?;
        let cert = if opts.tls() {
            Some(TestCert::generate().map_err(std::io::Error::other)?)
        } else {
            None
        };
        Ok(CloudMock {
            listener,
            shared: Arc::new(Shared {
                opts,
                addr,
                tls: cert.is_some(),
                books: Mutex::new(P::Books::default()),
                changed: Notify::new(),
                unauthorized: AtomicU64::new(0),
            }),
            cert,
        })
    }

    /// Bound to a free port on 127.0.0.1 and serving (the simulators' own tests).
    #[cfg(test)]
    pub(crate) async fn start_on_loopback(opts: P::Options) -> Started<P> {
        let sim = Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await.expect("bind");
        let (base, root) = (sim.base_url("test"), format!("http://{}", sim.local_addr()));
        let stats = sim.stats();
        let stop = CancellationToken::new();
        sim.spawn(stop.clone());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("client");
        Started { base, root, stats, stop, http }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Base URL of an environment (`test` or `live`), as the agent's `test_url`/`live_url`.
    pub fn base_url(&self, env: &str) -> String {
        self.shared.base_url(env)
    }

    /// The certificate (PEM) when serving TLS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.cert_pem.as_str())
    }

    pub fn stats(&self) -> MockStats<P> {
        MockStats { shared: Arc::clone(&self.shared) }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let router = P::routes()
            .route("/_sim/payments/{id}/complete", post(sim_complete::<P>))
            .with_state(Arc::clone(&self.shared));
        let (addr, tls) = (self.shared.addr, self.cert.is_some());
        tracing::info!(%addr, tls, "{} mock listening", P::NAME);
        http::serve(self.listener, router, self.cert.as_ref(), shutdown).await;
    }
}

impl<P: Provider> MockStats<P> {
    /// Wait (bounded) until `pred` holds; every change of the books wakes the check.
    pub async fn wait_until(&self, within: Duration, pred: impl Fn(&Self) -> bool) -> bool {
        http::wait_until(&self.shared.changed, within, || pred(self)).await
    }

    /// Finish a waiting payment as the customer would (Paywall: `succeeded`, `failed`,
    /// `cancelled` by `MerchantUniqueCode`; Kuveyt: `completed`, `failed`, `cancelled` by
    /// transaction id).
    pub fn complete(&self, id: &str, status: &str) -> bool {
        P::complete(&self.shared, id, status)
    }
}

#[derive(Deserialize)]
struct CompleteBody {
    status: String,
}

/// `POST /_sim/payments/{id}/complete` `{"status": …}` (no auth).
async fn sim_complete<P: Provider>(
    State(shared): MockState<P>, Path(id): Path<String>, body: String,
) -> Response {
    let status = serde_json::from_str::<CompleteBody>(&body)
        .map(|b| b.status)
        .unwrap_or_else(|_| P::COMPLETE_DEFAULT.into());
    if P::complete(&shared, &id, &status) {
        http::json(StatusCode::OK, json!({ "completed": id, "status": status }))
    } else {
        http::json(StatusCode::NOT_FOUND, json!({ "error": P::COMPLETE_MISSING }))
    }
}
