//! Multiplexes client connections (agent.sock) onto the one guest channel.
//!
//! Clients pick their own request ids; the relay maps each to a fresh id on the guest
//! channel and back, so sessions of different clients never collide. Frames from the
//! guest are decoded and checked before anything is forwarded: the guest is untrusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use msb_protocol::{
    decode_raw, set_raw_id, Frame, FrameDecoder, GuestStats, Message, MetricsReport, CHANNEL_ID,
    FLAG_CONTROL, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
}

const CLIENT_QUEUE: usize = 256;

#[derive(Default)]
struct Routes {
    next_guest_id: u32,
    next_client: u64,
    /// guest id -> (client, client's id)
    sessions: HashMap<u32, (u64, u32)>,
    clients: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    /// Runtime-owned requests to the guest (metrics), by guest id.
    pending: HashMap<u32, oneshot::Sender<GuestStats>>,
}

impl Routes {
    fn fresh_id(&mut self) -> u32 {
        let mut id = self.next_guest_id;
        while id == CHANNEL_ID || self.sessions.contains_key(&id) || self.pending.contains_key(&id)
        {
            id = id.wrapping_add(1);
        }
        self.next_guest_id = id.wrapping_add(1);
        id
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
    /// Number of exec sessions in flight.
    active: Arc<watch::Sender<usize>>,
    metrics: Arc<Mutex<Option<MetricsSource>>>,
}

fn log(msg: &str) {
    eprintln!("msb-runtime: {msg}");
}

impl Relay {
    /// Start the guest writer; `rd` must be past the handshake.
    pub fn start(
        guest_rd: OwnedReadHalf,
        mut guest_wr: OwnedWriteHalf,
        decoder: FrameDecoder,
        control: mpsc::Sender<Control>,
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
            routes: Arc::new(Mutex::new(Routes {
                next_guest_id: 1,
                ..Default::default()
            })),
            to_guest,
            control,
            draining: Arc::new(AtomicBool::new(false)),
            active: Arc::new(watch::channel(0).0),
            metrics: Arc::new(Mutex::new(None)),
        };
        let r = relay.clone();
        tokio::spawn(async move { r.guest_reader(guest_rd, decoder).await });
        relay
    }

    pub fn set_metrics_source(&self, m: MetricsSource) {
        *self.metrics.lock().unwrap() = Some(m);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Watch the number of exec sessions in flight.
    pub fn active_sessions(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    fn count_changed(&self, r: &Routes) {
        self.active.send_replace(r.sessions.len());
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
        let id = {
            let mut r = self.routes.lock().unwrap();
            let id = r.fresh_id();
            r.pending.insert(id, tx);
            id
        };
        self.send_to_guest(&Frame::new(id, Message::Metrics)).await;
        let guest = match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(g)) => g,
            _ => {
                self.routes.lock().unwrap().pending.remove(&id);
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
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            uptime_ms: source.started.elapsed().as_millis() as u64,
        })
    }

    pub async fn send_to_guest(&self, frame: &Frame) {
        if let Ok(buf) = frame.encode() {
            let _ = self.to_guest.send(buf).await;
        }
    }

