//! The guest's virtio-net served over vhost-user: QEMU hands msb-runtime the guest's
//! memory and the two virtqueues (rx 0, tx 1), and frames move between the rings and the
//! stack without passing through QEMU.
//!
//! Why: a virtio-net backed by `-netdev stream` has no virtio-net header, so the guest
//! must checksum every segment itself, and under TCG that is most of the guest's CPU
//! time on a bulk upload. Here we offer checksum offload both ways (`VIRTIO_NET_F_CSUM`:
//! the guest leaves TCP/UDP checksums to us; `VIRTIO_NET_F_GUEST_CSUM`: frames we deliver
//! are marked `DATA_VALID`, so the guest does not verify them again), mergeable receive
//! buffers for 64 KiB frames, and event-index notification suppression. No segmentation
//! offload is offered: the link MTU is already 65520 by default.
//!
//! The guest is hostile: the memory accesses are bounds-checked by vm-memory, descriptor
//! chains by virtio-queue, and every header field we use is validated here. A bad frame is
//! dropped (and counted); its descriptors are still returned to the guest.
//!
//! Threads: the vhost-user protocol runs on a thread of its own, the rings on one worker
//! thread (vhost-user-backend's epoll loop). Guest frames go to the stack on the same
//! bounded channel the stream reader uses; frames for the guest are taken from the
//! stack's output channel whenever the stack signals `kick` (an eventfd) or the guest
//! posts receive buffers.

use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::error::NetError;
use crate::event::Event;
use crate::shared::{Shared, MAX_FRAME_LEN};

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Epoll token of the stack's "frames are waiting" eventfd (0..=NUM_QUEUES are taken).
const STACK_KICK: u16 = NUM_QUEUES as u16 + 1;
/// Epoll token of the worker's own "more on the tx ring" eventfd.
const TX_MORE: u16 = NUM_QUEUES as u16 + 2;
/// Frames (or chains) handled per event before the worker lets other events, and QEMU's
/// control messages (which need the backend lock), have a turn.
const BATCH: usize = 64;
/// Longest descriptor chain accepted: Linux uses about 20 for a frame, while an indirect
/// table may claim 65535 entries.
const MAX_CHAIN_DESCS: usize = 128;
const QUEUE_SIZE: usize = 1024;

/// Guest memory with a dirty-page log: while QEMU migrates or snapshots the VM, every
/// byte we write into guest memory is marked in the log QEMU hands us (LOG_SHMFD). Without
/// VHOST_F_LOG_ALL, QEMU refuses to migrate or snapshot the VM at all.
type GuestMem = GuestMemoryMmap<BitmapMmapRegion>;
type VringRwLock = vhost_user_backend::VringRwLock<GuestMemoryAtomic<GuestMem>>;
/// struct virtio_net_hdr_v1 (VERSION_1 always has `num_buffers`).
pub(crate) const HDR_LEN: usize = 12;

/// A bound vhost-user socket, waiting for QEMU (`-chardev socket,path=...` +
/// `-netdev vhost-user`). Bind it before QEMU starts.
pub struct VhostListener {
    listener: UnixListener,
    path: PathBuf,
}

impl VhostListener {
    pub fn bind(path: &Path) -> Result<VhostListener, NetError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| {
            NetError::Io(io::Error::other(format!(
                "vhost-user: listen on {}: {e}",
                path.display()
            )))
        })?;
        Ok(VhostListener {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for VhostListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Backend {
    mem: Option<GuestMemoryAtomic<GuestMem>>,
    event_idx: bool,
    acked: u64,
    /// Guest frames to the stack; taken (closing the channel) when QEMU goes away.
    frames: Option<mpsc::Sender<Result<Vec<u8>, NetError>>>,
    /// Frames from the stack for the guest.
    out: mpsc::Receiver<Vec<u8>>,
    /// A frame taken from `out` that did not fit into the guest's receive buffers yet.
    stash: Option<Vec<u8>>,
    shared: Arc<Shared>,
    ev: mpsc::Sender<Event>,
    kick: EventConsumer,
    /// The write end of `kick`: the worker kicks itself when it stops at BATCH frames.
    kick_self: Arc<EventNotifier>,
    /// Self-kick for the tx ring (when a pass stops at BATCH chains).
    tx_more: (EventConsumer, EventNotifier),
    /// Per queue, the used index we last published, while the ring runs (cleared when
    /// QEMU stops it). vhost-user-backend re-reads the used index from guest memory on a
    /// SET_VRING_ADDR, which QEMU also sends to a running ring (dirty logging on or off);
    /// a publish of ours racing that would be rolled back, so ours is put back.
    used: [Option<u16>; NUM_QUEUES],
    /// One bit per queue: its malformed ring has been reported.
    broken_logged: u8,
    /// Read end and write end of the worker thread's exit event.
    exit: Mutex<Option<(EventConsumer, EventNotifier)>>,
}

fn offered_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_MTU)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        // QEMU's vhost-user-net will not start without it (see vhost_proxy.rs).
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        // Dirty logging (see GuestMem): keeps QEMU snapshots of the VM possible.
        | VhostUserVirtioFeatures::LOG_ALL.bits()
}

/// LOG_SHMFD: QEMU hands over the dirty log as shared memory (see GuestMem).
fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD
}

impl Backend {
    fn has(&self, feature: u32) -> bool {
        self.acked & (1 << feature) != 0
    }

    /// Undo a roll-back of the used index by vhost-user-backend (see `used`).
    fn restore_used(&self, queue: u16, q: &mut Queue) {
        if let Some(u) = self.used[usize::from(queue)] {
            if u != q.next_used() {
                q.set_next_used(u);
            }
        }
    }

