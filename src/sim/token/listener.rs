//! `posbridge sim token` over TCP: [`TokenSim`] binds a listener and serves each
//! connection as one link of the same [`TokenDevice`] (one register, many reconnects),
//! until shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::device::{SimControl, SimOptions, TokenDevice};
use super::identity::TestCa;

/// `posbridge sim token`: a TCP listener serving one link per connection.
pub struct TokenSim {
    listener: TcpListener,
    addr: SocketAddr,
    device: Arc<TokenDevice>,
}

impl TokenSim {
    pub async fn bind(
        addr: SocketAddr,
        opts: SimOptions,
        ca: Option<&TestCa>,
    ) -> anyhow::Result<TokenSim> {
        let device = TokenDevice::new(opts, ca)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(TokenSim {
            listener,
            addr,
            device: Arc::new(device),
        })
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
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                acc = self.listener.accept() => match acc {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tracing::info!(%peer, "token sim: host connected");
                        let device = self.device.clone();
                        let stop = shutdown.clone();
                        tracker.spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = device.serve(stream) => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracker.close();
        tracker.wait().await;
    }
}
