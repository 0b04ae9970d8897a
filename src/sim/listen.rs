//! The accept loop every simulator serves its TCP listener with: at most
//! [`MAX_CONNECTIONS`] connections at once (further clients wait in the listen backlog),
//! a pause after a failed accept, one task per connection, and on shutdown no new
//! connections while the open ones are let finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// The pause after a failed accept (usually out of file descriptors), instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// `127.0.0.1:0`-style listen address → bound listener and its real address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Accept on `listener` until `shutdown`, running `connection(stream, peer)` as a task of
/// its own for each client; then wait for those tasks, at most `drain` (`None`: until
/// they end, so an operation under way is never cut off).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener, shutdown: CancellationToken, drain: Option<Duration>, mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let served = connection(stream, peer);
        tracker.spawn(async move {
            served.await;
            drop(permit);
        });
    }
    tracker.close();
    match drain {
        Some(within) => {
            let _ = tokio::time::timeout(within, tracker.wait()).await;
        }
        None => tracker.wait().await,
    }
}