    /// Say once per queue that the guest broke its ring (bad indices, bad addresses);
    /// that queue's frames are left alone until the guest fixes or resets it.
    fn ring_broken(&mut self, queue: u16) {
        let bit = 1u8 << queue;
        if self.broken_logged & bit == 0 {
            self.broken_logged |= bit;
            let name = if queue == RX_QUEUE {
                "receive"
            } else {
                "transmit"
            };
            eprintln!("network: the guest's {name} virtqueue is malformed; its frames are skipped");
        }
    }

    /// Guest -> stack: up to BATCH chains from the tx ring per call (a self-kick brings
    /// the worker back for the rest, so QEMU's control messages and the rx ring get a turn).
    fn drain_tx(&mut self, vring: &VringRwLock) {
        let Some(atomic) = &self.mem else {
            return;
        };
        let mem = atomic.memory();
        let mut frames = Vec::with_capacity(BATCH);
        let mut more = false;
        let mut broken = false;
        {
            let mut st = vring.get_mut();
            if !st.is_enabled() || !st.get_queue().ready() {
                return;
            }
            self.restore_used(TX_QUEUE, st.get_queue_mut());
            let mut taken = 0;
            'ring: loop {
                if self.event_idx {
                    let _ = st.disable_notification();
                }
                loop {
                    if taken == BATCH {
                        more = true;
                        break 'ring;
                    }
                    let q = st.get_queue_mut();
                    let size = q.size();
                    let chain = match next_chain(q, &mem) {
                        Ok(Some(chain)) => chain,
                        Ok(None) => break,
                        Err(()) => {
                            broken = true;
                            break 'ring;
                        }
                    };
                    taken += 1;
                    let head = chain.head_index();
                    if head >= size {
                        // Not a descriptor of this ring: it cannot even be returned.
                        broken = true;
                        break 'ring;
                    }
                    match read_tx_frame(&mem, chain) {
                        Some(f) => frames.push(f),
                        None => {
                            self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if st.add_used(head, 0).is_err() {
                        broken = true;
                        break 'ring;
                    }
                }
                if !self.event_idx || !st.enable_notification().unwrap_or(false) {
                    break;
                }
            }
            self.used[usize::from(TX_QUEUE)] = Some(st.get_queue().next_used());
            if st.needs_notification().unwrap_or(true) {
                let _ = st.signal_used_queue();
            }
        }
        if broken {
            self.ring_broken(TX_QUEUE);
        }
        // Waits while the stack's queue is full: the stack always drains it, so this
        // cannot deadlock with frames going the other way.
        if let Some(tx) = &self.frames {
            for f in frames {
                if tx.blocking_send(Ok(f)).is_err() {
                    break;
                }
            }
        }
        if more {
            let _ = self.tx_more.1.notify();
        }
    }

    /// Stack -> guest: up to BATCH waiting frames, as far as the guest's receive buffers
    /// go; the rest on a self-kick, or when the guest posts buffers.
    fn fill_rx(&mut self, vring: &VringRwLock) {
        let Some(atomic) = &self.mem else {
            return;
        };
        let mem = atomic.memory();
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() {
            return;
        }
        self.restore_used(RX_QUEUE, st.get_queue_mut());
        // Interrupt bookkeeping starts from here, every call: a ring restarted by QEMU
        // starts its used index again from its own value.
        let old_used = st.get_queue().next_used();
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let flags = if self.has(VIRTIO_NET_F_GUEST_CSUM) {
            VIRTIO_NET_HDR_F_DATA_VALID as u8
        } else {
            0
        };
        let mut published = false;
        let mut took = false;
        let mut broken = false;
        // true when the loop stopped on its own account (nothing waiting, no room, a broken
        // ring); false when it used up its BATCH passes.
        let stopped = 'fill: {
            for _ in 0..BATCH {
                let frame = match self.stash.take() {
                    Some(f) => f,
                    None => match self.out.try_recv() {
                        Ok(f) => {
                            took = true;
                            f
                        }
                        Err(_) => break 'fill true,
                    },
                };
                let q = st.get_queue_mut();
                match write_rx_frame(q, &mem, &frame, flags, mrg) {
                    RxOutcome::Written(used) => {
                        if publish_used(q, &mem, &used).is_err() {
                            broken = true;
                            break 'fill true;
                        }
                        published = true;
                        self.shared
                            .rx_bytes
                            .fetch_add(frame.len() as u64, Ordering::Relaxed);
                    }
                    RxOutcome::BadBuffers(used) => {
                        let empty: Vec<(u16, u32)> = used.iter().map(|&(h, _)| (h, 0)).collect();
                        if publish_used(q, &mem, &empty).is_err() {
                            broken = true;
                            break 'fill true;
                        }
                        published = true;
                        self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    RxOutcome::NoRoom(seen) => {
                        self.stash = Some(frame);
                        if self.event_idx && rearm(q, &mem, seen) {
                            continue; // buffers arrived meanwhile
                        }
                        break 'fill true;
                    }
                    RxOutcome::Broken => {
                        self.stash = Some(frame);
                        broken = true;
                        break 'fill true;
                    }
                }
            }
            false
        };
        if !stopped && (self.stash.is_some() || !self.out.is_empty()) {
            // BATCH used up with frames still waiting (maybe parked after buffers arrived
            // on the last pass, which no guest kick will announce): come back for them.
            let _ = self.kick_self.notify();
        }
        self.used[usize::from(RX_QUEUE)] = Some(st.get_queue().next_used());
        if published && self.rx_interrupt_due(st.get_queue(), &mem, old_used) {
            let _ = st.signal_used_queue();
        }
        drop(st);
        if broken {
            self.ring_broken(RX_QUEUE);
        }
        if took && self.shared.tx_blocked.swap(false, Ordering::Relaxed) {
            let _ = self.ev.try_send(Event::TxReady);
        }
    }

    /// Whether the guest wants an interrupt for the used entries published since the last
    /// time we asked (EVENT_IDX: it said up to where it is not interested yet).
    fn rx_interrupt_due(&self, q: &Queue, mem: &GuestMem, old: u16) -> bool {
        let new = Wrapping(q.next_used());
        let old = Wrapping(old);
        if !self.event_idx {
            return true;
        }
        // The used entries must be visible before we read the guest's used_event.
        fence(Ordering::SeqCst);
        let at = q.avail_ring() + 4 + 2 * u64::from(q.size());
        match mem.load::<u16>(GuestAddress(at), Ordering::Acquire) {
            Ok(ev) => new - Wrapping(u16::from_le(ev)) - Wrapping(1) < new - old,
            Err(_) => true,
        }
    }
}

type Chain = virtio_queue::DescriptorChain<vm_memory::GuestMemoryLoadGuard<GuestMem>>;

/// The next chain the guest made available: `Ok(None)` when there is none, `Err` when the
/// ring is malformed (an avail index more than a ring ahead, rings it cannot read).
/// virtio-queue's pop says `None` for both, and also when the guest has just added an
/// entry after pop read the index: that race is told apart and retried once, because
/// taking it for a broken ring would stop the queue for good (the guest, told by
/// EVENT_IDX, would not kick again).
fn next_chain(
    q: &mut Queue,
    mem: &vm_memory::GuestMemoryLoadGuard<GuestMem>,
) -> Result<Option<Chain>, ()> {
    if q.avail_ring() == 0 {
        return Err(()); // virtio-queue refuses a ring at 0 as "not ready"
    }
    for _ in 0..2 {
        if let Some(chain) = q.pop_descriptor_chain(mem.clone()) {
            return Ok(Some(chain));
        }
        match q.avail_idx(&**mem, Ordering::Acquire) {
            Ok(a) if a.0 == q.next_avail() => return Ok(None),
            Ok(a) if a.0.wrapping_sub(q.next_avail()) <= q.size() => continue,
            _ => return Err(()),
        }
    }
    Err(())
}

/// After running out of receive buffers at avail index `seen` (EVENT_IDX): ask the guest
/// to notify us when it posts past `seen`. True if it already has: those buffers arrived
/// while we were trying, and the guest may not have kicked for them, so retry at once
/// (waiting would be a lost wakeup: frames parked, buffers posted, nobody kicking).
fn rearm(q: &mut Queue, mem: &GuestMem, seen: u16) -> bool {
    let start = q.next_avail();
    // enable_notification writes avail_event = next_avail, then (after a full fence)
    // reports whether avail_idx has moved past it.
    q.set_next_avail(seen);
    let moved = q.enable_notification(mem).unwrap_or(false);
    q.set_next_avail(start);
    moved
}

/// Put a frame's used entries in the used ring, then make them visible to the guest with
/// one store of the index: with mergeable buffers the guest must never see part of a frame
/// (Linux drops it: "rx error: N buffers out of M missing").
fn publish_used(q: &mut Queue, mem: &GuestMem, used: &[(u16, u32)]) -> Result<(), ()> {
    let size = q.size();
    let base = q.used_ring();
    let start = q.next_used();
    for (i, &(head, len)) in used.iter().enumerate() {
        if head >= size {
            return Err(());
        }
        let slot = u64::from(start.wrapping_add(i as u16) % size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let at = base.checked_add(4 + slot * 8).ok_or(())?;
        mem.write_slice(&elem, GuestAddress(at)).map_err(|_| ())?;
    }
    let new = start.wrapping_add(used.len() as u16);
    mem.store(new.to_le(), GuestAddress(base + 2), Ordering::Release)
        .map_err(|_| ())?;
    q.set_next_used(new);
    Ok(())
}

/// Whether a chain has at most MAX_CHAIN_DESCS descriptors (an indirect table may claim
/// 65535, and every walk over the chain would pay for all of them).
fn chain_is_short<M>(chain: &virtio_queue::DescriptorChain<M>) -> bool
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory + Sized,
{
    chain.clone().take(MAX_CHAIN_DESCS + 1).count() <= MAX_CHAIN_DESCS
}
/// Read one tx descriptor chain: header, then the frame. `None` for a chain that is not a
/// well-formed frame we accept.
fn read_tx_frame<M>(mem: &M, chain: virtio_queue::DescriptorChain<M>) -> Option<Vec<u8>>
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory + Sized,
{
    if !chain_is_short(&chain) {
        return None;
    }
    let mut r = chain.reader(mem).ok()?;
    let len = r.available_bytes();
    if !(HDR_LEN + 14..=HDR_LEN + MAX_FRAME_LEN).contains(&len) {
        return None;
    }
    let mut hdr = [0u8; HDR_LEN];
    r.read_exact(&mut hdr).ok()?;
    let mut frame = vec![0u8; len - HDR_LEN];
    r.read_exact(&mut frame).ok()?;
    complete_checksum(&hdr, &mut frame).then_some(frame)
}

/// Apply the virtio-net header of a guest frame: no segmentation offload was offered, and
/// a partial checksum (`NEEDS_CSUM`) is completed here, where the device would.
pub(crate) fn complete_checksum(hdr: &[u8; HDR_LEN], frame: &mut [u8]) -> bool {
    if hdr[1] != VIRTIO_NET_HDR_GSO_NONE as u8 {
        return false;
    }
    if hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 == 0 {
        return true;
    }
    let start = u16::from_le_bytes([hdr[6], hdr[7]]) as usize;
    let field = start + u16::from_le_bytes([hdr[8], hdr[9]]) as usize;
    if start >= frame.len() || field + 2 > frame.len() {
        return false;
    }
    // The guest put the pseudo-header sum into the field; sum from csum_start to the end.
    let sum = !ones_complement_sum(&frame[start..]);
    let sum = if sum == 0 { 0xffff } else { sum };
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The folded 16-bit ones-complement sum of `data` (RFC 1071), 8 bytes at a time.
pub(crate) fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes(c.try_into().unwrap());
        // Two 32-bit halves: 2^16 = 1 (mod 0xffff), so summing wider words is the same.
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while let [a, b, tail @ ..] = rest {
        acc += u16::from_be_bytes([*a, *b]) as u64;
        rest = tail;
    }
    if let [a] = rest {
        acc += (*a as u64) << 8;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}
enum RxOutcome {
    /// The frame is in the guest's buffers: the chains to return, with the bytes written.
    Written(Vec<(u16, u32)>),
    /// Not enough receive buffers now (nothing consumed); the guest's avail index when
    /// we ran out.
    NoRoom(u16),
    /// The guest's buffers were unusable: the chains to return empty; frame dropped.
    BadBuffers(Vec<(u16, u32)>),
    /// The ring itself is malformed (nothing consumed).
    Broken,
}

/// Write one frame (virtio-net header first) into the guest's receive buffers. Used
/// entries are not published here (see publish_used).
fn write_rx_frame(
    q: &mut Queue,
    mem: &vm_memory::GuestMemoryLoadGuard<GuestMem>,
    frame: &[u8],
    flags: u8,
    mrg: bool,
) -> RxOutcome {
    let start = q.next_avail();
    let size = q.size();
    let mut used: Vec<(u16, u32)> = Vec::new();
    let mut hdr_writer = None;
    let mut rest = frame;
    loop {
        let chain = match next_chain(q, mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => {
                let seen = q.next_avail();
                q.set_next_avail(start);
                return RxOutcome::NoRoom(seen);
            }
            Err(()) => {
                q.set_next_avail(start);
                return RxOutcome::Broken;
            }
        };
        let head = chain.head_index();
        if head >= size {
            q.set_next_avail(start);
            return RxOutcome::Broken;
        }
        if !chain_is_short(&chain) {
            used.push((head, 0));
            return RxOutcome::BadBuffers(used);
        }
        let Ok(mut w) = chain.writer(&**mem) else {
            used.push((head, 0));
            return RxOutcome::BadBuffers(used);
        };
        let mut written = 0usize;
        if hdr_writer.is_none() {
            // The header goes at the start of the first buffer; its num_buffers is known
            // only at the end.
            if w.available_bytes() < HDR_LEN {
                used.push((head, 0));
                return RxOutcome::BadBuffers(used);
            }
            let Ok(body) = w.split_at(HDR_LEN) else {
                used.push((head, 0));
                return RxOutcome::BadBuffers(used);
            };
            hdr_writer = Some(w);
            w = body;
            written = HDR_LEN;
        }
        let n = rest.len().min(w.available_bytes());
        if w.write_all(&rest[..n]).is_err() {
            used.push((head, 0));
            return RxOutcome::BadBuffers(used);
        }
        rest = &rest[n..];
        used.push((head, (written + n) as u32));
        if rest.is_empty() {
            break;
        }
        if !mrg || used.len() >= usize::from(size) {
            // Without mergeable buffers a frame must fit one chain.
            return RxOutcome::BadBuffers(used);
        }
    }
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = flags;
    hdr[1] = VIRTIO_NET_HDR_GSO_NONE as u8;
    hdr[10..12].copy_from_slice(&(used.len() as u16).to_le_bytes());
    if let Some(mut w) = hdr_writer {
        if w.write_all(&hdr).is_err() {
            return RxOutcome::BadBuffers(used);
        }
    }
    RxOutcome::Written(used)
}

impl VhostUserBackendMut for Backend {
    type Bitmap = BitmapMmapRegion;
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        // QEMU stopped the ring (GET_VRING_BASE): its next start sets the indices anew.
        if let Some(u) = self.used.get_mut(queue_index as usize) {
            *u = None;
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.lock().unwrap().take()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let [rx, tx] = vrings else {
            return Err(io::Error::other("expected two virtqueues"));
        };
        // Guest-caused trouble is handled (and said once) where it happens: an error from
        // here would end the worker thread, and with it the sandbox's network.
        match device_event {
            TX_QUEUE => {
                self.drain_tx(tx);
                // The stack may have answered already (ACKs): deliver without waiting.
                self.fill_rx(rx);
            }
            TX_MORE => {
                let _ = self.tx_more.0.consume();
                self.drain_tx(tx);
                self.fill_rx(rx);
            }
            RX_QUEUE => self.fill_rx(rx),
            STACK_KICK => {
                let _ = self.kick.consume();
                self.fill_rx(rx);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Start the backend on `listener`: QEMU connects to it, and the backend serves until
/// QEMU disconnects, then closes `frames` (the stack then ends as with a closed stream).
/// Returns the eventfd the stack writes after it queued frames for the guest.
pub(crate) fn start(
    listener: VhostListener,
    frames: mpsc::Sender<Result<Vec<u8>, NetError>>,
    out: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    ev: mpsc::Sender<Event>,
) -> Result<Arc<EventNotifier>, NetError> {
    let flags = EventFlag::NONBLOCK | EventFlag::CLOEXEC;
    let (kick_rx, kick_tx) = new_event_consumer_and_notifier(flags)?;
    let exit = new_event_consumer_and_notifier(flags)?;
    let tx_more = new_event_consumer_and_notifier(flags)?;
    let kick_fd = kick_rx.as_raw_fd();
    let tx_more_fd = tx_more.0.as_raw_fd();
    let kick_tx = Arc::new(kick_tx);
    let backend = Arc::new(Mutex::new(Backend {
        mem: None,
        event_idx: false,
        acked: 0,
        frames: Some(frames),
        out,
        stash: None,
        shared,
        ev,
        kick: kick_rx,
        kick_self: kick_tx.clone(),
        tx_more,
        used: [None; NUM_QUEUES],
        broken_logged: 0,
        exit: Mutex::new(Some(exit)),
    }));
    let mut daemon = VhostUserDaemon::new(
        "msb-net".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMem::new()),
    )
    .map_err(|e| NetError::Io(io::Error::other(format!("vhost-user: {e}"))))?;
    let handlers = daemon.get_epoll_handlers();
    handlers
        .first()
        .ok_or_else(|| NetError::Io(io::Error::other("vhost-user: no worker thread")))?
        .register_listener(kick_fd, EventSet::IN, STACK_KICK as u64)?;
    handlers[0].register_listener(tx_more_fd, EventSet::IN, TX_MORE as u64)?;
    // QEMU connects to `listener`; the daemon listens on a private socket next to it, and
    // the relay between the two drops the one message the daemon would refuse.
    let inner_path = listener.path.with_extension("backend");
    let mut inner = Listener::new(&inner_path, true)
        .map_err(|e| NetError::Io(io::Error::other(format!("vhost-user: {e}"))))?;
    std::thread::Builder::new()
        .name("msb-net-vhost".into())
        .spawn(move || {
            use vhost::vhost_user::Error as VuError;
            use vhost_user_backend::Error as DaemonError;
            match daemon.start(&mut inner).and_then(|_| daemon.wait()) {
                // QEMU went away: the normal end of every sandbox.
                Ok(())
                | Err(DaemonError::HandleRequest(
                    VuError::Disconnected | VuError::PartialMessage,
                )) => {}
                Err(e) => eprintln!("network: vhost-user: {e}"),
            }
            for h in daemon.get_epoll_handlers() {
                h.send_exit_event();
            }
            backend.lock().unwrap().frames = None;
        })?;
    std::thread::Builder::new()
        .name("msb-net-vhost-accept".into())
        .spawn(move || {
            let r = listener.listener.accept().and_then(|(qemu, _)| {
                let to_backend = UnixStream::connect(&inner_path);
                let _ = std::fs::remove_file(&inner_path);
                crate::vhost_proxy::relay(qemu, to_backend?)
            });
            if let Err(e) = r {
                eprintln!("network: vhost-user connection: {e}");
            }
        })?;
    Ok(kick_tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Address;

    fn hdr(flags: u8, gso: u8, start: u16, offset: u16) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        h
    }

    #[test]
    fn partial_checksum_is_completed_as_a_nic_would() {
        use smoltcp::wire::{IpAddress, TcpPacket};
        // A TCP segment (20-byte header + 1001 bytes, odd on purpose) after 34 bytes of
        // Ethernet and IPv4 header, as a guest with checksum offload hands it over: the
        // field holds the pseudo-header sum, not the checksum.
        let (src, dst) = ([10, 0, 2, 15], [10, 0, 2, 2]);
        let mut f = vec![0u8; 34 + 20 + 1001];
        for (i, b) in f.iter_mut().enumerate().skip(54) {
            *b = (i * 7) as u8;
        }
        let tcp_len = (f.len() - 34) as u16;
        {
            let mut t = TcpPacket::new_unchecked(&mut f[34..]);
            t.set_src_port(40000);
            t.set_dst_port(80);
            t.set_header_len(20);
        }
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&tcp_len.to_be_bytes());
        f[34 + 16..34 + 18].copy_from_slice(&ones_complement_sum(&pseudo).to_be_bytes());

        let h = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, 34, 16);
        assert!(complete_checksum(&h, &mut f));
        let t = TcpPacket::new_checked(&f[34..]).unwrap();
        let (s, d) = (IpAddress::v4(10, 0, 2, 15), IpAddress::v4(10, 0, 2, 2));
        assert!(
            t.verify_checksum(&s, &d),
            "smoltcp accepts the completed checksum"
        );
        assert_eq!(
            &f[..34],
            &[0u8; 34][..],
            "nothing before csum_start is touched"
        );
    }

    #[test]
    fn sum_matches_the_word_by_word_definition() {
        let mut x: u32 = 12345;
        for len in [0usize, 1, 2, 3, 7, 8, 9, 15, 16, 17, 1499, 65535] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let mut naive: u32 = 0;
            for w in data.chunks(2) {
                naive += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
                naive = (naive & 0xffff) + (naive >> 16);
            }
            assert_eq!(ones_complement_sum(&data), naive as u16, "len {len}");
        }
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut f = vec![0u8; 64];
        let needs = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        assert!(
            !complete_checksum(&hdr(needs, 0, 64, 0), &mut f),
            "start past the end"
        );
        assert!(
            !complete_checksum(&hdr(needs, 0, 10, 53), &mut f),
            "field past the end"
        );
        assert!(!complete_checksum(&hdr(needs, 0, 0xffff, 0xffff), &mut f));
        assert!(
            !complete_checksum(&hdr(0, 1, 0, 0), &mut f),
            "segmentation not offered"
        );
        assert!(
            complete_checksum(&hdr(0, 0, 0xffff, 0xffff), &mut f),
            "no offload asked: untouched"
        );
        assert_eq!(f, vec![0u8; 64]);
    }

    /// Guest memory with a 16-entry split queue (the driver's side) at address 0, and a
    /// device-side vring over it, as the vhost-user handler would set it up.
    fn queue_pair() -> (GuestMemoryAtomic<GuestMem>, VringRwLock) {
        use vm_memory::GuestAddress;
        // The mock puts indirect tables at 0x3000_0000.
        let mem = GuestMem::from_ranges(&[
            (GuestAddress(0), 0x40000),
            (GuestAddress(0x3000_0000), 0x10000),
        ])
        .unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let vring = VringRwLock::new(atomic.clone(), 16).unwrap();
        vring.set_queue_size(16);
        (atomic, vring)
    }

    /// Where the device-side used ring goes: virtio-queue's mock places its own used ring
    /// over the end of its avail ring for 16 entries, so the tests keep it apart.
    const USED: u64 = 0x8000;

    fn attach(vring: &VringRwLock, q: &virtio_queue::mock::MockSplitQueue<GuestMem>) {
        vring
            .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, USED)
            .unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
    }

    fn writable(addr: u64, len: u32) -> virtio_queue::desc::RawDescriptor {
        use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
        virtio_queue::desc::split::Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0).into()
    }

    #[test]
    fn a_frame_spans_mergeable_buffers_with_num_buffers_in_the_header() {
        use vm_memory::{Bytes, GuestAddress};
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        // Three one-descriptor chains of 4 KiB each.
        let bufs = [0x10000u64, 0x11000, 0x12000];
        let descs: Vec<_> = bufs.iter().map(|&a| writable(a, 4096)).collect();
        q.add_desc_chains(&descs, 0).unwrap();
        attach(&vring, &q);

        let frame: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
        let mut st = vring.get_mut();
        let q = st.get_queue_mut();
        let RxOutcome::Written(used) = write_rx_frame(q, &mem, &frame, 2, true) else {
            panic!("the frame should fit three buffers");
        };
        assert_eq!(
            used,
            vec![(0, 4096), (1, 4096), (2, (12 + 10000 - 8192) as u32)]
        );
        let mut hdr = [0u8; HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(bufs[0])).unwrap();
        assert_eq!(hdr[0], 2, "flags (DATA_VALID)");
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
        let mut back = vec![0u8; 3 * 4096];
        mem.read_slice(&mut back, GuestAddress(bufs[0])).unwrap();
        assert_eq!(&back[HDR_LEN..HDR_LEN + frame.len()], &frame[..]);

        // Nothing is visible to the guest until the whole frame is published, at once.
        let used_idx = |q: &Queue| {
            mem.read_obj::<u16>(GuestAddress(q.used_ring() + 2))
                .unwrap()
        };
        assert_eq!(used_idx(q), 0);
        publish_used(q, &mem, &used).unwrap();
        assert_eq!(used_idx(q), 3);
        for (i, (head, len)) in used.iter().enumerate() {
            let at = GuestAddress(q.used_ring() + 4 + 8 * i as u64);
            assert_eq!(mem.read_obj::<u32>(at).unwrap(), u32::from(*head));
            assert_eq!(mem.read_obj::<u32>(at.unchecked_add(4)).unwrap(), *len);
        }

        // No buffers left: nothing is consumed, and the frame can be retried later.
        let before = q.next_avail();
        assert!(matches!(
            write_rx_frame(q, &mem, &frame, 0, true),
            RxOutcome::NoRoom(3)
        ));
        assert_eq!(q.next_avail(), before);
    }

    #[test]
    fn without_mergeable_buffers_a_frame_must_fit_one_chain() {
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        q.add_desc_chains(&[writable(0x10000, 1000), writable(0x11000, 1000)], 0)
            .unwrap();
        attach(&vring, &q);
        let mut st = vring.get_mut();
        let out = write_rx_frame(st.get_queue_mut(), &mem, &[7u8; 1500], 0, false);
        let RxOutcome::BadBuffers(used) = out else {
            panic!("expected the frame to be refused");
        };
        assert_eq!(used.len(), 1, "one chain taken, to be returned empty");
    }

    #[test]
    fn buffers_outside_guest_memory_are_refused_not_written() {
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        q.add_desc_chains(&[writable(0x3ff00, 4096)], 0).unwrap();
        attach(&vring, &q);
        let mut st = vring.get_mut();
        let out = write_rx_frame(st.get_queue_mut(), &mem, &[7u8; 100], 0, true);
        assert!(matches!(out, RxOutcome::BadBuffers(ref u) if u == &vec![(0, 0)]));
    }

    /// A backend over `atomic` with EVENT_IDX and mergeable buffers negotiated; returns
    /// it with the stack's ends of its channels.
    /// The stack's ends of a test backend's channels: frames for the guest, guest frames.
    type StackEnds = (
        mpsc::Sender<Vec<u8>>,
        mpsc::Receiver<Result<Vec<u8>, NetError>>,
    );

    fn backend(atomic: &GuestMemoryAtomic<GuestMem>) -> (Backend, StackEnds) {
        let flags = EventFlag::NONBLOCK;
        let (out_tx, out_rx) = mpsc::channel(1024);
        let (frames_tx, frames_rx) = mpsc::channel(1024);
        let (ev_tx, _ev_rx) = mpsc::channel(16);
        let (kick_rx, kick_tx) = new_event_consumer_and_notifier(flags).unwrap();
        let b = Backend {
            mem: Some(atomic.clone()),
            event_idx: true,
            acked: (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_RING_F_EVENT_IDX),
            frames: Some(frames_tx),
            out: out_rx,
            stash: None,
            shared: Arc::new(Shared::default()),
            ev: ev_tx,
            kick: kick_rx,
            kick_self: Arc::new(kick_tx),
            tx_more: new_event_consumer_and_notifier(flags).unwrap(),
            used: [None; NUM_QUEUES],
            broken_logged: 0,
            exit: Mutex::new(None),
        };
        (b, (out_tx, frames_rx))
    }

    fn avail_idx_addr(q: &virtio_queue::mock::MockSplitQueue<GuestMem>) -> GuestAddress {
        q.avail_addr().unchecked_add(2)
    }

    #[test]
    fn too_few_receive_buffers_park_the_frame_and_ask_for_a_kick_without_spinning() {
        use vm_memory::Bytes;
        let (atomic, vring) = queue_pair();
        vring.set_queue_event_idx(true);
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        // One buffer only big enough for the header: a frame never fits.
        q.add_desc_chains(&[writable(0x10000, HDR_LEN as u32)], 0)
            .unwrap();
        attach(&vring, &q);
        let (mut b, (out, _frames)) = backend(&atomic);
        out.try_send(vec![1u8; 100]).unwrap();
        b.fill_rx(&vring); // returns: no loop on a buffer that can never do
        assert_eq!(b.stash.as_deref(), Some(&[1u8; 100][..]), "kept for later");
        let st = vring.get_ref();
        assert_eq!(st.get_queue().next_avail(), 0, "nothing consumed");
        // avail_event (after the used ring) asks for a kick once the guest posts past
        // the one buffer there is.
        let avail_event = GuestAddress(USED + 4 + 8 * 16);
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 1);
    }

