//! What the HTTP simulators (`sim paywall`, `sim kuveyt`, `sim kaspi`) share: serving
//! HTTP/1 over plain TCP or TLS (for the cloud mocks with a certificate made at run time,
//! rcgen), bounded connections, orderly shutdown, and the odd answers a real cloud
//! sometimes gives.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::listen;

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`, made at run time.
pub struct TestCert {
    pub cert_pem: String,
    key_der: Vec<u8>,
    cert_der: Vec<u8>,
}

impl TestCert {
    pub fn generate() -> Result<TestCert, String> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        Ok(TestCert {
            cert_pem: ck.cert.pem(),
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.key_pair.serialize_der(),
        })
    }

    /// Write the certificate (PEM) where an agent's `ca_file` can point.
    pub fn write_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.cert_pem)
    }

    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(self.cert_der.clone())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .map_err(|e| e.to_string())?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// Serve `router` on `listener` until `shutdown`, then let open requests finish.
pub async fn serve(
    listener: TcpListener, router: Router, tls: Option<&TestCert>, shutdown: CancellationToken,
) {
    let acceptor = match tls.map(TestCert::acceptor).transpose() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "TLS setup failed; not serving");
            return;
        }
    };
    serve_http(listener, acceptor, shutdown, move || TowerToHyperService::new(router.clone()))
        .await;
}

/// Serve HTTP/1 on `listener`, over TLS when `tls` is given, until `shutdown`, each
/// connection with a service from `service`; open requests get 5 s to finish.
pub(crate) async fn serve_http<S, B>(
    listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, shutdown: CancellationToken,
    service: impl Fn() -> S,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = Some(Duration::from_secs(5));
    let stop = shutdown.clone();
    listen::accept_loop(listener, shutdown, drain, move |stream, peer| {
        let _ = stream.set_nodelay(true);
        let svc = service();
        let acceptor = tls.clone();
        let stop = stop.clone();
        async move {
            let builder = hyper::server::conn::http1::Builder::new();
            let result = match acceptor {
                Some(a) => match a.accept(stream).await {
                    Ok(tls) => {
                        let conn = builder.serve_connection(TokioIo::new(tls), svc);
                        run_conn(conn, &stop).await
                    }
                    Err(e) => {
                        // Plain HTTP to an HTTPS mock, or a client that refused the
                        // certificate (a pin mismatch).
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    run_conn(conn, &stop).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    })
    .await;
}

/// One connection until it ends or `stop` (an open request is then dropped).
async fn run_conn<C>(conn: C, stop: &CancellationToken) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::select! {
        r = conn => r,
        _ = stop.cancelled() => Ok(()),
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], v.to_string())
        .into_response()
}

/// `200` `application/json` whose body is the first half of `v`'s JSON text: an answer
/// garbled on the way (the garbled-answer fault).
pub fn json_cut_short(v: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        super::first_half(&v.to_string()).to_string(),
    )
        .into_response()
}

/// A proxy's HTML error page.
pub fn html_error(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let page = format!(
        "<html><head><title>{} {reason}</title></head><body><center><h1>{} {reason}</h1></center><hr><center>nginx</center></body></html>",
        status.as_u16(),
        status.as_u16()
    );
    (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
}

/// Headers go out, then the connection breaks before a body: the client has sent its
/// request and never learns the answer (the lost-response fault).
pub fn lost() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated lost response",
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Wait (bounded) until `check` holds, re-checking on every `changed` notification.
/// Returns the last answer of `check`.
pub async fn wait_until(
    changed: &tokio::sync::Notify, within: Duration, check: impl Fn() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let notified = changed.notified();
        if check() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return check();
        }
    }
}

/// Status, content type (`""` when absent) and body text of an answer, as the simulator
/// tests look at it (answers that may not be JSON).
#[cfg(test)]
pub(crate) async fn answer_parts(
    resp: reqwest::Response,
) -> reqwest::Result<(u16, String, String)> {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, ct, resp.text().await?))
}
