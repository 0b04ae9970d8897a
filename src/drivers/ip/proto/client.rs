//! The IP terminal client: the driver's only I/O. One request at a time over one TCP
//! connection, each answer line read with a bound.

use std::io;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::net::TcpStream;

use super::wire::*;

/// What [`read_line_bounded`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// `buf` holds one line including its `\n`.
    Line,
    /// The peer closed the connection cleanly between lines.
    Eof,
    /// No `\n` within `max + 1` bytes; the stream is out of sync and should be closed.
    TooLong,
}

/// Reads one line into `buf` (cleared first), never holding more than `max + 1` bytes
/// of it. EOF in the middle of a line is an `UnexpectedEof` error, not a clean close.
pub async fn read_line_bounded<R>(
    reader: &mut R, buf: &mut Vec<u8>, max: usize,
) -> io::Result<LineRead>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader.take(limit).read_until(b'\n', buf).await?;
    if n == 0 {
        Ok(LineRead::Eof)
    } else if buf.last() == Some(&b'\n') {
        Ok(LineRead::Line)
    } else if buf.len() > max {
        Ok(LineRead::TooLong)
    } else {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line"))
    }
}

/// A connection to one IP terminal: one request, one response, then reusable.
/// Generic over the stream so tests can run it over an in-memory pipe.
#[derive(Debug)]
pub struct IpClient<S = TcpStream> {
    pub(super) stream: BufReader<S>,
    pub(super) buf: Vec<u8>,
    /// Set while an exchange is running and left set if it fails: a late answer to a
    /// timed-out request would otherwise be read as the answer to the next one.
    pub(super) broken: bool,
}

impl IpClient<TcpStream> {
    pub async fn connect(addr: &str, connect_timeout: Duration) -> Result<IpClient, ProtoError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProtoError::ConnectTimeout(connect_timeout))?
            .map_err(ProtoError::Connect)?;
        // One small line each way: Nagle + delayed ACK would add tens of ms (CRATES.md).
        stream.set_nodelay(true).map_err(ProtoError::Connect)?;
        Ok(IpClient::from_stream(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> IpClient<S> {
    pub fn from_stream(stream: S) -> IpClient<S> {
        IpClient { stream: BufReader::new(stream), buf: Vec::new(), broken: false }
    }

    /// False once a call has failed: reconnect before the next request.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Sends one request and reads its response, all within `timeout`.
    pub async fn call(&mut self, req: &Request, timeout: Duration) -> Result<Response, ProtoError> {
        if self.broken {
            return Err(ProtoError::Broken);
        }
        self.broken = true;
        let line = encode_line(req);
        let resp = tokio::time::timeout(timeout, self.exchange(&line))
            .await
            .map_err(|_| ProtoError::Timeout(timeout))??;
        self.broken = false;
        Ok(resp)
    }

    async fn exchange(&mut self, line: &[u8]) -> Result<Response, ProtoError> {
        self.stream.write_all(line).await?;
        self.stream.flush().await?;
        match read_line_bounded(&mut self.stream, &mut self.buf, MAX_LINE).await? {
            LineRead::Line => decode_response(&self.buf),
            LineRead::Eof => Err(ProtoError::Closed),
            LineRead::TooLong => Err(ProtoError::LineTooLong),
        }
    }
}