    #[test]
    fn buffers_posted_while_we_ran_out_are_not_missed() {
        let (atomic, vring) = queue_pair();
        vring.set_queue_event_idx(true);
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        q.add_desc_chains(&[writable(0x10000, HDR_LEN as u32)], 0)
            .unwrap();
        attach(&vring, &q);
        let mut st = vring.get_mut();
        let queue = st.get_queue_mut();
        let RxOutcome::NoRoom(seen) = write_rx_frame(queue, &mem, &[5u8; 100], 0, true) else {
            panic!("one header-sized buffer cannot take a frame");
        };
        assert_eq!(seen, 1);
        // Meanwhile the guest posts a real buffer (and, told nothing new, need not kick).
        q.add_desc_chains(&[writable(0x11000, 4096)], 1).unwrap();
        assert!(
            rearm(queue, &mem, seen),
            "the new buffer is seen: retry now"
        );
        assert!(matches!(
            write_rx_frame(queue, &mem, &[5u8; 100], 0, true),
            RxOutcome::Written(_)
        ));
        // Nothing new since: wait for a kick.
        assert!(!rearm(queue, &mem, queue.next_avail()));
    }

    #[test]
    fn a_malformed_avail_index_is_reported_once_and_nothing_spins() {
        use vm_memory::Bytes;
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        q.add_desc_chains(&[writable(0x10000, 4096)], 0).unwrap();
        attach(&vring, &q);
        // 1000 entries "available" on a 16-entry ring: virtio-queue refuses to pop.
        mem.write_obj::<u16>(1000, avail_idx_addr(&q)).unwrap();
        let (mut b, (out, _frames)) = backend(&atomic);
        out.try_send(vec![1u8; 100]).unwrap();
        b.fill_rx(&vring);
        assert!(b.stash.is_some());
        assert_eq!(b.broken_logged, 1 << RX_QUEUE);
        // the same on the tx ring: no frame, no loop, reported
        let (atomic2, vring2) = queue_pair();
        let mem2 = atomic2.memory();
        let q2 = virtio_queue::mock::MockSplitQueue::new(&*mem2, 16);
        attach(&vring2, &q2);
        mem2.write_obj::<u16>(1000, avail_idx_addr(&q2)).unwrap();
        let (mut b2, (_out2, mut frames2)) = backend(&atomic2);
        b2.drain_tx(&vring2);
        assert!(frames2.try_recv().is_err());
        assert_eq!(b2.broken_logged, 1 << TX_QUEUE);
    }

