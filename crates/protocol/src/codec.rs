//! Async framing on tokio streams: the one read loop and the one write path that the
//! addon and msb-runtime use (the agent, which is synchronous, uses [`read_frame`] and
//! [`write_frame`] of the same framing).
//!
//! [`read_frame`]: crate::read_frame
//! [`write_frame`]: crate::write_frame

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{decode_raw, Frame, FrameDecoder, FrameError};

/// Reads frames from an async byte stream.
///
/// `next_raw` / `next_frame` are cancel safe: the only await is the socket read, and bytes
/// are moved into the decoder only after a read completed, so a `select!` or `timeout`
/// that drops the future loses nothing.
pub struct FrameReader<R> {
    inner: R,
    dec: FrameDecoder,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `read_size`: bytes asked of the stream per read.
    pub fn with_capacity(inner: R, read_size: usize) -> Self {
        FrameReader {
            inner,
            dec: FrameDecoder::new(),
            buf: vec![0u8; read_size.max(64)].into_boxed_slice(),
        }
    }

    pub fn new(inner: R) -> Self {
        Self::with_capacity(inner, 64 * 1024)
    }

    /// Next frame as raw bytes (length field included), validated as far as the header:
    /// for relays. `Ok(None)` on a clean end of stream between frames; a stream that ends
    /// inside a frame is [`FrameError::Truncated`]. After an error the reader is unusable.
    pub async fn next_raw(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(raw) = self.dec.next_raw()? {
                return Ok(Some(raw));
            }
            let n = self.inner.read(&mut self.buf).await?;
            if n == 0 {
                self.dec.finish()?;
                return Ok(None);
            }
            self.dec.push(&self.buf[..n]);
        }
    }

    /// Next decoded frame; end of stream and errors as [`FrameReader::next_raw`].
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.next_raw().await? {
            Some(raw) => decode_raw(&raw).map(Some),
            None => Ok(None),
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Encode and write one frame.
pub async fn write_frame_async<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let buf = frame.encode()?;
    w.write_all(&buf).await?;
    Ok(())
}
