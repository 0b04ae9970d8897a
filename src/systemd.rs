//! systemd integration without libsystemd: readiness and watchdog notifications over the
//! `NOTIFY_SOCKET` datagram socket (sd_notify(3) protocol: `KEY=VALUE` lines).
//!
//! - `READY=1` once the store is open and the broker connected, or after
//!   [`READY_TIMEOUT`] when the broker is down: the agent works offline (commands wait in
//!   the broker, results in the outbox), so systemd must not fail the start for it.
//! - `WATCHDOG=1` every half `WatchdogSec`, but only while the engine's intake loop and the
//!   bus pump are making progress ([`Beat`]s bumped by those loops). A stuck engine stops
//!   the feed and systemd restarts the agent (`Restart=on-failure`).
//! - `STOPPING=1` at shutdown; during the bounded drain the watchdog is fed regardless, so
//!   a long but orderly stop is not killed as a hang (`TimeoutStopSec` bounds it).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long readiness waits for the broker before reporting ready anyway.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the loops that are watched bump their beat when idle.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A progress counter one loop bumps; the watchdog checks that it moves.
#[derive(Debug, Clone, Default)]
pub struct Beat(Arc<AtomicU64>);

impl Beat {
    pub fn new() -> Beat {
        Beat::default()
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where notifications go (`NOTIFY_SOCKET`): a path, or `@name` in the abstract namespace.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when not started by systemd with `Type=notify`.
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&addr.to_string_lossy()) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; no systemd notifications");
                None
            }
        }
    }

    pub fn new(addr: &str) -> std::io::Result<Notifier> {
        let target = match addr.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None if addr.starts_with('/') => Target::Path(PathBuf::from(addr)),
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET {addr:?} is neither a path nor @abstract"),
                ))
            }
        };
        Ok(Notifier { socket: UnixDatagram::unbound()?, target })
    }

    /// Send one notification (`READY=1`, `WATCHDOG=1`, `STATUS=…`). Non-blocking in
    /// practice: a datagram to systemd's socket.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        match &self.target {
            Target::Path(p) => self.socket.send_to(state.as_bytes(), p).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                self.socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
            }
        }
    }

    fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, state, "systemd notification failed");
        }
    }
}

/// The watchdog period systemd expects (`WATCHDOG_USEC`, for this process per
/// `WATCHDOG_PID`); `None` when no watchdog is configured.
pub fn watchdog_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Readiness, watchdog and stopping notifications for one agent run.
pub struct Supervisor {
    pub notifier: Notifier,
    /// `WatchdogSec`; fed every half period.
    pub watchdog: Option<Duration>,
    /// Loops that must all make progress between two feeds.
    pub beats: Vec<Beat>,
    pub ready_timeout: Duration,
}

