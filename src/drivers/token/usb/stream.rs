//! The accessory's bulk pair as one `AsyncRead + AsyncWrite` byte stream, so the
//! existing session runs over USB unchanged.
//!
//! Two threads own the blocking transfers: the reader polls bulk IN (one `read_poll` at
//! a time, into a buffer of at most `read_buffer` bytes) and hands chunks over a small
//! bounded channel (so memory stays bounded when nobody reads); the writer performs one
//! bulk OUT per flush with `write_timeout`. A flush completes only when the device took
//! the bytes, so the session's "sent" means sent. Dropping the stream stops both threads.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::aoa::{AoaTiming, Opened};
use super::{DevInfo, UsbBackend, UsbErrorKind};

/// Chunks buffered between the reader thread and the session.
const READ_CHUNKS: usize = 4;
/// Bytes gathered before a write is pushed out even without a flush.
const WRITE_CAP: usize = 256 * 1024;

type WriteJob = (Vec<u8>, oneshot::Sender<io::Result<()>>);

pub struct UsbStream {
    dev: DevInfo,
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    wtx: Option<std::sync::mpsc::Sender<WriteJob>>,
    pending: Vec<u8>,
    inflight: Option<oneshot::Receiver<io::Result<()>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for UsbStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbStream").field("dev", &self.dev).finish()
    }
}

impl UsbStream {
    /// Start the two transfer threads over an opened accessory.
    pub fn start<B: UsbBackend>(
        backend: Arc<B>, opened: Opened<B::Handle>, t: AoaTiming,
    ) -> io::Result<UsbStream> {
        let Opened { handle, dev, endpoints: eps, .. } = opened;
        let handle = Arc::new(handle);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(READ_CHUNKS);
        let (wtx, wrx) = std::sync::mpsc::channel::<WriteJob>();
        {
            let (b, h, stop) = (backend.clone(), handle.clone(), stop.clone());
            let len = t.read_len(eps.max_packet_in);
            std::thread::Builder::new()
                .name("token-usb-in".into())
                .spawn(move || read_loop(&*b, &h, eps.ep_in, len, t, &stop, tx))?;
        }
        {
            let (b, h) = (backend, handle);
            std::thread::Builder::new().name("token-usb-out".into()).spawn(move || {
                while let Ok((data, done)) = wrx.recv() {
                    let _ = done.send(write_all(&*b, &h, eps.ep_out, &data, t));
                }
            })?;
        }
        Ok(UsbStream {
            dev,
            rx,
            chunk: Vec::new(),
            pos: 0,
            wtx: Some(wtx),
            pending: Vec::new(),
            inflight: None,
            stop,
        })
    }

    pub fn device(&self) -> &DevInfo {
        &self.dev
    }

    fn poll_inflight(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(rx) = self.inflight.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = ready!(Pin::new(rx).poll(cx));
        self.inflight = None;
        Poll::Ready(r.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "USB writer stopped"))
        }))
    }

    fn push_pending(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.pending);
        let (done, rx) = oneshot::channel();
        self.wtx
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "USB stream shut down"))?
            .send((data, done))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "USB writer stopped"))?;
        self.inflight = Some(rx);
        Ok(())
    }
}

use std::future::Future;

fn read_loop<B: UsbBackend>(
    b: &B, h: &B::Handle, ep: u8, len: usize, t: AoaTiming, stop: &AtomicBool,
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
) {
    let mut buf = vec![0u8; len];
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        match b.bulk_in(h, ep, &mut buf, t.read_poll) {
            Ok(0) => {}
            Ok(n) => {
                if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind == UsbErrorKind::Timeout => {}
            Err(e) => {
                tracing::info!(error = %e, "token usb: bulk IN ended");
                let _ = tx.blocking_send(Err(e.into()));
                return;
            }
        }
    }
}

fn write_all<B: UsbBackend>(
    b: &B, h: &B::Handle, ep: u8, mut data: &[u8], t: AoaTiming,
) -> io::Result<()> {
    let deadline = std::time::Instant::now() + t.write_timeout;
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("bulk OUT did not finish within {:?}", t.write_timeout),
            ));
        }
        let n = b.bulk_out(h, ep, data, left).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "bulk OUT took no bytes"));
        }
        data = &data[n.min(data.len())..];
    }
    Ok(())
}

impl AsyncRead for UsbStream {
    fn poll_read(
        self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pos >= this.chunk.len() {
            match ready!(this.rx.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(c)) => {
                    this.chunk = c;
                    this.pos = 0;
                }
            }
        }
        let n = out.remaining().min(this.chunk.len() - this.pos);
        out.put_slice(&this.chunk[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for UsbStream {
    fn poll_write(
        self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_inflight(cx))?;
        if this.pending.len() >= WRITE_CAP {
            this.push_pending()?;
            ready!(this.poll_inflight(cx))?;
        }
        let n = buf.len().min(WRITE_CAP - this.pending.len());
        this.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_inflight(cx))?;
        if !this.pending.is_empty() {
            this.push_pending()?;
            ready!(this.poll_inflight(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut *this).poll_flush(cx))?;
        this.wtx = None;
        Poll::Ready(Ok(()))
    }
}

impl Drop for UsbStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
