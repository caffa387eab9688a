//! DNS over TCP at the gateway (RFC 1035 4.2.2): every message is prefixed by its length
//! (2 bytes, big endian), several queries may follow each other on one connection. The
//! connection is a smoltcp socket in the stack's flow table like any guest TCP flow, but
//! without a host socket; this is its per-connection state: the message being read and
//! the answers, kept in query order. Each message goes through the same code as a UDP
//! query (`Stack::dns_query`); only the transport differs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smoltcp::socket::tcp;

/// Queries of one connection waiting for their answer (or answers waiting for room in
/// smoltcp's send buffer). At the limit the stack stops reading the connection, so a
/// guest that pipelines more waits for its window instead of growing our memory.
pub(crate) const MAX_QUERIES: usize = 4;
/// Without traffic either way for this long, we close the connection (FIN); a guest that
/// does not close its side is reset after twice as long.
pub(crate) const IDLE: Duration = Duration::from_secs(10);
/// smoltcp's receive and send buffers of a DNS connection (each). Answers are small (at
/// most about 530 bytes: one question, 16 addresses), so `MAX_QUERIES` of them fit at
/// once; a large query is copied out as it arrives, the window only paces it. Kept small
/// because a guest may hold `maxConnections` of these open: 1,024 x 8 KiB.
pub(crate) const SOCKET_BUF: usize = 4 * 1024;

/// A complete message read from a connection: (flow id, sequence number, message).
pub(crate) type Msg = (u64, u64, Vec<u8>);

pub(crate) struct DnsConn {
    /// The message being read, its length prefix included (at most 2 + 65535 bytes).
    buf: Vec<u8>,
    /// One slot per query, in order; `None` until its answer is there.
    slots: VecDeque<Option<Vec<u8>>>,
    /// Sequence number of `slots[0]`.
    first: u64,
    /// Last byte read from the guest or answer produced.
    pub last_active: Instant,
}

impl DnsConn {
    pub fn new(now: Instant) -> DnsConn {
        DnsConn {
            buf: Vec::new(),
            slots: VecDeque::new(),
            first: 0,
            last_active: now,
        }
    }

    /// Queries read whose answers are not out yet.
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// Bytes still missing from the current message (its length prefix first).
    fn want(&self) -> usize {
        match self.buf.get(..2) {
            Some(p) => 2 + u16::from_be_bytes([p[0], p[1]]) as usize - self.buf.len(),
            None => 2 - self.buf.len(),
        }
    }

    /// Append bytes read (at most `want()`); returns the message once it is complete.
    fn feed(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.buf.extend_from_slice(data);
        if self.buf.len() < 2 || self.want() > 0 {
            return None;
        }
        Some(std::mem::take(&mut self.buf).split_off(2))
    }

    /// Read whole messages from the guest's socket while fewer than `MAX_QUERIES` answers
    /// are outstanding (`queued`: answers not yet in smoltcp). Each message gets a slot.
    /// Returns whether anything was read.
    pub fn read(
        &mut self,
        id: u64,
        sock: &mut tcp::Socket<'_>,
        queued: usize,
        out: &mut Vec<Msg>,
    ) -> bool {
        let mut moved = false;
        while self.slots.len() + queued < MAX_QUERIES && sock.can_recv() {
            let want = self.want();
            let mut got = None;
            let n = sock
                .recv(|b| {
                    let n = b.len().min(want);
                    got = self.feed(&b[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            moved = true;
            self.last_active = Instant::now();
            if let Some(m) = got {
                self.slots.push_back(None);
                let seq = self.first + self.slots.len() as u64 - 1;
                out.push((id, seq, m));
            }
        }
        moved
    }

    /// Store the answer to query `seq`; returns the answers now ready to send, in query
    /// order and framed.
    pub fn answer(&mut self, seq: u64, msg: &[u8]) -> Vec<Vec<u8>> {
        self.last_active = Instant::now();
        let slot = seq
            .checked_sub(self.first)
            .and_then(|i| self.slots.get_mut(i as usize));
        if let Some(s) = slot {
            *s = Some(frame(msg));
        }
        let mut ready = Vec::new();
        while let Some(Some(_)) = self.slots.front() {
            ready.extend(self.slots.pop_front().flatten());
            self.first += 1;
        }
        ready
    }
}

/// Length prefix + message. Our answers are far below 64 KiB (one question, at most 16
/// addresses).
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `bytes` in pieces of `step`, as `read` does.
    fn feed_all(c: &mut DnsConn, mut bytes: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let n = bytes.len().min(step).min(c.want());
            out.extend(c.feed(&bytes[..n]));
            bytes = &bytes[n..];
        }
        out
    }

    #[test]
    fn messages_are_split_by_their_length_prefix() {
        let mut wire = frame(b"first");
        wire.extend(frame(&[7u8; 300]));
        wire.extend(frame(b""));
        for step in [1, 2, 3, 7, 1000] {
            let mut c = DnsConn::new(Instant::now());
            let got = feed_all(&mut c, &wire, step);
            assert_eq!(got, vec![b"first".to_vec(), vec![7u8; 300], vec![]]);
            assert_eq!(c.want(), 2);
        }
        // The largest message the framing allows.
        let mut c = DnsConn::new(Instant::now());
        let mut wire = vec![0xff, 0xff];
        wire.extend(vec![1u8; 65535]);
        assert_eq!(feed_all(&mut c, &wire, 4096), vec![vec![1u8; 65535]]);
    }

    #[test]
    fn answers_go_out_in_query_order() {
        let mut c = DnsConn::new(Instant::now());
        for _ in 0..3 {
            c.slots.push_back(None);
        }
        // The second and third are answered first: nothing may go out yet.
        assert!(c.answer(2, b"c").is_empty());
        assert!(c.answer(1, b"b").is_empty());
        assert_eq!(c.outstanding(), 3);
        assert_eq!(
            c.answer(0, b"a"),
            vec![frame(b"a"), frame(b"b"), frame(b"c")]
        );
        assert_eq!(c.outstanding(), 0);
        // Unknown sequence numbers are ignored.
        assert!(c.answer(0, b"x").is_empty());
        assert!(c.answer(99, b"x").is_empty());
        c.slots.push_back(None);
        assert_eq!(c.answer(3, b"d"), vec![frame(b"d")]);
    }
}
