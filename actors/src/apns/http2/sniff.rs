//! A read-side HTTP/2 frame sniffer that records GOAWAY frames.
//!
//! h2 reports a GOAWAY to each stream it fails, but exposes neither the last-stream-id nor
//! the debug data (where APNs puts `{"reason": ...}`). The sniffer sits between the byte
//! stream (after TLS) and h2, follows frame boundaries on the bytes h2 reads, and keeps
//! the GOAWAY fields in a [`GoAwaySlot`]. It never changes the bytes.
//!
//! A client's inbound byte stream is frames only (the server preface is a SETTINGS frame).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::state::GoAwayInfo;
use crate::limits::GOAWAY_DEBUG_BYTES_MAX;

const FRAME_HEADER_BYTES: usize = 9;
const FRAME_TYPE_GOAWAY: u8 = 0x7;
/// last-stream-id (4 bytes) + error code (4 bytes).
const GOAWAY_FIXED_BYTES: usize = 8;

/// The GOAWAY seen so far (merged when several arrive).
#[derive(Debug, Default)]
pub(crate) struct GoAwaySlot {
    info: Mutex<Option<GoAwayInfo>>,
    fresh: AtomicBool,
}

impl GoAwaySlot {
    fn record(&self, info: GoAwayInfo) {
        // A poisoned lock only means another thread panicked mid-merge of plain data.
        let mut slot = self.info.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(current) => current.merge(info),
            None => *slot = Some(info),
        }
        self.fresh.store(true, Ordering::Release);
    }

    /// The GOAWAY received, if any.
    pub(crate) fn get(&self) -> Option<GoAwayInfo> {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The GOAWAY, if one arrived since the last call.
    pub(crate) fn take_fresh(&self) -> Option<GoAwayInfo> {
        if self.fresh.swap(false, Ordering::AcqRel) {
            self.get()
        } else {
            None
        }
    }
}

#[derive(Debug)]
enum Parse {
    Header { filled: usize },
    Payload { remaining: usize, go_away: bool },
}

/// Follows frame boundaries and collects GOAWAY payloads.
#[derive(Debug)]
struct FrameParser {
    state: Parse,
    header: [u8; FRAME_HEADER_BYTES],
    payload: Vec<u8>,
}

impl FrameParser {
    fn new() -> Self {
        FrameParser {
            state: Parse::Header { filled: 0 },
            header: [0; FRAME_HEADER_BYTES],
            payload: Vec::new(),
        }
    }

    fn feed(&mut self, mut data: &[u8], found: &mut impl FnMut(GoAwayInfo)) {
        while !data.is_empty() {
            match &mut self.state {
                Parse::Header { filled } => {
                    let n = (FRAME_HEADER_BYTES - *filled).min(data.len());
                    self.header[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == FRAME_HEADER_BYTES {
                        let h = &self.header;
                        let length = (usize::from(h[0]) << 16)
                            | (usize::from(h[1]) << 8)
                            | usize::from(h[2]);
                        let go_away = h[3] == FRAME_TYPE_GOAWAY;
                        self.payload.clear();
                        self.state = Parse::Payload {
                            remaining: length,
                            go_away,
                        };
                        if length == 0 {
                            self.finish_frame(found);
                        }
                    }
                }
                Parse::Payload { remaining, go_away } => {
                    let n = (*remaining).min(data.len());
                    if *go_away {
                        let room = (GOAWAY_FIXED_BYTES + GOAWAY_DEBUG_BYTES_MAX)
                            .saturating_sub(self.payload.len());
                        self.payload.extend_from_slice(&data[..n.min(room)]);
                    }
                    *remaining -= n;
                    data = &data[n..];
                    if *remaining == 0 {
                        self.finish_frame(found);
                    }
                }
            }
        }
    }

    fn finish_frame(&mut self, found: &mut impl FnMut(GoAwayInfo)) {
        if let Parse::Payload { go_away: true, .. } = self.state
            && self.payload.len() >= GOAWAY_FIXED_BYTES
        {
            let p = &self.payload;
            let last_stream_id = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
            let error_code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            found(GoAwayInfo::new(
                last_stream_id,
                error_code,
                &p[GOAWAY_FIXED_BYTES..],
            ));
        }
        self.payload.clear();
        self.state = Parse::Header { filled: 0 };
    }
}

/// Wraps a byte stream; records every GOAWAY frame read through it into a [`GoAwaySlot`].
#[derive(Debug)]
pub(crate) struct FrameSniffer<S> {
    inner: S,
    parser: FrameParser,
    slot: Arc<GoAwaySlot>,
}

impl<S> FrameSniffer<S> {
    pub(crate) fn new(inner: S, slot: Arc<GoAwaySlot>) -> Self {
        FrameSniffer {
            inner,
            parser: FrameParser::new(),
            slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameSniffer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let slot = &this.slot;
            this.parser
                .feed(&buf.filled()[before..], &mut |info| slot.record(info));
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameSniffer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn go_away_frame(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(debug);
        frame(FRAME_TYPE_GOAWAY, 0, &payload)
    }

    #[test]
    fn finds_go_away_across_any_split() {
        let mut bytes = frame(0x4, 0, &[0, 3, 0, 0, 0, 10]); // SETTINGS
        bytes.extend(frame(0x1, 1, &[0x88])); // HEADERS
        bytes.extend(frame(0x4, 0, &[])); // empty SETTINGS (ack-like)
        bytes.extend(go_away_frame(5, 0, br#"{"reason":"Shutdown"}"#));
        bytes.extend(frame(0x0, 3, b"data"));
        for chunk in 1..bytes.len() {
            let mut parser = FrameParser::new();
            let mut found = Vec::new();
            for piece in bytes.chunks(chunk) {
                parser.feed(piece, &mut |info| found.push(info));
            }
            assert_eq!(found.len(), 1, "chunk size {chunk}");
            assert_eq!(found[0].last_stream_id, 5);
            assert_eq!(found[0].reason.as_deref(), Some("Shutdown"));
        }
    }

    #[test]
    fn long_debug_data_is_truncated() {
        let debug = vec![b'x'; GOAWAY_DEBUG_BYTES_MAX * 3];
        let mut parser = FrameParser::new();
        let mut found = Vec::new();
        parser.feed(&go_away_frame(u32::MAX, 2, &debug), &mut |i| found.push(i));
        assert_eq!(found[0].last_stream_id, 0x7fff_ffff);
        assert_eq!(found[0].error_code, 2);
        assert_eq!(found[0].debug_data.len(), GOAWAY_DEBUG_BYTES_MAX);
    }
}
