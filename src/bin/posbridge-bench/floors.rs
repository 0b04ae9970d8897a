//! The physical floors measured in the same run as the figures they bound: a QoS 1
//! request → reply and QoS 1 throughput between two plain clients through the broker, one
//! pay on the IP simulator, and one durable write (`fdatasync`) of a small record.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use rumqttc::QoS;

use crate::kit::Client;
use crate::micros;

/// Samples taken before a figure counts, the agent's payments and each floor's alike:
/// connections and caches warmed.
pub(crate) const WARM_UP: usize = 20;

/// QoS 1 request → reply between two plain clients through the broker.
pub(crate) struct RrFloor {
    a: Client,
    b: Client,
    payload: Vec<u8>,
}

impl RrFloor {
    pub(crate) async fn connect(port: u16) -> Result<RrFloor> {
        let a = Client::connect(port, "floor-a", Some("floor/rep"), true).await?;
        let b = Client::connect(port, "floor-b", Some("floor/req"), true).await?;
        let mut f = RrFloor { a, b, payload: vec![b'x'; 120] };
        f.sample(WARM_UP, &mut Vec::new()).await?;
        Ok(f)
    }

    /// `k` more samples (µs) into `out`.
    pub(crate) async fn sample(&mut self, k: usize, out: &mut Vec<f64>) -> Result<()> {
        for _ in 0..k {
            let t = Instant::now();
            self.a
                .client
                .publish("floor/req", QoS::AtLeastOnce, false, self.payload.clone())
                .await?;
            let (_, p) = self.b.recv(Duration::from_secs(5)).await?;
            self.b.client.publish("floor/rep", QoS::AtLeastOnce, false, p.to_vec()).await?;
            self.a.recv(Duration::from_secs(5)).await?;
            out.push(micros(t.elapsed()));
        }
        Ok(())
    }
}

/// One pay on a kept-alive connection to the IP simulator.
pub(crate) struct SimFloor {
    c: posbridge::drivers::ip::proto::IpClient,
    next: usize,
}

impl SimFloor {
    pub(crate) async fn connect(addr: &str) -> Result<SimFloor> {
        let c =
            posbridge::drivers::ip::proto::IpClient::connect(addr, Duration::from_secs(5)).await?;
        let mut f = SimFloor { c, next: 0 };
        f.sample(WARM_UP, &mut Vec::new()).await?;
        Ok(f)
    }

    /// `k` more samples (µs) into `out`.
    pub(crate) async fn sample(&mut self, k: usize, out: &mut Vec<f64>) -> Result<()> {
        use posbridge::drivers::ip::proto::Request;
        for _ in 0..k {
            self.next += 1;
            let req = Request::Pay {
                r#ref: format!("floor-{}", self.next),
                amount: 1500,
                currency: "AZN".into(),
            };
            let t = Instant::now();
            self.c.call(&req, Duration::from_secs(5)).await?;
            out.push(micros(t.elapsed()));
        }
        Ok(())
    }
}

/// One durable write at its physical limit: append ~400 B to a file and `fdatasync` it
/// (what no store can go below: one write and one sync of the device).
pub(crate) struct SyncFloor {
    f: std::fs::File,
    record: Vec<u8>,
}

impl SyncFloor {
    pub(crate) fn open(dir: &Path) -> Result<SyncFloor> {
        let f =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("floor-log"))?;
        let mut s = SyncFloor { f, record: vec![b'r'; 400] };
        s.sample(WARM_UP, &mut Vec::new())?;
        Ok(s)
    }

    /// `k` more samples (µs) into `out`.
    pub(crate) fn sample(&mut self, k: usize, out: &mut Vec<f64>) -> Result<()> {
        for _ in 0..k {
            let t = Instant::now();
            self.f.write_all(&self.record)?;
            self.f.sync_data()?;
            out.push(micros(t.elapsed()));
        }
        Ok(())
    }
}

/// Syncs the durability promise needs for one payment: the command before its PUBACK, the
/// journal before the device step, the answer + result before the result is published.
pub(crate) const PROMISE_SYNCS: f64 = 3.0;

/// QoS 1 throughput between two plain clients through the broker: `n` messages of `size`
/// bytes, msg/s. With `receiver` CPUs, the subscriber runs on a thread and runtime of its
/// own pinned to them, as the agent's process is for the same figure (`cores`); without,
/// it shares this process's runtime with the publisher.
pub(crate) async fn floor_throughput(
    port: u16, n: usize, size: usize, receiver: Option<&[usize]>,
) -> Result<f64> {
    let sub = match receiver {
        Some(cpus) => Sub::Pinned(PinnedSub::start(port, n, cpus.to_vec()).await?),
        None => Sub::Here(Client::connect(port, "tp-sub", Some("tp/x"), true).await?),
    };
    let publ = Client::connect(port, "tp-pub", None, true).await?;
    let payload = vec![b'x'; size];
    let t = Instant::now();
    let c = publ.client.clone();
    let feeder = tokio::spawn(async move {
        for _ in 0..n {
            if c.publish("tp/x", QoS::AtLeastOnce, false, payload.clone()).await.is_err() {
                return;
            }
        }
    });
    let received = match sub {
        Sub::Here(sub) => receive(sub, n).await,
        Sub::Pinned(p) => p.receive().await,
    };
    let rate = n as f64 / t.elapsed().as_secs_f64();
    feeder.abort();
    received?;
    Ok(rate)
}

async fn receive(mut sub: Client, n: usize) -> Result<()> {
    for _ in 0..n {
        sub.recv(Duration::from_secs(30)).await?;
    }
    Ok(())
}

enum Sub {
    Here(Client),
    Pinned(PinnedSub),
}

/// The floor's subscriber on a thread of its own, pinned: connected and subscribed when
/// [`PinnedSub::start`] returns, receiving once told to.
struct PinnedSub {
    go: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Receiver<Result<()>>,
}

impl PinnedSub {
    async fn start(port: u16, n: usize, cpus: Vec<usize>) -> Result<PinnedSub> {
        use tokio::sync::oneshot;
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let (go, go_rx) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<Result<()>>();
        std::thread::Builder::new().name("floor-sub".into()).spawn(move || {
            let run = async move {
                let sub = Client::connect(port, "tp-sub", Some("tp/x"), true).await?;
                let _ = ready_tx.send(());
                // Told to go, or the figure was given up: nothing to receive.
                if go_rx.await.is_err() {
                    return Ok(());
                }
                receive(sub, n).await
            };
            let r =
                crate::cores::pin_this_thread(&cpus).map_err(anyhow::Error::from).and_then(|()| {
                    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
                });
            let _ = done_tx.send(match r {
                Ok(rt) => rt.block_on(run),
                Err(e) => Err(e),
            });
        })?;
        if ready_rx.await.is_err() {
            // It ended before it connected: its error.
            let ended = || anyhow::anyhow!("the floor's subscriber ended before it connected");
            return Err(done.await.unwrap_or_else(|_| Err(ended())).err().unwrap_or_else(ended));
        }
        Ok(PinnedSub { go, done })
    }

    async fn receive(self) -> Result<()> {
        let _ = self.go.send(());
        self.done.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the floor's subscriber ended")))
    }
}
