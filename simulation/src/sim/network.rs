//! Glue between the production seams and turmoil's simulated network.
//!
//! - [`SimConnector`]: the [`Connector`] seam over `turmoil::net::TcpStream` (peer links to
//!   other nodes, the engine's HTTP/2 connections to the emulator host);
//! - [`SimAcceptor`]: the cluster listener's [`Acceptor`] over `turmoil::net::TcpListener`;
//! - [`serve_emulator`]: the APNs emulator's accept loop on the emulator host;
//! - [`read_line`]/[`write_line`]: the workload's small JSON-lines API protocol, bounded by
//!   [`API_LINE_BYTES_MAX`].
//!
//! Partitions, latency, drops and crashes are turmoil's: a partitioned link's connects and
//! writes fail or stall exactly as a real network's would.

use std::io;
use std::net::SocketAddr;

use herald_actors::seams::{BoxFuture, BoxStream, Connector};
use herald_cluster::transport::Acceptor;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

use crate::emulator::EmulatorCore;

/// Longest line of the workload's API protocol, in bytes.
pub const API_LINE_BYTES_MAX: usize = 64 * 1024;

/// Opens streams over turmoil's simulated TCP. `host` is a host name or an IP address.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimConnector;

impl Connector for SimConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((host, port)).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Accepts inbound streams on a turmoil listener.
pub struct SimAcceptor(pub turmoil::net::TcpListener);

impl std::fmt::Debug for SimAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimAcceptor")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

impl SimAcceptor {
    /// Bind `0.0.0.0:port` on the current host.
    ///
    /// # Errors
    /// If the port is taken.
    pub async fn bind(port: u16) -> io::Result<SimAcceptor> {
        Ok(SimAcceptor(
            turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?,
        ))
    }
}

impl Acceptor for SimAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, remote) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxStream, remote))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Serve the emulator on `port` of the current host (plaintext HTTP/2), one task per
/// connection, until the host stops.
///
/// # Errors
/// If the port cannot be bound.
pub async fn serve_emulator(core: EmulatorCore, port: u16) -> io::Result<()> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let core = core.clone();
        tokio::spawn(async move { core.serve_connection(stream, None).await });
    }
}

/// Read one `\n`-terminated line (at most [`API_LINE_BYTES_MAX`] bytes); `None` at the end
/// of the stream.
///
/// # Errors
/// On I/O errors and on a line over the limit.
pub async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.len() > API_LINE_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        if done {
            line.pop();
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// Write `line` and a `\n`, then flush.
///
/// # Errors
/// On I/O errors.
pub async fn write_line<W: AsyncWrite + Unpin>(writer: &mut W, line: &str) -> io::Result<()> {
    writer.write_all(line.as_bytes()).await?;
    writer.write_all(b"\n").await?;
    writer.flush().await
}