impl Supervisor {
    /// Run until `done` is cancelled: wait for `ready` (or the timeout), send `READY=1`,
    /// then feed the watchdog while every beat moves. When `stopping` is cancelled, send
    /// `STOPPING=1` and keep feeding unconditionally (the drain is bounded elsewhere).
    pub async fn run(
        self, ready: impl std::future::Future<Output = ()>, stopping: CancellationToken,
        done: CancellationToken,
    ) {
        let connected = tokio::select! {
            _ = done.cancelled() => return,
            _ = stopping.cancelled() => false,
            r = tokio::time::timeout(self.ready_timeout, ready) => r.is_ok(),
        };
        if connected {
            self.notifier.send("READY=1\nSTATUS=running, connected to the broker");
        } else {
            tracing::warn!(
                timeout_s = self.ready_timeout.as_secs(),
                "broker not reached yet; reporting ready anyway (the agent works offline)"
            );
            self.notifier.send("READY=1\nSTATUS=running, broker not reached yet");
        }
        let mut stopping_sent = false;
        let Some(period) = self.watchdog else {
            tokio::select! {
                _ = done.cancelled() => {}
                _ = stopping.cancelled() => self.notifier.send("STOPPING=1"),
            }
            return;
        };
        let half = (period / 2).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Vec<u64> = self.beats.iter().map(Beat::get).collect();
        let mut stalled = false;
        loop {
            tokio::select! {
                biased;
                _ = done.cancelled() => return,
                _ = stopping.cancelled(), if !stopping_sent => {
                    stopping_sent = true;
                    self.notifier.send("STOPPING=1\nSTATUS=stopping: draining running operations");
                    continue;
                }
                _ = tick.tick() => {}
            }
            let now: Vec<u64> = self.beats.iter().map(Beat::get).collect();
            let progressing = now.iter().zip(&last).all(|(n, l)| n != l);
            last = now;
            if progressing || stopping_sent {
                if stalled {
                    tracing::info!("engine progressing again; feeding the systemd watchdog");
                    stalled = false;
                }
                self.notifier.send("WATCHDOG=1");
            } else if !stalled {
                stalled = true;
                tracing::error!(
                    "engine or bus pump made no progress for {half:?}; not feeding the systemd watchdog (systemd will restart the agent)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        _dir: tempfile::TempDir,
        rx: tokio::net::UnixDatagram,
        path: PathBuf,
    }

    fn fake_socket() -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let rx = tokio::net::UnixDatagram::bind(&path).expect("bind");
        Fake { _dir: dir, rx, path }
    }

    async fn recv(rx: &tokio::net::UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).await.expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// With paused time the runtime jumps to the next timer whenever everything waits, so
    /// these tests run instantly and deterministically.
    #[tokio::test(start_paused = true)]
    async fn ready_then_watchdog_while_beats_move_and_silence_when_they_stall() {
        let fake = fake_socket();
        let engine = Beat::new();
        let pump = Beat::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let sup = Supervisor {
            notifier: Notifier::new(&fake.path.to_string_lossy()).expect("notifier"),
            watchdog: Some(Duration::from_secs(10)),
            beats: vec![engine.clone(), pump.clone()],
            ready_timeout: READY_TIMEOUT,
        };
        let done = CancellationToken::new();
        let stopping = CancellationToken::new();
        let task = tokio::spawn(sup.run(
            async move {
                let _ = ready_rx.await;
            },
            stopping.clone(),
            done.clone(),
        ));
        // The loops beat every second.
        let beating = CancellationToken::new();
        let (e, p, b) = (engine.clone(), pump.clone(), beating.clone());
        let beater = tokio::spawn(async move {
            let mut t = tokio::time::interval(BEAT_INTERVAL);
            loop {
                tokio::select! {
                    _ = b.cancelled() => return,
                    _ = t.tick() => { e.bump(); p.bump(); }
                }
            }
        });
        let _ = ready_tx.send(());
        let first = recv(&fake.rx).await;
        assert!(first.starts_with("READY=1\n"), "{first:?}");
        assert!(first.contains("connected"), "{first:?}");
        for _ in 0..3 {
            assert_eq!(recv(&fake.rx).await, "WATCHDOG=1");
        }
        // The engine stalls (the pump still beats): at most one more feed (the half period
        // in which it stalled may still show progress), then silence.
        beating.cancel();
        let _ = beater.await;
        let pump_only = tokio::spawn({
            let p = pump.clone();
            async move {
                let mut t = tokio::time::interval(BEAT_INTERVAL);
                loop {
                    t.tick().await;
                    p.bump();
                }
            }
        });
        let mut feeds_after_stall = 0;
        while tokio::time::timeout(Duration::from_secs(60), recv(&fake.rx)).await.is_ok() {
            feeds_after_stall += 1;
            assert!(feeds_after_stall <= 1, "watchdog still fed with a stalled engine");
        }
        // It resumes when the engine moves again.
        engine.bump();
        let again =
            tokio::time::timeout(Duration::from_secs(6), recv(&fake.rx)).await.expect("fed again");
        assert_eq!(again, "WATCHDOG=1");
        pump_only.abort();
        // Stopping: STOPPING=1, then the watchdog is fed although nothing beats.
        stopping.cancel();
        let s = recv(&fake.rx).await;
        assert!(s.starts_with("STOPPING=1"), "{s:?}");
        assert_eq!(recv(&fake.rx).await, "WATCHDOG=1");
        assert_eq!(recv(&fake.rx).await, "WATCHDOG=1");
        done.cancel();
        task.await.expect("supervisor");
    }

    #[tokio::test(start_paused = true)]
    async fn ready_after_bounded_wait_when_the_broker_is_down() {
        let fake = fake_socket();
        let sup = Supervisor {
            notifier: Notifier::new(&fake.path.to_string_lossy()).expect("notifier"),
            watchdog: None,
            beats: vec![],
            ready_timeout: READY_TIMEOUT,
        };
        let done = CancellationToken::new();
        let stopping = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let task =
            tokio::spawn(sup.run(std::future::pending::<()>(), stopping.clone(), done.clone()));
        let msg = recv(&fake.rx).await;
        assert!(msg.starts_with("READY=1\n"), "{msg:?}");
        assert!(msg.contains("not reached"), "{msg:?}");
        assert!(started.elapsed() >= READY_TIMEOUT);
        stopping.cancel();
        assert_eq!(recv(&fake.rx).await, "STOPPING=1");
        done.cancel();
        task.await.expect("supervisor");
    }

    #[test]
    fn abstract_and_bad_addresses() {
        assert!(Notifier::new("relative/path").is_err());
        let name = format!("posbridge-test-{}", std::process::id());
        let rx = {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
            UnixDatagram::bind_addr(&addr).expect("bind abstract")
        };
        let n = Notifier::new(&format!("@{name}")).expect("notifier");
        n.notify("READY=1").expect("send");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1");
    }
}
