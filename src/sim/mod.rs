//! Device simulators shipped in the binary (`posbridge sim …`), used by the tests, the
//! demo and field engineers.

pub mod http;
pub mod ip;
pub mod kaspi;
pub mod kuveyt;
pub mod paywall;
pub mod token;

/// The first half of `text`, cut on a character boundary: a JSON text cut short, for the
/// simulators' garbled-answer faults.
pub(crate) fn first_half(text: &str) -> &str {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// A cloud provider's mock (Paywall, Kuveyt) as `posbridge sim` serves it: a test and a
/// live base URL on one listener, optionally HTTPS with a certificate made at start.
pub trait CloudMock {
    fn base_url(&self, env: &str) -> String;
    fn cert_pem(&self) -> Option<&str>;
    fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send;
}

impl CloudMock for paywall::PaywallSim {
    fn base_url(&self, env: &str) -> String {
        paywall::PaywallSim::base_url(self, env)
    }
    fn cert_pem(&self) -> Option<&str> {
        paywall::PaywallSim::cert_pem(self)
    }
    fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        paywall::PaywallSim::run(self, shutdown)
    }
}

impl CloudMock for kuveyt::KuveytSim {
    fn base_url(&self, env: &str) -> String {
        kuveyt::KuveytSim::base_url(self, env)
    }
    fn cert_pem(&self) -> Option<&str> {
        kuveyt::KuveytSim::cert_pem(self)
    }
    fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        kuveyt::KuveytSim::run(self, shutdown)
    }
}