    /// A 128-entry rx ring with 100 one-buffer chains, and an eventfd as its interrupt.
    fn big_rx_ring() -> (
        GuestMemoryAtomic<GuestMem>,
        VringRwLock,
        vmm_sys_util::eventfd::EventFd,
    ) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let vring = VringRwLock::new(atomic.clone(), 128).unwrap();
        vring.set_queue_size(128);
        vring.set_queue_event_idx(true);
        let m = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*m, 128);
        let descs: Vec<_> = (0..100u64)
            .map(|i| writable(0x20000 + i * 0x1000, 4096))
            .collect();
        q.add_desc_chains(&descs, 0).unwrap();
        attach(&vring, &q);
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: a fresh duplicate of the eventfd, owned by the File from here on.
        let call = unsafe {
            use std::os::fd::FromRawFd;
            std::fs::File::from_raw_fd(libc::dup(irq.as_raw_fd()))
        };
        vring.set_call(Some(call));
        (atomic, vring, irq)
    }

    #[test]
    fn a_used_up_batch_with_frames_waiting_comes_back_by_itself() {
        let (atomic, vring, _irq) = big_rx_ring();
        let (mut b, (out, _frames)) = backend(&atomic);
        for i in 0..100u8 {
            out.try_send(vec![i; 60]).unwrap();
        }
        b.fill_rx(&vring);
        assert_eq!(b.shared.rx_bytes.load(Ordering::Relaxed), BATCH as u64 * 60);
        assert!(b.kick.consume().is_ok(), "the worker kicked itself");
        b.fill_rx(&vring);
        assert_eq!(b.shared.rx_bytes.load(Ordering::Relaxed), 100 * 60);
    }

    #[test]
    fn the_first_frame_after_a_ring_restart_raises_an_interrupt() {
        use vm_memory::Bytes;
        let (atomic, vring, irq) = big_rx_ring();
        let mem = atomic.memory();
        let (mut b, (out, _frames)) = backend(&atomic);
        // used_event 0: the guest wants an interrupt for the first entry only.
        for i in 0..3u8 {
            out.try_send(vec![i; 60]).unwrap();
        }
        b.fill_rx(&vring);
        assert_eq!(irq.read().unwrap(), 1);
        // QEMU stops the ring and starts it again (guest driver reset): fresh indices, and
        // the guest again asks for an interrupt at the first entry.
        b.stop_vring(u32::from(RX_QUEUE)).unwrap();
        vring.set_queue_next_used(0);
        vring.set_queue_next_avail(0);
        let used_ring = vring.get_ref().get_queue().used_ring();
        mem.write_obj::<u16>(0, GuestAddress(used_ring + 2))
            .unwrap();
        // As many frames as before the restart: bookkeeping carried over from the old
        // ring would take this for "already signalled".
        for i in 0..3u8 {
            out.try_send(vec![i; 60]).unwrap();
        }
        b.fill_rx(&vring);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used_ring + 2)).unwrap(), 3);
        assert_eq!(
            irq.read().unwrap(),
            1,
            "interrupt for the first entries after the restart"
        );
    }

    #[test]
    fn a_used_index_rolled_back_under_a_running_ring_is_put_back() {
        use vm_memory::Bytes;
        let (atomic, vring, _irq) = big_rx_ring();
        let mem = atomic.memory();
        let (mut b, (out, _frames)) = backend(&atomic);
        out.try_send(vec![1u8; 60]).unwrap();
        out.try_send(vec![2u8; 60]).unwrap();
        b.fill_rx(&vring);
        // A SET_VRING_ADDR that read the used index before our publish sets it back.
        vring.set_queue_next_used(0);
        out.try_send(vec![3u8; 60]).unwrap();
        b.fill_rx(&vring);
        let used_ring = vring.get_ref().get_queue().used_ring();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used_ring + 2)).unwrap(), 3);
        let third = mem
            .read_obj::<u32>(GuestAddress(used_ring + 4 + 2 * 8))
            .unwrap();
        assert_eq!(
            third, 2,
            "the third frame went to the third buffer, not over the first"
        );
    }

    #[test]
    fn work_is_done_in_batches_with_a_self_kick_for_the_rest() {
        use vm_memory::Bytes;
        // rx: 100 frames waiting, 16 buffers: 16 delivered, the rest waits for buffers.
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        let descs: Vec<_> = (0..16)
            .map(|i| writable(0x10000 + i * 0x1000, 4096))
            .collect();
        q.add_desc_chains(&descs, 0).unwrap();
        attach(&vring, &q);
        let (mut b, (out, _frames)) = backend(&atomic);
        for i in 0..100u8 {
            out.try_send(vec![i; 60]).unwrap();
        }
        b.fill_rx(&vring);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 16);
        assert_eq!(b.stash.as_deref(), Some(&[16u8; 60][..]));
        assert_eq!(b.shared.rx_bytes.load(Ordering::Relaxed), 16 * 60);

        // tx: 100 one-descriptor frames on a 128-entry ring: 64 per pass, then a self-kick.
        let mem2 = GuestMem::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
        let atomic2 = GuestMemoryAtomic::new(mem2);
        let vring2 = VringRwLock::new(atomic2.clone(), 128).unwrap();
        vring2.set_queue_size(128);
        let m2 = atomic2.memory();
        let q2 = virtio_queue::mock::MockSplitQueue::new(&*m2, 128);
        let frame_len = (HDR_LEN + 60) as u32;
        let descs: Vec<_> = (0..100u64)
            .map(|i| {
                virtio_queue::desc::split::Descriptor::new(0x40000 + i * 0x100, frame_len, 0, 0)
                    .into()
            })
            .collect();
        q2.add_desc_chains(&descs, 0).unwrap();
        attach(&vring2, &q2);
        let (mut b2, (_out2, mut frames2)) = backend(&atomic2);
        b2.drain_tx(&vring2);
        let mut n = 0;
        while let Ok(Ok(f)) = frames2.try_recv() {
            assert_eq!(f.len(), 60);
            n += 1;
        }
        assert_eq!(n, BATCH);
        assert!(b2.tx_more.0.consume().is_ok(), "the worker kicked itself");
        b2.drain_tx(&vring2);
        while let Ok(Ok(_)) = frames2.try_recv() {
            n += 1;
        }
        assert_eq!(n, 100);
    }

    #[test]
    fn an_oversized_indirect_table_is_refused_without_walking_it() {
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let mut q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        q.add_indirect_chain(1000).unwrap();
        attach(&vring, &q);
        let mut st = vring.get_mut();
        let chain = st
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone())
            .unwrap();
        assert!(!chain_is_short(&chain));
        assert_eq!(read_tx_frame(&mem, chain), None);
    }

    #[test]
    fn tx_chains_become_frames_and_short_or_writable_ones_do_not() {
        use vm_memory::{Bytes, GuestAddress};
        let (atomic, vring) = queue_pair();
        let mem = atomic.memory();
        let q = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        // `next`: the index of the following descriptor, when there is one.
        let desc = |addr: u64, len: u32, next: Option<u16>| -> virtio_queue::desc::RawDescriptor {
            use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
            let flags = if next.is_some() {
                VRING_DESC_F_NEXT as u16
            } else {
                0
            };
            virtio_queue::desc::split::Descriptor::new(addr, len, flags, next.unwrap_or(0)).into()
        };
        // Chain 0: header and the first 30 frame bytes, then 34 more in a second descriptor.
        // Chain 1: a header alone (no frame). Chain 2: device-writable only.
        let descs = [
            desc(0x11000, (HDR_LEN + 30) as u32, Some(1)),
            desc(0x12000, 64 - 30, None),
            desc(0x13000, HDR_LEN as u32, None),
            writable(0x14000, 100),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let frame: Vec<u8> = (0..64u8).collect();
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x11000))
            .unwrap();
        mem.write_slice(&frame[..30], GuestAddress(0x11000 + HDR_LEN as u64))
            .unwrap();
        mem.write_slice(&frame[30..], GuestAddress(0x12000))
            .unwrap();
        attach(&vring, &q);

        let mut st = vring.get_mut();
        let mut next = || {
            st.get_queue_mut()
                .pop_descriptor_chain(mem.clone())
                .unwrap()
        };
        assert_eq!(read_tx_frame(&mem, next()), Some(frame));
        assert_eq!(
            read_tx_frame(&mem, next()),
            None,
            "no frame after the header"
        );
        assert_eq!(read_tx_frame(&mem, next()), None, "nothing readable");
    }

    #[test]
    fn offers_checksum_offload_and_dirty_logging_but_no_segmentation() {
        let f = offered_features();
        assert_ne!(f & (1 << VIRTIO_NET_F_CSUM), 0);
        assert_ne!(f & (1 << VIRTIO_NET_F_GUEST_CSUM), 0);
        assert_ne!(f & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        // Dirty logging: without both, QEMU blocks every migration and snapshot of the VM.
        assert_ne!(f & VhostUserVirtioFeatures::LOG_ALL.bits(), 0);
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert!(offered_protocol_features().contains(VhostUserProtocolFeatures::LOG_SHMFD));
        for tso in [
            virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_TSO4,
            virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4,
            virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_UFO,
        ] {
            assert_eq!(f & (1 << tso), 0);
        }
    }
}
