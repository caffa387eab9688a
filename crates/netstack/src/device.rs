//! The smoltcp device: frames from the guest are queued by the stack; frames smoltcp
//! transmits go into the bounded queue of the writer task. When that queue is full the
//! device offers no tokens, so smoltcp keeps data in its socket buffers (backpressure from
//! a guest that does not read).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use tokio::sync::mpsc;
use vmm_sys_util::event::EventNotifier;

use crate::shared::Shared;

/// Guest frames waiting for smoltcp while the queue to the guest is full. A guest that
/// floods frames while posting no receive buffers would otherwise grow this without end.
const MAX_RX_FRAMES: usize = 4096;
const MAX_RX_BYTES: usize = 8 << 20;

pub(crate) struct Dev {
    /// Use [`Dev::queue_rx`] to add: it enforces the caps.
    pub rx: VecDeque<Vec<u8>>,
    rx_bytes: usize,
    pub out: mpsc::Sender<Vec<u8>>,
    /// Largest Ethernet frame (IP MTU + 14).
    pub frame_mtu: usize,
    pub shared: Arc<Shared>,
    /// vhost-user: tells the backend's worker thread that frames are queued (with a
    /// stream, the writer task simply awaits the queue).
    pub kick: Option<Arc<EventNotifier>>,
}

impl Dev {
    pub fn new(
        out: mpsc::Sender<Vec<u8>>,
        frame_mtu: usize,
        shared: Arc<Shared>,
        kick: Option<Arc<EventNotifier>>,
    ) -> Dev {
        Dev {
            rx: VecDeque::new(),
            rx_bytes: 0,
            out,
            frame_mtu,
            shared,
            kick,
        }
    }

    /// Queue a guest frame for smoltcp; beyond the caps it is dropped (and counted).
    pub fn queue_rx(&mut self, f: Vec<u8>) -> bool {
        if self.rx.len() >= MAX_RX_FRAMES || self.rx_bytes + f.len() > MAX_RX_BYTES {
            self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.rx_bytes += f.len();
        self.rx.push_back(f);
        true
    }

    pub fn kick_writer(&self) {
        if let Some(k) = &self.kick {
            if self.out.capacity() < self.out.max_capacity() {
                let _ = k.notify();
            }
        }
    }

    fn has_room(&self) -> bool {
        if self.out.capacity() == 0 {
            self.shared.tx_blocked.store(true, Ordering::Relaxed);
            false
        } else {
            true
        }
    }
}

pub(crate) struct RxTok(Vec<u8>);

impl RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub(crate) struct TxTok<'a>(&'a mpsc::Sender<Vec<u8>>);

impl TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        // The stack is the only sender and checked for room, so this does not fail
        // unless the writer is gone.
        let _ = self.0.try_send(v);
        r
    }
}

impl Device for Dev {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(RxTok, TxTok<'_>)> {
        if self.rx.is_empty() || !self.has_room() {
            return None;
        }
        let f = self.rx.pop_front()?;
        self.rx_bytes -= f.len();
        Some((RxTok(f), TxTok(&self.out)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxTok<'_>> {
        if !self.has_room() {
            return None;
        }
        Some(TxTok(&self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = page_aligned_frame_mtu(self.frame_mtu);
        // The stack verifies IPv4 and TCP checksums of every guest frame before smoltcp
        // sees it (handle_ipv4, handle_tcp): a second pass over each byte is not needed.
        c.checksum.ipv4 = smoltcp::phy::Checksum::Tx;
        c.checksum.tcp = smoltcp::phy::Checksum::Tx;
        c
    }
}

/// The frame size smoltcp works with: the guest's MTU, trimmed so that a full TCP
/// segment carries a whole number of 4 KiB pages (smoltcp derives the MSS it advertises,
/// and the segments it sends, from this). A guest then builds each segment from whole
/// pages, as with passt, which does the same; with 65520 the MSS is 61440 instead of
/// 65480. Small MTUs are left as they are.
pub(crate) fn page_aligned_frame_mtu(frame_mtu: usize) -> usize {
    const HDRS: usize = 14 + 20 + 20; // Ethernet, IPv4, TCP
    const PAGE: usize = 4096;
    match frame_mtu.checked_sub(HDRS) {
        Some(mss) if mss > 2 * PAGE => mss / PAGE * PAGE + HDRS,
        _ => frame_mtu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_waiting_for_smoltcp_are_capped() {
        let (out, _rx) = mpsc::channel(1);
        let shared = Arc::new(Shared::default());
        let mut dev = Dev::new(out, 1514, shared.clone(), None);
        let mut queued = 0;
        for _ in 0..MAX_RX_FRAMES + 10 {
            queued += dev.queue_rx(vec![0u8; 60]) as usize;
        }
        assert_eq!(queued, MAX_RX_FRAMES);
        assert_eq!(shared.dropped_frames.load(Ordering::Relaxed), 10);
        // by bytes too
        let mut dev = Dev::new(dev.out.clone(), 1514, shared.clone(), None);
        let big = MAX_RX_BYTES / 4 + 1;
        let taken: Vec<bool> = (0..4).map(|_| dev.queue_rx(vec![0u8; big])).collect();
        assert_eq!(taken, [true, true, true, false]);
        // a frame handed to smoltcp frees its room
        let _ = dev.receive(Instant::from_millis(0)).unwrap();
        assert!(dev.queue_rx(vec![0u8; big]));
    }

    #[test]
    fn mss_is_a_whole_number_of_pages_for_large_mtus() {
        assert_eq!(page_aligned_frame_mtu(65520 + 14) - 54, 61440);
        assert_eq!(page_aligned_frame_mtu(9000 + 14) - 54, 8192);
        assert_eq!(page_aligned_frame_mtu(1500 + 14), 1514);
        assert_eq!(page_aligned_frame_mtu(576 + 14), 590);
    }
}
