use std::io::{self, Read, Write};

use crate::message::Message;

/// Bytes after the length field that every frame has: request id (4) + flags (1).
pub const HEADER_AFTER_LEN: usize = 5;
/// Largest payload accepted on either side.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Largest value of the length field.
pub const MAX_FRAME: usize = MAX_PAYLOAD + HEADER_AFTER_LEN;

/// The frame is addressed to msb-runtime itself, not relayed to the guest.
pub const FLAG_CONTROL: u8 = 0x01;
/// Flags this version understands; any other bit set is a protocol error.
pub const KNOWN_FLAGS: u8 = FLAG_CONTROL;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is below the minimum of {HEADER_AFTER_LEN}")]
    TooShort(u32),
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME}")]
    TooLong(u32),
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("malformed payload: {0}")]
    Payload(String),
    #[error("payload of {0} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: u32,
    pub flags: u8,
    pub message: Message,
}

impl Frame {
    pub fn new(id: u32, message: Message) -> Self {
        Frame {
            id,
            flags: 0,
            message,
        }
    }

    pub fn control(id: u32, message: Message) -> Self {
        Frame {
            id,
            flags: FLAG_CONTROL,
            message,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode_frame(self.id, self.flags, &self.message)
    }
}

/// Encode a message into a complete frame.
pub fn encode_frame(id: u32, flags: u8, message: &Message) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4 + HEADER_AFTER_LEN];
    ciborium::into_writer(message, &mut out).map_err(|e| FrameError::Payload(e.to_string()))?;
    let payload_len = out.len() - 4 - HEADER_AFTER_LEN;
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge(payload_len));
    }
    let len = (payload_len + HEADER_AFTER_LEN) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out[4..8].copy_from_slice(&id.to_be_bytes());
    out[8] = flags;
    Ok(out)
}

fn check_len(len: u32) -> Result<usize, FrameError> {
    let n = len as usize;
    if n < HEADER_AFTER_LEN {
        return Err(FrameError::TooShort(len));
    }
    if n > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    Ok(n)
}

/// Decode the part after the length field.
fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let flags = body[4];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    let message: Message = ciborium::from_reader(&body[HEADER_AFTER_LEN..])
        .map_err(|e| FrameError::Payload(e.to_string()))?;
    Ok(Frame { id, flags, message })
}

/// Read exactly one frame from a blocking reader. `Ok(None)` on a clean EOF between
/// frames; `Err(Truncated)` on EOF inside a frame.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len_buf[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = check_len(u32::from_be_bytes(len_buf))?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_body(&body).map(Some)
}

/// Encode and write one frame to a blocking writer.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<(), FrameError> {
    w.write_all(&frame.encode()?)?;
    Ok(())
}

/// Incremental decoder for non-blocking transports: push bytes in, pull frames out.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Next complete frame, `Ok(None)` when more bytes are needed. An error leaves the
    /// decoder unusable: the caller must close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.next_raw()?
            .map(|raw| decode_body(&raw[4..]))
            .transpose()
    }

    /// Next complete frame as raw bytes (length field included), validated only as far
    /// as the header: for relays.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = check_len(u32::from_be_bytes([
            self.buf[0],
            self.buf[1],
            self.buf[2],
            self.buf[3],
        ]))?;
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let rest = self.buf.split_off(4 + n);
        let raw = std::mem::replace(&mut self.buf, rest);
        Ok(Some(raw))
    }

    /// Bytes buffered but not yet returned; non-zero at EOF means a truncated frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Call at EOF: a partial frame in the buffer is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// Decode a raw frame as returned by [`FrameDecoder::next_raw`].
pub fn decode_raw(raw: &[u8]) -> Result<Frame, FrameError> {
    if raw.len() < 4 + HEADER_AFTER_LEN {
        return Err(FrameError::Truncated);
    }
    let n = check_len(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))?;
    if raw.len() != 4 + n {
        return Err(FrameError::Truncated);
    }
    decode_body(&raw[4..])
}

/// Rewrite the request id of a raw frame in place.
pub fn set_raw_id(raw: &mut [u8], id: u32) {
    raw[4..8].copy_from_slice(&id.to_be_bytes());
}
