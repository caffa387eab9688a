//! Multiplexes client connections (agent.sock) onto the one guest channel.
//!
//! Clients pick their own request ids; the relay maps each to a fresh id on the guest
//! channel and back, so sessions of different clients never collide. Frames from the
//! guest are decoded and checked before anything is forwarded: the guest is untrusted.

use msb_contract::ErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msb_protocol::{
    check_version, decode_raw, set_raw_id, Frame, FrameError, FrameReader, GuestStats, Message,
    MetricsReport, CHANNEL_ID, FLAG_CONTROL, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cpu::CpuSampler;

/// What clients and watchers ask the main loop to do.
#[derive(Debug)]
pub enum Control {
    Stop(Duration),
    Kill,
    /// Refuse new execs, stop once the running ones finished. Answered once recorded.
    Drain(oneshot::Sender<()>),
    /// Stop watching the creating process. Answered once done, so the creator may then
    /// close its end of the attach pipe without that reading as "creator went away".
    Detach(oneshot::Sender<()>),
    /// The attach pipe reached EOF (ignored once detached).
    CreatorGone,
    /// The guest broke the protocol: end the sandbox.
    Protocol(String),
    /// A secret's block-and-terminate violation: kill the VM at once.
    SecretViolation,
    /// Count as activity (the idle clock restarts); answered with the activity sequence.
    Touch(oneshot::Sender<u64>),
    /// Stop the vCPUs (QMP `stop`); answered once paused, or with why not.
    Pause(oneshot::Sender<Result<(), String>>),
    /// Let a paused VM run again (QMP `cont`).
    Resume(oneshot::Sender<Result<(), String>>),
    /// Save the running VM for a fork into this directory (supervise.rs, `fork_into`).
    Fork(std::path::PathBuf, oneshot::Sender<Result<(), String>>),
}

const CLIENT_QUEUE: usize = 256;

/// Bytes asked of the guest channel per read.
pub const GUEST_READ_SIZE: usize = 128 * 1024;
/// Bytes asked of a client connection per read.
const CLIENT_READ_SIZE: usize = 64 * 1024;

/// The routing table: which guest id belongs to which client's session, and where the
/// answers of the runtime's own requests go. Pure bookkeeping (no I/O), so that it can be
/// tested on its own; [`Relay`] holds it under a lock.
#[derive(Default)]
struct Routes {
    next_guest_id: u32,
    next_client: u64,
    /// guest id -> (client, client's id)
    sessions: HashMap<u32, (u64, u32)>,
    clients: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    /// Runtime-owned requests to the guest (metrics), by guest id.
    pending: HashMap<u32, oneshot::Sender<GuestStats>>,
    /// In a fork: ids below this are the parent's sessions; what the guest still sends on
    /// them (output already on its way at the fork) is dropped, not a protocol error.
    forgotten_below: u32,
}

/// What to do with one frame from the guest.
enum GuestRoute {
    /// Nothing to forward: a channel message, credit that crossed the end of its session,
    /// or output of a client that went away.
    Nothing,
    /// An error the guest reported on the channel: for the log.
    Log(String),
    /// The answer to a runtime-owned metrics request.
    Stats(oneshot::Sender<GuestStats>, GuestStats),
    /// To a client, the frame already carrying the client's own request id.
    Client(mpsc::Sender<Vec<u8>>, Vec<u8>),
}

impl Routes {
    #[cfg(test)]
    fn new() -> Routes {
        Routes::starting_at(1)
    }

    /// The routes of a fork: guest ids start at `first_id`, lower ones are forgotten.
    fn starting_at(first_id: u32) -> Routes {
        Routes {
            next_guest_id: first_id.max(1),
            forgotten_below: first_id,
            ..Default::default()
        }
    }

    fn fresh_id(&mut self) -> u32 {
        let mut id = self.next_guest_id;
        while id == CHANNEL_ID || self.sessions.contains_key(&id) || self.pending.contains_key(&id)
        {
            id = id.wrapping_add(1);
        }
        self.next_guest_id = id.wrapping_add(1);
        id
    }

    /// Exec and fs sessions in flight.
    fn active(&self) -> usize {
        self.sessions.len()
    }

    fn add_client(&mut self, tx: mpsc::Sender<Vec<u8>>) -> u64 {
        self.next_client += 1;
        let id = self.next_client;
        self.clients.insert(id, tx);
        id
    }

    /// Forget a client; output of its sessions still running is dropped from now on.
    fn remove_client(&mut self, client: u64) {
        self.clients.remove(&client);
    }

    /// A new session of `client` under its id `local`: the fresh guest id it gets, or
    /// None when the client already uses that id (or it is the channel's).
    fn open_session(&mut self, client: u64, local: u32) -> Option<u32> {
        if local == CHANNEL_ID || self.guest_id(client, local).is_some() {
            return None;
        }
        let id = self.fresh_id();
        self.sessions.insert(id, (client, local));
        Some(id)
    }

    /// The guest id of `client`'s session `local`, if it is still open.
    fn guest_id(&self, client: u64, local: u32) -> Option<u32> {
        self.sessions
            .iter()
            .find(|(_, &(c, l))| c == client && l == local)
            .map(|(&g, _)| g)
    }

    /// A runtime-owned request: the guest id its answer will come on.
    fn add_pending(&mut self, tx: oneshot::Sender<GuestStats>) -> u32 {
        let id = self.fresh_id();
        self.pending.insert(id, tx);
        id
    }

    fn cancel_pending(&mut self, id: u32) {
        self.pending.remove(&id);
    }

    /// Check one frame from the guest (untrusted) and say where it goes; an `Err` is a
    /// protocol violation that ends the sandbox.
    fn route_guest_frame(&mut self, mut raw: Vec<u8>) -> Result<GuestRoute, String> {
        let frame = decode_raw(&raw).map_err(|e| format!("bad frame from guest: {e}"))?;
        if frame.flags != 0 || !frame.message.allowed_from_guest() {
            return Err(format!(
                "guest sent a message it may not send: {:?}",
                frame.message.kind_name()
            ));
        }
        if frame.id == CHANNEL_ID {
            return match frame.message {
                Message::Error { code, message } => {
                    Ok(GuestRoute::Log(format!("guest error {code}: {message}")))
                }
                Message::Hello { .. } => Ok(GuestRoute::Nothing),
                other => Err(format!(
                    "unexpected channel message from guest: {:?}",
                    other.kind_name()
                )),
            };
        }
        if frame.id < self.forgotten_below
            && !self.sessions.contains_key(&frame.id)
            && !self.pending.contains_key(&frame.id)
        {
            return Ok(GuestRoute::Nothing);
        }
        if let Message::GuestStats(stats) = frame.message {
            return match self.pending.remove(&frame.id) {
                Some(tx) => Ok(GuestRoute::Stats(tx, stats)),
                None => Err(format!(
                    "guest sent metrics for unknown request id {}",
                    frame.id
                )),
            };
        }
        let Some(&(client, local)) = self.sessions.get(&frame.id) else {
            // Credit for stdin may cross the end of its session; anything else on an
            // unknown id is a protocol violation.
            if matches!(frame.message, Message::Credit { .. }) {
                return Ok(GuestRoute::Nothing);
            }
            return Err(format!("guest used unknown request id {}", frame.id));
        };
        if frame.message.ends_session() {
            self.sessions.remove(&frame.id);
        }
        Ok(match self.clients.get(&client) {
            Some(tx) => {
                set_raw_id(&mut raw, local);
                GuestRoute::Client(tx.clone(), raw)
            }
            None => GuestRoute::Nothing,
        })
    }
}

/// What metrics need besides the guest's own figures.
#[derive(Clone)]
pub struct MetricsSource {
    /// The network stack: its counters are the host's own (trusted) view of the traffic.
    pub net: Option<msb_netstack::NetStack>,
    pub cpu: CpuSampler,
    pub memory_limit_bytes: u64,
    pub started: Instant,
}

#[derive(Clone)]
pub struct Relay {
    routes: Arc<Mutex<Routes>>,
    to_guest: mpsc::Sender<Vec<u8>>,
    control: mpsc::Sender<Control>,
    draining: Arc<AtomicBool>,
    /// The VM is paused: new commands, file operations, pings and metrics are refused.
    paused: Arc<AtomicBool>,
    /// Number of exec sessions in flight.
    active: Arc<watch::Sender<usize>>,
    metrics: Arc<Mutex<Option<MetricsSource>>>,
    /// Records the execs' output in exec.log (crate::exec_log), once set.
    exec_log: Arc<std::sync::OnceLock<crate::exec_log::ExecLog>>,
}

fn log(msg: &str) {
    eprintln!("msb-runtime: {msg}");
}

impl Relay {
    /// Start the guest writer and reader; `guest_rd` must be past the handshake (it keeps
    /// whatever the guest sent after it).
    #[cfg(test)]
    pub fn start(
        guest_rd: FrameReader<OwnedReadHalf>,
        guest_wr: OwnedWriteHalf,
        control: mpsc::Sender<Control>,
    ) -> Relay {
        Relay::start_from(guest_rd, guest_wr, control, 1)
    }

    /// Start the guest writer and reader, handing out guest ids from `first_id` on: 1, or
    /// in a fork the first id above its parent's (lower ones are dropped, see
    /// `Routes::forgotten_below`). `guest_rd` must be past the handshake.
    pub fn start_from(
        guest_rd: FrameReader<OwnedReadHalf>,
        mut guest_wr: OwnedWriteHalf,
        control: mpsc::Sender<Control>,
        first_id: u32,
    ) -> Relay {
        let (to_guest, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
        tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if guest_wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let relay = Relay {
            routes: Arc::new(Mutex::new(Routes::starting_at(first_id))),
            to_guest,
            control,
            draining: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(AtomicBool::new(false)),
            active: Arc::new(watch::channel(0).0),
            metrics: Arc::new(Mutex::new(None)),
            exec_log: Arc::default(),
        };
        let r = relay.clone();
        tokio::spawn(async move { r.guest_reader(guest_rd).await });
        relay
    }

    pub fn set_metrics_source(&self, m: MetricsSource) {
        *self.metrics.lock().unwrap() = Some(m);
    }

    /// Record the execs' output from now on (set once, before clients are served).
    pub fn set_exec_log(&self, log: crate::exec_log::ExecLog) {
        let _ = self.exec_log.set(log);
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// The next guest id the relay would hand out (a fork's children start above it).
    pub fn next_guest_id(&self) -> u32 {
        self.routes.lock().unwrap().next_guest_id
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Watch the number of exec sessions in flight.
    pub fn active_sessions(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    /// Work on the routing table; watchers of the session count hear of it when it changed.
    fn routes<T>(&self, f: impl FnOnce(&mut Routes) -> T) -> T {
        let mut r = self.routes.lock().unwrap();
        let before = r.active();
        let out = f(&mut r);
        if r.active() != before {
            self.active.send_replace(r.active());
        }
        out
    }

    /// Ask the guest for its figures and add the host's.
    async fn metrics_report(&self) -> Result<MetricsReport, String> {
        let source = self
            .metrics
            .lock()
            .unwrap()
            .clone()
            .ok_or("metrics are not available yet")?;
        let (tx, rx) = oneshot::channel();
        let id = self.routes(|r| r.add_pending(tx));
        self.send_to_guest(&Frame::new(id, Message::Metrics)).await;
        let guest = match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(g)) => g,
            _ => {
                self.routes(|r| r.cancel_pending(id));
                return Err("the guest did not answer the metrics request".into());
            }
        };
        let limit = source.memory_limit_bytes;
        Ok(MetricsReport {
            cpu_percent: source.cpu.percent(),
            // The guest's numbers are untrusted: keep them within what is possible.
            memory_bytes: guest
                .mem_total_bytes
                .saturating_sub(guest.mem_available_bytes)
                .min(limit),
            memory_limit_bytes: limit,
            disk_read_bytes: guest.disk_read_bytes,
            disk_write_bytes: guest.disk_write_bytes,
            net_rx_bytes: source
                .net
                .as_ref()
                .map(|n| n.counters().rx_bytes)
                .unwrap_or(0),
            net_tx_bytes: source
                .net
                .as_ref()
                .map(|n| n.counters().tx_bytes)
                .unwrap_or(0),
            timestamp_ms: crate::unix_ms_now(),
            uptime_ms: source.started.elapsed().as_millis() as u64,
        })
    }

    /// One round trip to the guest agent (it answers a metrics request), for `Ping`.
    async fn ping_guest(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let id = self.routes(|r| r.add_pending(tx));
        self.send_to_guest(&Frame::new(id, Message::Metrics)).await;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.routes(|r| r.cancel_pending(id));
                Err("the guest agent did not answer within 5 s".into())
            }
        }
    }

    pub async fn send_to_guest(&self, frame: &Frame) {
        if let Ok(buf) = frame.encode() {
            let _ = self.to_guest.send(buf).await;
        }
    }

    async fn guest_reader(self, mut rd: FrameReader<OwnedReadHalf>) {
        loop {
            let raw = match rd.next_raw().await {
                Ok(Some(raw)) => raw,
                // The VM is going away; the main loop sees QEMU exit.
                Ok(None) | Err(FrameError::Io(_) | FrameError::Truncated) => return,
                Err(e) => {
                    return self
                        .protocol_error(format!("bad frame from guest: {e}"))
                        .await
                }
            };
            if let Err(e) = self.route_guest_frame(raw).await {
                return self.protocol_error(e).await;
            }
        }
    }

    async fn protocol_error(&self, msg: String) {
        log(&msg);
        let _ = self.control.send(Control::Protocol(msg)).await;
    }

    async fn route_guest_frame(&self, raw: Vec<u8>) -> Result<(), String> {
        if let Some(l) = self.exec_log.get() {
            l.guest_frame(&raw);
        }
        match self.routes(|r| r.route_guest_frame(raw))? {
            GuestRoute::Nothing => {}
            GuestRoute::Log(msg) => log(&msg),
            GuestRoute::Stats(tx, stats) => {
                let _ = tx.send(stats);
            }
            // A full client queue waits here: backpressure reaches the guest.
            GuestRoute::Client(tx, raw) => {
                let _ = tx.send(raw).await;
            }
        }
        Ok(())
    }

    pub fn serve(&self, listener: UnixListener) {
        let relay = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let r = relay.clone();
                tokio::spawn(async move { r.client(stream).await });
            }
        });
    }

    async fn client(self, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
        let client_id = self.routes(|r| r.add_client(tx.clone()));
        tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let mut rd = FrameReader::with_capacity(rd, CLIENT_READ_SIZE);
        let mut greeted = false;
        loop {
            let frame = match rd.next_frame().await {
                Ok(Some(f)) => f,
                // Gone, or gone in the middle of a frame: nobody to answer.
                Ok(None) | Err(FrameError::Io(_) | FrameError::Truncated) => break,
                Err(e) => {
                    let _ = reply(&tx, CHANNEL_ID, error(ErrorCode::Protocol, e.to_string())).await;
                    break;
                }
            };
            if !frame.message.allowed_from_client() {
                let _ = reply(
                    &tx,
                    frame.id,
                    error(ErrorCode::Protocol, "message not allowed from a client"),
                )
                .await;
                break;
            }
            match frame.message {
                Message::Hello { version } => {
                    // Versions must match exactly (see msb_protocol::check_version): a
                    // client of another build gets an error and stays ungreeted.
                    let check = check_version(version);
                    greeted = check.is_ok();
                    let msg = match check {
                        Ok(()) => Message::Hello {
                            version: PROTOCOL_VERSION,
                        },
                        Err(message) => error(ErrorCode::Protocol, message),
                    };
                    let _ = reply(&tx, CHANNEL_ID, msg).await;
                }
                _ if !greeted => {
                    let _ = reply(&tx, CHANNEL_ID, error(ErrorCode::Protocol, "hello first")).await;
                    break;
                }
                Message::Stop { timeout_ms } if frame.flags & FLAG_CONTROL != 0 => {
                    let _ = self
                        .control
                        .send(Control::Stop(Duration::from_millis(timeout_ms)))
                        .await;
                }
                Message::Kill if frame.flags & FLAG_CONTROL != 0 => {
                    let _ = self.control.send(Control::Kill).await;
                }
                Message::Drain if frame.flags & FLAG_CONTROL != 0 => {
                    self.set_draining();
                    let (done_tx, done_rx) = oneshot::channel();
                    let _ = self.control.send(Control::Drain(done_tx)).await;
                    let _ = done_rx.await;
                    let _ = reply(&tx, frame.id, Message::Done).await;
                }
                Message::Detach if frame.flags & FLAG_CONTROL != 0 => {
                    let (done_tx, done_rx) = oneshot::channel();
                    let _ = self.control.send(Control::Detach(done_tx)).await;
                    let _ = done_rx.await;
                    let _ = reply(&tx, frame.id, Message::Done).await;
                }
                m @ (Message::Pause | Message::Resume | Message::Fork { .. })
                    if frame.flags & FLAG_CONTROL != 0 =>
                {
                    let (done_tx, done_rx) = oneshot::channel();
                    let ctl = match m {
                        Message::Pause => Control::Pause(done_tx),
                        Message::Resume => Control::Resume(done_tx),
                        Message::Fork { dir } => Control::Fork(dir.into(), done_tx),
                        _ => unreachable!("matched above"),
                    };
                    let _ = self.control.send(ctl).await;
                    let msg = match done_rx.await {
                        Ok(Ok(())) => Message::Done,
                        Ok(Err(e)) => error(ErrorCode::Runtime, e),
                        Err(_) => error(ErrorCode::SandboxNotRunning, "the sandbox is stopping"),
                    };
                    let _ = reply(&tx, frame.id, msg).await;
                }
                Message::Exec(_) | Message::Fs(_) | Message::Ping | Message::Metrics
                    if self.paused.load(Ordering::SeqCst) =>
                {
                    let msg = error(
                        ErrorCode::SandboxPaused,
                        "the sandbox is paused: resume() it first",
                    );
                    let _ = reply(&tx, frame.id, msg).await;
                }
                Message::Metrics if frame.flags & FLAG_CONTROL != 0 => {
                    let (relay, tx, id) = (self.clone(), tx.clone(), frame.id);
                    tokio::spawn(async move {
                        let msg = match relay.metrics_report().await {
                            Ok(m) => Message::MetricsReport(m),
                            Err(e) => error(ErrorCode::Runtime, e),
                        };
                        let _ = reply(&tx, id, msg).await;
                    });
                }
                Message::Ping if frame.flags & FLAG_CONTROL != 0 => {
                    let (relay, tx, id) = (self.clone(), tx.clone(), frame.id);
                    tokio::spawn(async move {
                        let msg = match relay.ping_guest().await {
                            Ok(()) => Message::Done,
                            Err(e) => error(ErrorCode::Runtime, e),
                        };
                        let _ = reply(&tx, id, msg).await;
                    });
                }
                Message::Touch if frame.flags & FLAG_CONTROL != 0 => {
                    let (seq_tx, seq_rx) = oneshot::channel();
                    let _ = self.control.send(Control::Touch(seq_tx)).await;
                    let msg = match seq_rx.await {
                        Ok(activity_seq) => Message::Touched { activity_seq },
                        Err(_) => error(ErrorCode::SandboxNotRunning, "the sandbox is stopping"),
                    };
                    let _ = reply(&tx, frame.id, msg).await;
                }
                Message::Exec(_) if self.draining.load(Ordering::SeqCst) => {
                    let msg = error(
                        ErrorCode::SandboxDraining,
                        "the sandbox is draining: it accepts no new commands",
                    );
                    let _ = reply(&tx, frame.id, msg).await;
                }
                msg @ (Message::Exec(_) | Message::Fs(_)) => {
                    let guest_id = self.routes(|r| r.open_session(client_id, frame.id));
                    match guest_id {
                        Some(gid) => {
                            if let (Some(l), Message::Exec(req)) = (self.exec_log.get(), &msg) {
                                l.exec_started(gid, req);
                            }
                            self.send_to_guest(&Frame::new(gid, msg)).await
                        }
                        None => {
                            let _ = reply(
                                &tx,
                                frame.id,
                                error(ErrorCode::Protocol, "request id in use"),
                            )
                            .await;
                        }
                    }
                }
                msg if msg.is_session_input() => {
                    // Stdin, signals, resizes and credit for one of this client's sessions.
                    let gid = self.routes(|r| r.guest_id(client_id, frame.id));
                    // A session that just ended is not an error: input may cross its end.
                    if let Some(gid) = gid {
                        self.send_to_guest(&Frame::new(gid, msg)).await;
                    }
                }
                _ => {
                    let _ = reply(
                        &tx,
                        frame.id,
                        error(
                            ErrorCode::Protocol,
                            "control messages need the control flag",
                        ),
                    )
                    .await;
                }
            }
        }
        // Forget the client; output of its sessions still running is dropped.
        self.routes(|r| r.remove_client(client_id));
    }
}

