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
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::host::Event;
use crate::{NetError, Shared, MAX_FRAME_LEN};

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Epoll token of the stack's "frames are waiting" eventfd (0..=NUM_QUEUES are taken).
const STACK_KICK: u16 = NUM_QUEUES as u16 + 1;
const QUEUE_SIZE: usize = 1024;

/// Guest memory with a dirty-page log: while QEMU migrates or snapshots the VM, every
/// byte we write into guest memory is marked in the log QEMU hands us (LOG_SHMFD). Without
/// VHOST_F_LOG_ALL, QEMU refuses to migrate or snapshot the VM at all.
type GuestMem = GuestMemoryMmap<BitmapMmapRegion>;
type VringRwLock = vhost_user_backend::VringRwLock<GuestMemoryAtomic<GuestMem>>;
/// struct virtio_net_hdr_v1 (VERSION_1 always has `num_buffers`).
pub(crate) const HDR_LEN: usize = 12;

/// What the stack needs to talk to the backend.
pub(crate) struct Wire {
    /// Written by the stack after it queued frames for the guest.
    pub kick: Arc<EventNotifier>,
}

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

    /// Guest -> stack: every frame the guest queued on the tx ring.
    fn drain_tx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut frames = Vec::new();
        {
            let mut st = vring.get_mut();
            loop {
                if self.event_idx {
                    st.disable_notification().map_err(io::Error::other)?;
                }
                while let Some(chain) = st.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                    let head = chain.head_index();
                    match read_tx_frame(&mem, chain) {
                        Some(f) => frames.push(f),
                        None => {
                            self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    st.add_used(head, 0).map_err(io::Error::other)?;
                }
                if !self.event_idx || !st.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
            if st.needs_notification().map_err(io::Error::other)? {
                st.signal_used_queue()?;
            }
        }
        // Outside the ring lock: this waits while the stack's queue is full (the stack
        // always drains it, so this cannot deadlock with frames going the other way).
        if let Some(tx) = &self.frames {
            for f in frames {
                if tx.blocking_send(Ok(f)).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Stack -> guest: as many waiting frames as the guest has receive buffers for.
    fn fill_rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut st = vring.get_mut();
        if !st.is_enabled() {
            return Ok(());
        }
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let flags = if self.has(VIRTIO_NET_F_GUEST_CSUM) {
            VIRTIO_NET_HDR_F_DATA_VALID as u8
        } else {
            0
        };
        let mut delivered = false;
        let mut took = false;
        loop {
            let frame = match self.stash.take() {
                Some(f) => f,
                None => match self.out.try_recv() {
                    Ok(f) => {
                        took = true;
                        f
                    }
                    Err(_) => break,
                },
            };
            match write_rx_frame(&mut st, &mem, &frame, flags, mrg)? {
                RxOutcome::Written(used) => {
                    for (head, len) in used {
                        st.add_used(head, len).map_err(io::Error::other)?;
                    }
                    delivered = true;
                    self.shared
                        .rx_bytes
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
                RxOutcome::NoRoom => {
                    self.stash = Some(frame);
                    // Ask for a kick when the guest posts buffers; if some arrived
                    // meanwhile, go on.
                    if self.event_idx && st.enable_notification().map_err(io::Error::other)? {
                        continue;
                    }
                    break;
                }
                RxOutcome::BadBuffers(used) => {
                    for (head, _) in used {
                        st.add_used(head, 0).map_err(io::Error::other)?;
                    }
                    self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if delivered && st.needs_notification().map_err(io::Error::other)? {
            st.signal_used_queue()?;
        }
        drop(st);
        if took && self.shared.tx_blocked.swap(false, Ordering::Relaxed) {
            let _ = self.ev.try_send(Event::TxReady);
        }
        Ok(())
    }
}

/// Read one tx descriptor chain: header, then the frame. `None` for a chain that is not a
/// well-formed frame we accept.
fn read_tx_frame<M>(mem: &M, chain: virtio_queue::DescriptorChain<M>) -> Option<Vec<u8>>
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory + Sized,
{
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
    /// Not enough receive buffers now (nothing consumed).
    NoRoom,
    /// The guest's buffers were unusable: the chains to return empty; frame dropped.
    BadBuffers(Vec<(u16, u32)>),
}

fn write_rx_frame(
    st: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMem>>,
    mem: &vm_memory::GuestMemoryLoadGuard<GuestMem>,
    frame: &[u8],
    flags: u8,
    mrg: bool,
) -> io::Result<RxOutcome> {
    let q = st.get_queue_mut();
    let start = q.next_avail();
    let mut used: Vec<(u16, u32)> = Vec::new();
    let mut hdr_writer = None;
    let mut rest = frame;
    loop {
        let Some(chain) = q.pop_descriptor_chain(mem.clone()) else {
            q.set_next_avail(start);
            return Ok(RxOutcome::NoRoom);
        };
        let head = chain.head_index();
        let Ok(mut w) = chain.writer(&**mem) else {
            used.push((head, 0));
            return Ok(RxOutcome::BadBuffers(used));
        };
        let mut written = 0usize;
        if hdr_writer.is_none() {
            // The header goes at the start of the first buffer; its num_buffers is known
            // only at the end.
            if w.available_bytes() < HDR_LEN {
                used.push((head, 0));
                return Ok(RxOutcome::BadBuffers(used));
            }
            let Ok(body) = w.split_at(HDR_LEN) else {
                used.push((head, 0));
                return Ok(RxOutcome::BadBuffers(used));
            };
            hdr_writer = Some(w);
            w = body;
            written = HDR_LEN;
        }
        let n = rest.len().min(w.available_bytes());
        if w.write_all(&rest[..n]).is_err() {
            used.push((head, 0));
            return Ok(RxOutcome::BadBuffers(used));
        }
        rest = &rest[n..];
        used.push((head, (written + n) as u32));
        if rest.is_empty() {
            break;
        }
        if !mrg || used.len() >= u16::MAX as usize {
            // Without mergeable buffers a frame must fit one chain.
            return Ok(RxOutcome::BadBuffers(used));
        }
    }
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = flags;
    hdr[1] = VIRTIO_NET_HDR_GSO_NONE as u8;
    hdr[10..12].copy_from_slice(&(used.len() as u16).to_le_bytes());
    if let Some(mut w) = hdr_writer {
        if w.write_all(&hdr).is_err() {
            return Ok(RxOutcome::BadBuffers(used));
        }
    }
    Ok(RxOutcome::Written(used))
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
        match device_event {
            TX_QUEUE => {
                self.drain_tx(tx)?;
                // The stack may have answered already (ACKs): deliver without waiting.
                self.fill_rx(rx)
            }
            RX_QUEUE => self.fill_rx(rx),
            STACK_KICK => {
                let _ = self.kick.consume();
                self.fill_rx(rx)
            }
            _ => Ok(()),
        }
    }
}

/// Start the backend on `listener`: QEMU connects to it, and the backend serves until
/// QEMU disconnects, then closes `frames` (the stack then ends as with a closed stream).
pub(crate) fn start(
    listener: VhostListener,
    frames: mpsc::Sender<Result<Vec<u8>, NetError>>,
    out: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    ev: mpsc::Sender<Event>,
) -> Result<Wire, NetError> {
    let flags = EventFlag::NONBLOCK | EventFlag::CLOEXEC;
    let (kick_rx, kick_tx) = new_event_consumer_and_notifier(flags)?;
    let exit = new_event_consumer_and_notifier(flags)?;
    let kick_fd = kick_rx.as_raw_fd();
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
    Ok(Wire {
        kick: Arc::new(kick_tx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let vring = VringRwLock::new(atomic.clone(), 16).unwrap();
        vring.set_queue_size(16);
        (atomic, vring)
    }

    fn attach(vring: &VringRwLock, q: &virtio_queue::mock::MockSplitQueue<GuestMem>) {
        vring
            .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
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
        let RxOutcome::Written(used) = write_rx_frame(&mut st, &mem, &frame, 2, true).unwrap()
        else {
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

        // No buffers left: nothing is consumed, and the frame can be retried later.
        let before = st.get_queue().next_avail();
        assert!(matches!(
            write_rx_frame(&mut st, &mem, &frame, 0, true).unwrap(),
            RxOutcome::NoRoom
        ));
        assert_eq!(st.get_queue().next_avail(), before);
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
        let out = write_rx_frame(&mut st, &mem, &[7u8; 1500], 0, false).unwrap();
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
        let out = write_rx_frame(&mut st, &mem, &[7u8; 100], 0, true).unwrap();
        assert!(matches!(out, RxOutcome::BadBuffers(ref u) if u == &vec![(0, 0)]));
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
