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

/// QoS 1 request → reply between two plain clients through the broker: `n` samples (µs).
pub(crate) async fn floor_rr(port: u16, n: usize) -> Result<Vec<f64>> {
    let mut a = Client::connect(port, "floor-a", Some("floor/rep"), true).await?;
    let mut b = Client::connect(port, "floor-b", Some("floor/req"), true).await?;
    let payload = vec![b'x'; 120];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        a.client.publish("floor/req", QoS::AtLeastOnce, false, payload.clone()).await?;
        let (_, p) = b.recv(Duration::from_secs(5)).await?;
        b.client.publish("floor/rep", QoS::AtLeastOnce, false, p.to_vec()).await?;
        a.recv(Duration::from_secs(5)).await?;
        if i >= 20 {
            out.push(micros(t.elapsed()));
        }
    }
    Ok(out)
}

/// One pay on a kept-alive connection to the IP simulator: `n` samples (µs).
pub(crate) async fn floor_sim(addr: &str, n: usize) -> Result<Vec<f64>> {
    use posbridge::drivers::ip::proto::{IpClient, Request};
    let mut c = IpClient::connect(addr, Duration::from_secs(5)).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let req =
            Request::Pay { r#ref: format!("floor-{i}"), amount: 1500, currency: "AZN".into() };
        let t = Instant::now();
        c.call(&req, Duration::from_secs(5)).await?;
        if i >= 20 {
            out.push(micros(t.elapsed()));
        }
    }
    Ok(out)
}

/// One durable write at its physical limit: append ~400 B to a file and `fdatasync` it
/// (what no store can go below: one write and one sync of the device), `n` samples (µs).
pub(crate) fn floor_sync(dir: &Path, n: usize) -> Result<Vec<f64>> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("floor-log"))?;
    let v = vec![b'r'; 400];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        f.write_all(&v)?;
        f.sync_data()?;
        if i >= 20 {
            out.push(micros(t.elapsed()));
        }
    }
    Ok(out)
}

/// Syncs the durability promise needs for one payment: the command before its PUBACK, the
/// journal before the device step, the answer + result before the result is published.
pub(crate) const PROMISE_SYNCS: f64 = 3.0;

/// Broker QoS 1 throughput between two plain clients: msg/s for `n` messages of `size`.
pub(crate) async fn floor_throughput(port: u16, n: usize, size: usize) -> Result<f64> {
    let mut sub = Client::connect(port, "tp-sub", Some("tp/x"), true).await?;
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
    for _ in 0..n {
        sub.recv(Duration::from_secs(30)).await?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    feeder.abort();
    Ok(rate)
}