/// An error frame's message (the code is the contract's).
fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        code: code.as_str().into(),
        message: message.into(),
    }
}

async fn reply(tx: &mpsc::Sender<Vec<u8>>, id: u32, msg: Message) -> Result<(), ()> {
    let buf = Frame::new(id, msg).encode().map_err(|_| ())?;
    tx.send(buf).await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use msb_protocol::{ExecRequest, FrameReader};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    use super::*;

    fn raw(id: u32, msg: Message) -> Vec<u8> {
        Frame::new(id, msg).encode().unwrap()
    }

    fn stdout(b: &[u8]) -> Message {
        Message::Stdout(b.to_vec())
    }

    fn exited() -> Message {
        Message::Exited {
            code: Some(0),
            signal: None,
        }
    }

    /// Where a guest frame went: (the client's queue it went to, the frame as delivered).
    fn delivered(route: GuestRoute) -> (mpsc::Sender<Vec<u8>>, Frame) {
        match route {
            GuestRoute::Client(tx, raw) => (tx, decode_raw(&raw).unwrap()),
            _ => panic!("not delivered to a client"),
        }
    }

    #[test]
    fn client_ids_are_rewritten_to_guest_ids_and_back() {
        let mut r = Routes::new();
        let (tx, _rx) = mpsc::channel(4);
        let a = r.add_client(tx.clone());
        let gid = r.open_session(a, 7).unwrap();
        assert_ne!(gid, CHANNEL_ID);
        assert_eq!(
            r.guest_id(a, 7),
            Some(gid),
            "input of the session goes to {gid}"
        );
        assert_eq!(r.active(), 1);

        let (to, f) = delivered(r.route_guest_frame(raw(gid, stdout(b"hi"))).unwrap());
        assert!(to.same_channel(&tx));
        assert_eq!(
            f,
            Frame::new(7, stdout(b"hi")),
            "back under the client's own id"
        );

        // The last message of a session is delivered and closes it.
        let (_, f) = delivered(r.route_guest_frame(raw(gid, exited())).unwrap());
        assert_eq!(f, Frame::new(7, exited()));
        assert_eq!(r.active(), 0);
        assert_eq!(r.guest_id(a, 7), None);
        // The guest may not use the id any more, but credit may cross the end.
        assert!(r.route_guest_frame(raw(gid, stdout(b"late"))).is_err());
        assert!(matches!(
            r.route_guest_frame(raw(gid, Message::Credit { bytes: 1 })),
            Ok(GuestRoute::Nothing)
        ));
        // The client may use its id again; it gets a new guest id.
        let again = r.open_session(a, 7).unwrap();
        assert_ne!(again, gid);
    }

    #[test]
    fn a_fork_drops_its_parents_sessions_and_starts_above_them() {
        let mut r = Routes::starting_at(65_536);
        let (tx, _rx) = mpsc::channel(4);
        let a = r.add_client(tx.clone());
        // Output of a parent's session, on its way at the fork: dropped.
        assert!(matches!(
            r.route_guest_frame(raw(7, stdout(b"parent's"))),
            Ok(GuestRoute::Nothing)
        ));
        let gid = r.open_session(a, 7).unwrap();
        assert_eq!(gid, 65_536);
        let (to, f) = delivered(r.route_guest_frame(raw(gid, stdout(b"mine"))).unwrap());
        assert!(to.same_channel(&tx));
        assert_eq!(f, Frame::new(7, stdout(b"mine")));
        // Above the fork's first id an unknown id is still a violation.
        assert!(r.route_guest_frame(raw(70_000, stdout(b"x"))).is_err());
    }

    #[test]
    fn two_clients_with_the_same_session_id_are_kept_apart() {
        let mut r = Routes::new();
        let (tx_a, _ra) = mpsc::channel(4);
        let (tx_b, _rb) = mpsc::channel(4);
        let a = r.add_client(tx_a.clone());
        let b = r.add_client(tx_b.clone());
        let ga = r.open_session(a, 1).unwrap();
        let gb = r.open_session(b, 1).unwrap();
        assert_ne!(ga, gb);
        assert_eq!(r.open_session(a, 1), None, "an id in use is refused");
        assert_eq!(
            r.open_session(a, CHANNEL_ID),
            None,
            "the channel id is not a session"
        );

        let (to, f) = delivered(r.route_guest_frame(raw(gb, stdout(b"b"))).unwrap());
        assert!(to.same_channel(&tx_b));
        assert_eq!(f.id, 1);
        let (to, f) = delivered(r.route_guest_frame(raw(ga, stdout(b"a"))).unwrap());
        assert!(to.same_channel(&tx_a));
        assert_eq!(f, Frame::new(1, stdout(b"a")));
        // One ending leaves the other open.
        delivered(r.route_guest_frame(raw(ga, exited())).unwrap());
        assert_eq!((r.guest_id(a, 1), r.guest_id(b, 1)), (None, Some(gb)));
    }

    #[test]
    fn output_for_a_forgotten_client_is_dropped() {
        let mut r = Routes::new();
        let (tx, _rx) = mpsc::channel(4);
        let a = r.add_client(tx);
        let gid = r.open_session(a, 3).unwrap();
        r.remove_client(a);
        assert!(matches!(
            r.route_guest_frame(raw(gid, stdout(b"x"))),
            Ok(GuestRoute::Nothing)
        ));
        // The session still ends when the guest says so (the drain count goes down).
        assert_eq!(r.active(), 1);
        assert!(matches!(
            r.route_guest_frame(raw(gid, exited())),
            Ok(GuestRoute::Nothing)
        ));
        assert_eq!(r.active(), 0);
    }

    #[test]
    fn guest_frames_it_may_not_send_are_refused() {
        let mut r = Routes::new();
        let (tx, _rx) = mpsc::channel(4);
        let a = r.add_client(tx);
        let gid = r.open_session(a, 1).unwrap();
        let err = |r: &mut Routes, raw: Vec<u8>| match r.route_guest_frame(raw) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            err(&mut r, raw(gid, Message::Exec(ExecRequest::default()))),
            "guest sent a message it may not send: \"Exec\""
        );
        assert_eq!(
            err(&mut r, raw(gid, Message::Kill)),
            "guest sent a message it may not send: \"Kill\""
        );
        // The control flag is the host's.
        let flagged = Frame::control(gid, stdout(b"x")).encode().unwrap();
        assert!(err(&mut r, flagged).contains("may not send"));
        assert_eq!(
            err(&mut r, raw(99, stdout(b"x"))),
            "guest used unknown request id 99"
        );
        assert_eq!(
            err(&mut r, raw(99, Message::GuestStats(GuestStats::default()))),
            "guest sent metrics for unknown request id 99"
        );
        assert!(err(&mut r, vec![0, 0, 0, 5, 0, 0, 0, 1, 0]).starts_with("bad frame from guest"));
        // Channel messages: hello is fine, an error is logged, anything else is refused.
        assert!(matches!(
            r.route_guest_frame(raw(CHANNEL_ID, Message::Hello { version: 1 })),
            Ok(GuestRoute::Nothing)
        ));
        let e = Message::Error {
            code: "x".into(),
            message: "y".into(),
        };
        assert!(matches!(
            r.route_guest_frame(raw(CHANNEL_ID, e)),
            Ok(GuestRoute::Log(m)) if m == "guest error x: y"
        ));
        assert_eq!(
            err(&mut r, raw(CHANNEL_ID, Message::Ready)),
            "unexpected channel message from guest: \"Ready\""
        );
        // None of it touched the session.
        assert_eq!(r.guest_id(a, 1), Some(gid));
    }

    #[test]
    fn metrics_answers_go_to_their_waiter_and_ids_skip_the_channel() {
        let mut r = Routes::new();
        let (tx, _rx) = mpsc::channel(4);
        let a = r.add_client(tx);
        r.next_guest_id = u32::MAX;
        let g1 = r.open_session(a, 1).unwrap();
        let (w, mut answer) = oneshot::channel();
        let p = r.add_pending(w);
        assert_eq!((g1, p), (u32::MAX, 1), "wraps past the channel id");
        assert_ne!(r.open_session(a, 2), Some(p), "a pending id is not reused");
        let stats = GuestStats {
            mem_total_bytes: 10,
            ..Default::default()
        };
        match r
            .route_guest_frame(raw(p, Message::GuestStats(stats)))
            .unwrap()
        {
            GuestRoute::Stats(w, s) => w.send(s).unwrap(),
            _ => panic!("not routed to the waiter"),
        }
        assert_eq!(answer.try_recv().unwrap().mem_total_bytes, 10);
        // Answered once: a second answer is a violation, as is one after a cancel.
        assert!(r
            .route_guest_frame(raw(p, Message::GuestStats(GuestStats::default())))
            .is_err());
        let (w, _) = oneshot::channel();
        let p = r.add_pending(w);
        r.cancel_pending(p);
        assert!(r
            .route_guest_frame(raw(p, Message::GuestStats(GuestStats::default())))
            .is_err());
    }

    /// A relay on socket pairs: the test plays the guest and the clients.
    struct Rig {
        relay: Relay,
        guest_rd: FrameReader<tokio::net::unix::OwnedReadHalf>,
        guest_wr: tokio::net::unix::OwnedWriteHalf,
        ctl: mpsc::Receiver<Control>,
    }

    impl Rig {
        fn new() -> Rig {
            let (ours, guest) = UnixStream::pair().unwrap();
            let (rd, wr) = ours.into_split();
            let (ctl_tx, ctl) = mpsc::channel(16);
            let relay = Relay::start(FrameReader::new(rd), wr, ctl_tx);
            let (grd, guest_wr) = guest.into_split();
            Rig {
                relay,
                guest_rd: FrameReader::new(grd),
                guest_wr,
                ctl,
            }
        }

        /// A client connection, not greeted yet.
        fn connect(&self) -> Client {
            let (ours, theirs) = UnixStream::pair().unwrap();
            tokio::spawn(self.relay.clone().client(ours));
            let (rd, wr) = theirs.into_split();
            Client {
                rd: FrameReader::new(rd),
                wr,
            }
        }

        /// A client connection, greeted.
        async fn client(&self) -> Client {
            let mut c = self.connect();
            c.send(Frame::new(
                CHANNEL_ID,
                Message::Hello {
                    version: PROTOCOL_VERSION,
                },
            ))
            .await;
            assert_eq!(
                c.recv().await.message,
                Message::Hello {
                    version: PROTOCOL_VERSION
                }
            );
            c
        }

        async fn guest_sent(&mut self) -> Frame {
            self.guest_rd.next_frame().await.unwrap().unwrap()
        }

        async fn guest_sends(&mut self, id: u32, msg: Message) {
            self.guest_wr.write_all(&raw(id, msg)).await.unwrap();
        }
    }

    struct Client {
        rd: FrameReader<tokio::net::unix::OwnedReadHalf>,
        wr: tokio::net::unix::OwnedWriteHalf,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            self.wr.write_all(&f.encode().unwrap()).await.unwrap();
        }
        async fn recv(&mut self) -> Frame {
            self.rd.next_frame().await.unwrap().unwrap()
        }
    }

    fn exec() -> Message {
        Message::Exec(ExecRequest {
            cmd: "true".into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn relay_rewrites_ids_between_clients_and_the_guest() {
        let mut rig = Rig::new();
        let mut active = rig.relay.active_sessions();
        let mut a = rig.client().await;
        let mut b = rig.client().await;
        a.send(Frame::new(5, exec())).await;
        let ga = rig.guest_sent().await;
        assert_ne!(ga.id, 5);
        assert_eq!(ga.message, exec());
        b.send(Frame::new(5, exec())).await;
        let gb = rig.guest_sent().await;
        assert_ne!(
            gb.id, ga.id,
            "same client id, different sessions on the guest"
        );
        active.changed().await.unwrap();
        assert_eq!(*active.borrow_and_update(), 2);

        // Input goes to the guest under the guest id.
        a.send(Frame::new(5, Message::Stdin(b"in".to_vec()))).await;
        assert_eq!(
            rig.guest_sent().await,
            Frame::new(ga.id, Message::Stdin(b"in".to_vec()))
        );
        rig.guest_sends(gb.id, stdout(b"to b")).await;
        rig.guest_sends(ga.id, exited()).await;
        assert_eq!(b.recv().await, Frame::new(5, stdout(b"to b")));
        assert_eq!(a.recv().await, Frame::new(5, exited()));
        active.changed().await.unwrap();
        assert_eq!(*active.borrow_and_update(), 1);
    }

    #[tokio::test]
    async fn control_frames_reach_the_main_loop() {
        let mut rig = Rig::new();
        let mut c = rig.client().await;
        c.send(Frame::control(
            CHANNEL_ID,
            Message::Stop { timeout_ms: 1500 },
        ))
        .await;
        assert!(
            matches!(rig.ctl.recv().await, Some(Control::Stop(d)) if d == Duration::from_millis(1500))
        );
        c.send(Frame::control(9, Message::Drain)).await;
        match rig.ctl.recv().await {
            Some(Control::Drain(done)) => done.send(()).unwrap(),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.recv().await, Frame::new(9, Message::Done));
        // Draining: new execs are refused by the runtime, never reach the guest.
        c.send(Frame::new(10, exec())).await;
        match c.recv().await.message {
            Message::Error { code, .. } => assert_eq!(code, "sandboxDraining"),
            other => panic!("{other:?}"),
        }
        // Without the control flag, a control message is an error, not carried out.
        c.send(Frame::new(11, Message::Kill)).await;
        assert_eq!(
            c.recv().await,
            Frame::new(
                11,
                error(
                    ErrorCode::Protocol,
                    "control messages need the control flag"
                )
            )
        );
        c.send(Frame::control(CHANNEL_ID, Message::Kill)).await;
        assert!(matches!(rig.ctl.recv().await, Some(Control::Kill)));
    }

    #[tokio::test]
    async fn ping_goes_to_the_guest_and_touch_to_the_main_loop() {
        let mut rig = Rig::new();
        let mut c = rig.client().await;
        c.send(Frame::control(4, Message::Ping)).await;
        let asked = rig.guest_sent().await;
        assert_eq!(asked.message, Message::Metrics, "a round trip to the guest");
        rig.guest_sends(asked.id, Message::GuestStats(GuestStats::default()))
            .await;
        assert_eq!(c.recv().await, Frame::new(4, Message::Done));

        c.send(Frame::control(5, Message::Touch)).await;
        match rig.ctl.recv().await {
            Some(Control::Touch(seq)) => seq.send(7).unwrap(),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.recv().await,
            Frame::new(5, Message::Touched { activity_seq: 7 })
        );
        // Without the control flag neither is carried out.
        c.send(Frame::new(6, Message::Touch)).await;
        assert!(matches!(c.recv().await.message, Message::Error { .. }));
    }

    #[tokio::test]
    async fn pause_and_resume_go_to_the_main_loop_and_paused_refuses_guest_work() {
        let mut rig = Rig::new();
        let mut c = rig.client().await;
        c.send(Frame::control(4, Message::Pause)).await;
        match rig.ctl.recv().await {
            Some(Control::Pause(done)) => {
                rig.relay.set_paused(true);
                done.send(Ok(())).unwrap()
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.recv().await, Frame::new(4, Message::Done));
        // Paused: commands, file operations, pings and metrics are refused by the
        // runtime at once and never reach the (stopped) guest.
        let fs = Message::Fs(msb_protocol::FsOp::Read { path: "/".into() });
        for (id, m) in [(5, exec()), (6, fs)] {
            c.send(Frame::new(id, m)).await;
            match c.recv().await.message {
                Message::Error { code, .. } => assert_eq!(code, "sandboxPaused"),
                other => panic!("{other:?}"),
            }
        }
        for (id, m) in [(7, Message::Ping), (8, Message::Metrics)] {
            c.send(Frame::control(id, m)).await;
            match c.recv().await.message {
                Message::Error { code, .. } => assert_eq!(code, "sandboxPaused"),
                other => panic!("{other:?}"),
            }
        }
        // A failed resume says why.
        c.send(Frame::control(9, Message::Resume)).await;
        match rig.ctl.recv().await {
            Some(Control::Resume(done)) => done.send(Err("QMP cont: boom".into())).unwrap(),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.recv().await,
            Frame::new(9, error(ErrorCode::Runtime, "QMP cont: boom"))
        );
        // Without the control flag, no pause.
        c.send(Frame::new(10, Message::Pause)).await;
        assert!(matches!(c.recv().await.message, Message::Error { .. }));
    }

    #[tokio::test]
    async fn a_client_says_hello_first() {
        let rig = Rig::new();
        let mut c = rig.connect();
        c.send(Frame::new(1, exec())).await;
        match c.recv().await.message {
            Message::Error { code, message } => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("protocol", "hello first")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            c.rd.next_frame().await.unwrap().is_none(),
            "and is hung up on"
        );
    }

    #[tokio::test]
    async fn a_client_of_another_protocol_version_is_refused() {
        let rig = Rig::new();
        let mut c = rig.connect();
        c.send(Frame::new(
            CHANNEL_ID,
            Message::Hello {
                version: PROTOCOL_VERSION + 1,
            },
        ))
        .await;
        match c.recv().await.message {
            Message::Error { code, message } => {
                assert_eq!(code, "protocol");
                assert!(
                    message.starts_with(&format!(
                        "protocol version mismatch: this side speaks {PROTOCOL_VERSION}, the peer {}",
                        PROTOCOL_VERSION + 1
                    )),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Still not greeted: the first request is refused and the client hung up on.
        c.send(Frame::new(1, exec())).await;
        match c.recv().await.message {
            Message::Error { message, .. } => assert_eq!(message, "hello first"),
            other => panic!("{other:?}"),
        }
        assert!(c.rd.next_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_forbidden_guest_frame_ends_the_sandbox() {
        let mut rig = Rig::new();
        rig.guest_sends(CHANNEL_ID, Message::Shutdown).await;
        match rig.ctl.recv().await {
            Some(Control::Protocol(m)) => {
                assert_eq!(m, "guest sent a message it may not send: \"Shutdown\"")
            }
            other => panic!("{other:?}"),
        }
    }
}
