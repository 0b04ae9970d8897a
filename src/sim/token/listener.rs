//! `posbridge sim token` over TCP: [`TokenSim`] binds a listener and serves each
//! connection as one link of the same [`TokenDevice`] (one register, many reconnects),
//! until shut down.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::device::{SimControl, SimOptions, TokenDevice};
use super::identity::TestCa;
use crate::sim::listen;

/// `posbridge sim token`: a TCP listener serving one link per connection.
pub struct TokenSim {
    listener: TcpListener,
    addr: SocketAddr,
    device: Arc<TokenDevice>,
}

impl TokenSim {
    pub async fn bind(
        addr: SocketAddr, opts: SimOptions, ca: Option<&TestCa>,
    ) -> anyhow::Result<TokenSim> {
        let device = TokenDevice::new(opts, ca)?;
        let (listener, addr) = listen::bind(addr).await?;
        Ok(TokenSim { listener, addr, device: Arc::new(device) })
    }

    /// Bound to a free port on 127.0.0.1.
    pub async fn loopback(opts: SimOptions, ca: Option<&TestCa>) -> anyhow::Result<TokenSim> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), opts, ca).await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn control(&self) -> SimControl {
        self.device.control()
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let stop = shutdown.clone();
        listen::accept_loop(self.listener, shutdown, None, |stream, peer| {
            let _ = stream.set_nodelay(true);
            tracing::info!(%peer, "token sim: host connected");
            let device = self.device.clone();
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = device.serve(stream) => {}
                }
            }
        })
        .await;
    }
}