    async fn guest_reader(self, mut rd: OwnedReadHalf, mut dec: FrameDecoder) {
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            loop {
                let raw = match dec.next_raw() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
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
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return, // the VM is going away; the main loop sees QEMU exit
                Ok(n) => dec.push(&buf[..n]),
            }
        }
    }

    async fn protocol_error(&self, msg: String) {
        log(&msg);
        let _ = self.control.send(Control::Protocol(msg)).await;
    }

    async fn route_guest_frame(&self, mut raw: Vec<u8>) -> Result<(), String> {
        let frame = decode_raw(&raw).map_err(|e| format!("bad frame from guest: {e}"))?;
        if frame.flags != 0 || !frame.message.allowed_from_guest() {
            return Err(format!(
                "guest sent a message it may not send: {:?}",
                kind(&frame.message)
            ));
        }
        if frame.id == CHANNEL_ID {
            match frame.message {
                Message::Error { code, message } => log(&format!("guest error {code}: {message}")),
                Message::Hello { .. } => {}
                other => {
                    return Err(format!(
                        "unexpected channel message from guest: {:?}",
                        kind(&other)
                    ))
                }
            }
            return Ok(());
        }
        if let Message::GuestStats(stats) = frame.message {
            let waiter = self.routes.lock().unwrap().pending.remove(&frame.id);
            return match waiter {
                Some(tx) => {
                    let _ = tx.send(stats);
                    Ok(())
                }
                None => Err(format!(
                    "guest sent metrics for unknown request id {}",
                    frame.id
                )),
            };
        }
        let target = {
            let mut r = self.routes.lock().unwrap();
            let Some(&(client, local)) = r.sessions.get(&frame.id) else {
                // Credit for stdin may cross the end of its session; anything else on an
                // unknown id is a protocol violation.
                if matches!(frame.message, Message::Credit { .. }) {
                    return Ok(());
                }
                return Err(format!("guest used unknown request id {}", frame.id));
            };
            if frame.message.ends_session() {
                r.sessions.remove(&frame.id);
                self.count_changed(&r);
            }
            r.clients.get(&client).cloned().map(|tx| (tx, local))
        };
        if let Some((tx, local)) = target {
            set_raw_id(&mut raw, local);
            // A full client queue waits here: backpressure reaches the guest.
            let _ = tx.send(raw).await;
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
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
        let client_id = {
            let mut r = self.routes.lock().unwrap();
            r.next_client += 1;
            let id = r.next_client;
            r.clients.insert(id, tx.clone());
            id
        };
        tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut greeted = false;
        'conn: loop {
            loop {
                let frame = match dec.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = reply(
                            &tx,
                            CHANNEL_ID,
                            Message::Error {
                                code: "protocol".into(),
                                message: e.to_string(),
                            },
                        )
                        .await;
                        break 'conn;
                    }
                };
                if !frame.message.allowed_from_client() {
                    let _ = reply(
                        &tx,
                        frame.id,
                        Message::Error {
                            code: "protocol".into(),
                            message: "message not allowed from a client".into(),
                        },
                    )
                    .await;
                    break 'conn;
                }
                match frame.message {
                    Message::Hello { version } => {
                        greeted = version == PROTOCOL_VERSION;
                        let msg = if greeted {
                            Message::Hello {
                                version: PROTOCOL_VERSION,
                            }
                        } else {
                            Message::Error {
                                code: "protocol".into(),
                                message: format!(
                                    "client speaks protocol {version}, runtime {PROTOCOL_VERSION}"
                                ),
                            }
                        };
                        let _ = reply(&tx, CHANNEL_ID, msg).await;
                    }
                    _ if !greeted => {
                        let _ = reply(
                            &tx,
                            CHANNEL_ID,
                            Message::Error {
                                code: "protocol".into(),
                                message: "hello first".into(),
                            },
                        )
                        .await;
                        break 'conn;
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
                    Message::Metrics if frame.flags & FLAG_CONTROL != 0 => {
                        let (relay, tx, id) = (self.clone(), tx.clone(), frame.id);
                        tokio::spawn(async move {
                            let msg = match relay.metrics_report().await {
                                Ok(m) => Message::MetricsReport(m),
                                Err(e) => Message::Error {
                                    code: "runtime".into(),
                                    message: e,
                                },
                            };
                            let _ = reply(&tx, id, msg).await;
                        });
                    }
                    Message::Exec(_) if self.draining.load(Ordering::SeqCst) => {
                        let msg = Message::Error {
                            code: "sandboxDraining".into(),
                            message: "the sandbox is draining: it accepts no new commands".into(),
                        };
                        let _ = reply(&tx, frame.id, msg).await;
                    }
                    msg @ (Message::Exec(_) | Message::Fs(_)) => {
                        let guest_id = {
                            let mut r = self.routes.lock().unwrap();
                            let in_use = r
                                .sessions
                                .values()
                                .any(|&(c, l)| c == client_id && l == frame.id);
                            if in_use || frame.id == CHANNEL_ID {
                                None
                            } else {
                                let id = r.fresh_id();
                                r.sessions.insert(id, (client_id, frame.id));
                                self.count_changed(&r);
                                Some(id)
                            }
                        };
                        match guest_id {
                            Some(gid) => self.send_to_guest(&Frame::new(gid, msg)).await,
                            None => {
                                let _ = reply(
                                    &tx,
                                    frame.id,
                                    Message::Error {
                                        code: "protocol".into(),
                                        message: "request id in use".into(),
                                    },
                                )
                                .await;
                            }
                        }
                    }
                    msg if msg.is_session_input() => {
                        // Stdin, signals, resizes and credit for one of this client's sessions.
                        let gid = {
                            let r = self.routes.lock().unwrap();
                            r.sessions
                                .iter()
                                .find(|(_, &(c, l))| c == client_id && l == frame.id)
                                .map(|(&g, _)| g)
                        };
                        // A session that just ended is not an error: input may cross its end.
                        if let Some(gid) = gid {
                            self.send_to_guest(&Frame::new(gid, msg)).await;
                        }
                    }
                    _ => {
                        let _ = reply(
                            &tx,
                            frame.id,
                            Message::Error {
                                code: "protocol".into(),
                                message: "control messages need the control flag".into(),
                            },
                        )
                        .await;
                    }
                }
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dec.push(&buf[..n]),
            }
        }
        // Forget the client; output of its sessions still running is dropped.
        let mut r = self.routes.lock().unwrap();
        r.clients.remove(&client_id);
    }
}

async fn reply(tx: &mpsc::Sender<Vec<u8>>, id: u32, msg: Message) -> Result<(), ()> {
    let buf = Frame::new(id, msg).encode().map_err(|_| ())?;
    tx.send(buf).await.map_err(|_| ())
}

/// The variant name of a message, for logs (never its payload: it may be large).
fn kind(m: &Message) -> String {
    let dbg = format!("{m:?}");
    dbg.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}
