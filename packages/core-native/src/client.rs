//! A client of one msb-runtime: exec and fs sessions over its agent socket.
//!
//! Events are pulled (`next`), not pushed. Flow control is credit-based in both
//! directions (see msb_protocol::INITIAL_WINDOW): the guest sends a session's output only
//! while it has credit, and `next` returns credit as the consumer takes each chunk, so a
//! slow consumer slows the producer and a session's queue here never holds more than a
//! window; stdin writes wait for the guest's credit the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use msb_protocol::{
    ExecRequest, Frame, FrameDecoder, FsEntry, FsOp, Message, CHANNEL_ID, FRAME_COST,
    INITIAL_WINDOW, MAX_CHUNK, PROTOCOL_VERSION,
};
use napi::bindgen_prelude::Buffer;
use napi::Result;
use napi_derive::napi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::err;

#[napi(object)]
pub struct ExecEvent {
    /// "started" | "stdout" | "stderr" | "exited" | "failed" for exec sessions;
    /// "fsData" | "fsEnd" | "fsDone" | "fsExists" | "fsStat" | "fsEntries" | "fsError" for fs
    pub kind: String,
    pub pid: Option<u32>,
    pub data: Option<Buffer>,
    /// Exit code; 128 + signal when a signal ended the process.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// Symbolic errno of an fsError (ENOENT, EISDIR, ...).
    pub errno: Option<String>,
    pub entries: Option<Vec<FsEntryJs>>,
    pub entry: Option<FsEntryJs>,
    pub exists: Option<bool>,
}

#[napi(object)]
pub struct FsEntryJs {
    pub name: String,
    /// "file" | "dir" | "symlink" | "other"
    pub kind: String,
    pub size: f64,
    pub mode: u32,
    pub modified_ms: f64,
}

impl From<FsEntry> for FsEntryJs {
    fn from(e: FsEntry) -> Self {
        FsEntryJs {
            name: e.name,
            kind: e.kind,
            size: e.size as f64,
            mode: e.mode,
            modified_ms: e.modified_ms as f64,
        }
    }
}

/// The guest names the errno; only plausible names pass (E + capitals and digits).
fn safe_errno(s: &str) -> String {
    let ok = s.len() <= 16
        && s.starts_with('E')
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        s.to_string()
    } else {
        "EIO".to_string()
    }
}

struct Session {
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>>,
}

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Control requests waiting for the runtime's answer, by request id.
    controls: Mutex<HashMap<u32, oneshot::Sender<Message>>>,
    senders: Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>,
    /// Credit for sending stdin / fs write data, per session.
    send_windows: Mutex<HashMap<u32, Arc<Semaphore>>>,
    sessions: Mutex<HashMap<u32, Session>>,
    next_id: AtomicU32,
    /// Becomes Some(reason) when the connection ends.
    closed: watch::Receiver<Option<String>>,
}

#[napi]
pub struct AgentClient {
    inner: Arc<Inner>,
}

async fn write(inner: &Inner, frame: Frame) -> Result<()> {
    let buf = frame.encode().map_err(|e| err("protocol", e))?;
    let mut w = inner.writer.lock().await;
    w.write_all(&buf)
        .await
        .map_err(|e| err("runtime", format!("the sandbox is not running ({e})")))
}

#[napi]
impl AgentClient {
    /// Connect to a runtime's agent socket and exchange hellos.
    #[napi(factory)]
    pub async fn connect(socket_path: String) -> Result<AgentClient> {
        let stream = UnixStream::connect(&socket_path)
            .await
            .map_err(|e| err("runtime", format!("cannot connect to {socket_path}: {e}")))?;
        let (mut rd, mut wr) = stream.into_split();
        let hello = Frame::new(
            CHANNEL_ID,
            Message::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .encode()
        .map_err(|e| err("protocol", e))?;
        wr.write_all(&hello).await.map_err(|e| err("runtime", e))?;
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        let reply = loop {
            if let Some(f) = dec.next_frame().map_err(|e| err("protocol", e))? {
                break f;
            }
            let n = rd.read(&mut buf).await.map_err(|e| err("runtime", e))?;
            if n == 0 {
                return Err(err(
                    "runtime",
                    "the runtime closed the connection during the handshake",
                ));
            }
            dec.push(&buf[..n]);
        };
        match reply.message {
            Message::Hello { version } if version == PROTOCOL_VERSION => {}
            Message::Error { message, .. } => return Err(err("protocol", message)),
            other => {
                return Err(err(
                    "protocol",
                    format!("unexpected handshake reply {other:?}"),
                ))
            }
        }
        let (closed_tx, closed_rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(wr),
            controls: Mutex::new(HashMap::new()),
            senders: Mutex::new(HashMap::new()),
            send_windows: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: closed_rx,
        });
        tokio::spawn(reader(inner.clone(), rd, dec, closed_tx));
        Ok(AgentClient { inner })
    }

    /// Start a command; returns the session id to pass to `next`.
    #[napi]
    pub async fn exec(&self, request_json: String) -> Result<u32> {
        let req: ExecRequest =
            serde_json::from_str(&request_json).map_err(|e| err("invalidConfig", e))?;
        self.open_session(Message::Exec(req)).await
    }

    /// Start a filesystem operation (JSON of `FsOp`); its results come through `next`.
    #[napi]
    pub async fn fs(&self, op_json: String) -> Result<u32> {
        let op: FsOp = serde_json::from_str(&op_json).map_err(|e| err("invalidConfig", e))?;
        self.open_session(Message::Fs(op)).await
    }

    /// Write to a session's stdin (or an fs write's file); waits for the guest's credit.
    #[napi]
    pub async fn write_stdin(&self, session_id: u32, data: Buffer) -> Result<()> {
        let window = self
            .inner
            .send_windows
            .lock()
            .unwrap()
            .get(&session_id)
            .cloned();
        let Some(window) = window else {
            return Err(err("sandboxNotRunning", "the session has ended"));
        };
        for chunk in data.chunks(MAX_CHUNK) {
            let permits = window
                .acquire_many(chunk.len() as u32 + FRAME_COST)
                .await
                .map_err(|_| err("sandboxNotRunning", "the session has ended"))?;
            permits.forget();
            write(
                &self.inner,
                Frame::new(session_id, Message::Stdin(chunk.to_vec())),
            )
            .await?;
        }
        Ok(())
    }

    /// End a session's stdin (EOF), or finish an fs write.
    #[napi]
    pub async fn close_stdin(&self, session_id: u32) -> Result<()> {
        write(&self.inner, Frame::new(session_id, Message::StdinClose)).await
    }

    /// Send a signal to a session's process group.
    #[napi]
    pub async fn signal(&self, session_id: u32, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(err(
                "invalidConfig",
                format!("signal: {signal} is not a signal number (1-64)"),
            ));
        }
        write(
            &self.inner,
            Frame::new(session_id, Message::Signal { signal }),
        )
        .await
    }

    /// Resize a TTY session's terminal.
    #[napi]
    pub async fn resize(&self, session_id: u32, rows: u16, cols: u16) -> Result<()> {
        write(
            &self.inner,
            Frame::new(session_id, Message::Resize { rows, cols }),
        )
        .await
    }

    async fn open_session(&self, msg: Message) -> Result<u32> {
        if let Some(reason) = self.inner.closed.borrow().clone() {
            return Err(err("sandboxNotRunning", reason));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.senders.lock().unwrap().insert(id, tx);
        self.inner
            .send_windows
            .lock()
            .unwrap()
            .insert(id, Arc::new(Semaphore::new(INITIAL_WINDOW as usize)));
        self.inner.sessions.lock().unwrap().insert(
            id,
            Session {
                rx: Arc::new(tokio::sync::Mutex::new(rx)),
            },
        );
        if let Err(e) = write(&self.inner, Frame::new(id, msg)).await {
            self.forget(id);
            return Err(e);
        }
        Ok(id)
    }

    fn forget(&self, id: u32) {
        self.inner.senders.lock().unwrap().remove(&id);
        self.inner.sessions.lock().unwrap().remove(&id);
        if let Some(w) = self.inner.send_windows.lock().unwrap().remove(&id) {
            w.close();
        }
    }

    /// The next event of a session, or null once its final event was returned.
    #[napi]
    pub async fn next(&self, session_id: u32) -> Result<Option<ExecEvent>> {
        let rx = match self.inner.sessions.lock().unwrap().get(&session_id) {
            Some(s) => s.rx.clone(),
            None => return Ok(None),
        };
        let msg = rx.lock().await.recv().await;
        let Some(msg) = msg else {
            self.inner.sessions.lock().unwrap().remove(&session_id);
            let reason = self
                .inner
                .closed
                .borrow()
                .clone()
                .unwrap_or_else(|| "connection closed".into());
            return Err(err(
                "runtime",
                format!("the sandbox stopped while the command was running ({reason})"),
            ));
        };
        if msg.ends_session() {
            self.forget(session_id);
        }
        if let Message::Stdout(d) | Message::Stderr(d) | Message::FsData(d) = &msg {
            // The consumer took this chunk: the guest may send as much again.
            let credit = Frame::new(
                session_id,
                Message::Credit {
                    bytes: d.len() as u32 + FRAME_COST,
                },
            );
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let _ = write(&inner, credit).await;
            });
        }
        let ev = |kind: &str| ExecEvent {
            kind: kind.into(),
            pid: None,
            data: None,
            code: None,
            signal: None,
            reason: None,
            errno: None,
            entries: None,
            entry: None,
            exists: None,
        };
        Ok(Some(match msg {
            Message::Started { pid } => ExecEvent {
                pid: Some(pid),
                ..ev("started")
            },
            Message::Stdout(d) => ExecEvent {
                data: Some(d.into()),
                ..ev("stdout")
            },
            Message::Stderr(d) => ExecEvent {
                data: Some(d.into()),
                ..ev("stderr")
            },
            Message::Exited { code, signal } => {
                let code = code.or(signal.map(|s| 128 + s)).unwrap_or(-1);
                ExecEvent {
                    code: Some(code),
                    signal,
                    ..ev("exited")
                }
            }
            Message::Failed { reason } => ExecEvent {
                reason: Some(reason),
                ..ev("failed")
            },
            Message::FsData(d) => ExecEvent {
                data: Some(d.into()),
                ..ev("fsData")
            },
            Message::FsEnd => ev("fsEnd"),
            Message::FsDone => ev("fsDone"),
            Message::FsExists(b) => ExecEvent {
                exists: Some(b),
                ..ev("fsExists")
            },
            Message::FsStat(e) => ExecEvent {
                entry: Some(e.into()),
                ..ev("fsStat")
            },
            Message::FsEntries(v) => ExecEvent {
                entries: Some(v.into_iter().map(Into::into).collect()),
                ..ev("fsEntries")
            },
            Message::FsError { errno, message } => ExecEvent {
                errno: Some(safe_errno(&errno)),
                reason: Some(message),
                ..ev("fsError")
            },
            Message::Error { code, message } => return Err(err(trusted_code(&code), message)),
            other => return Err(err("protocol", format!("unexpected message {other:?}"))),
        }))
    }

    /// Graceful stop: the guest's processes get SIGTERM, disks are synced, the VM powers
    /// off. Resolves when the runtime has gone; after `timeout_ms` the VM is killed.
    #[napi]
    pub async fn stop(&self, timeout_ms: u32) -> Result<()> {
        let sent = write(
            &self.inner,
            Frame::control(
                CHANNEL_ID,
                Message::Stop {
                    timeout_ms: timeout_ms as u64,
                },
            ),
        )
        .await;
        if sent.is_ok() {
            self.wait_closed().await;
        }
        Ok(())
    }

    /// End the VM at once.
    #[napi]
    pub async fn kill(&self) -> Result<()> {
        if write(&self.inner, Frame::control(CHANNEL_ID, Message::Kill))
            .await
            .is_ok()
        {
            self.wait_closed().await;
        }
        Ok(())
    }

    /// True once the runtime closed the connection (the sandbox stopped).
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.inner.closed.borrow().is_some()
    }

    /// Drop the connection without stopping the sandbox.
    #[napi]
    pub async fn close(&self) -> Result<()> {
        let _ = self.inner.writer.lock().await.shutdown().await;
        Ok(())
    }

    /// A point-in-time metrics sample, from msb-runtime.
    #[napi]
    pub async fn metrics(&self) -> Result<MetricsRecord> {
        match self.control(Message::Metrics).await? {
            Message::MetricsReport(m) => Ok(MetricsRecord {
                cpu_percent: m.cpu_percent,
                memory_bytes: m.memory_bytes as f64,
                memory_limit_bytes: m.memory_limit_bytes as f64,
                disk_read_bytes: m.disk_read_bytes as f64,
                disk_write_bytes: m.disk_write_bytes as f64,
                net_rx_bytes: m.net_rx_bytes as f64,
                net_tx_bytes: m.net_tx_bytes as f64,
                timestamp_ms: m.timestamp_ms as f64,
                uptime_ms: m.uptime_ms as f64,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Let running commands finish, refuse new ones, then stop. Resolves once accepted.
    #[napi]
    pub async fn drain(&self) -> Result<()> {
        match self.control(Message::Drain).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Make the runtime stop watching its creator (attached -> detached).
    #[napi]
    pub async fn detach(&self) -> Result<()> {
        match self.control(Message::Detach).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Resolves when the VM is gone, without asking it to stop.
    #[napi]
    pub async fn wait(&self) -> Result<()> {
        self.wait_closed().await;
        Ok(())
    }

    async fn control(&self, msg: Message) -> Result<Message> {
        if let Some(reason) = self.inner.closed.borrow().clone() {
            return Err(err("sandboxNotRunning", reason));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.inner.controls.lock().unwrap().insert(id, tx);
        write(&self.inner, Frame::control(id, msg)).await?;
        match rx.await {
            Ok(Message::Error { code, message }) => Err(err(trusted_code(&code), message)),
            Ok(m) => Ok(m),
            Err(_) => Err(err("sandboxNotRunning", "the sandbox stopped")),
        }
    }

    async fn wait_closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| c.is_some()).await;
    }
}

#[napi(object)]
pub struct MetricsRecord {
    pub cpu_percent: f64,
    pub memory_bytes: f64,
    pub memory_limit_bytes: f64,
    pub disk_read_bytes: f64,
    pub disk_write_bytes: f64,
    pub net_rx_bytes: f64,
    pub net_tx_bytes: f64,
    pub timestamp_ms: f64,
    pub uptime_ms: f64,
}

fn unexpected(m: Message) -> napi::Error {
    err(
        "protocol",
        format!("unexpected answer from the runtime: {m:?}"),
    )
}

/// Error codes the runtime may hand to the SDK; anything else (a guest could put any
/// string there) is reported as a protocol error.
fn trusted_code(code: &str) -> &'static str {
    match code {
        "sandboxDraining" => "sandboxDraining",
        "runtime" => "runtime",
        _ => "protocol",
    }
}

async fn reader(
    inner: Arc<Inner>,
    mut rd: OwnedReadHalf,
    mut dec: FrameDecoder,
    closed: watch::Sender<Option<String>>,
) {
    let mut buf = vec![0u8; 128 * 1024];
    let reason = 'outer: loop {
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    if f.id == CHANNEL_ID {
                        continue;
                    }
                    let waiter = inner.controls.lock().unwrap().remove(&f.id);
                    if let Some(w) = waiter {
                        let _ = w.send(f.message);
                        continue;
                    }
                    if let Message::Credit { bytes } = f.message {
                        if let Some(w) = inner.send_windows.lock().unwrap().get(&f.id) {
                            w.add_permits(bytes as usize);
                        }
                        continue;
                    }
                    let tx = inner.senders.lock().unwrap().get(&f.id).cloned();
                    if let Some(tx) = tx {
                        let ends = f.message.ends_session();
                        let _ = tx.send(f.message);
                        if ends {
                            inner.senders.lock().unwrap().remove(&f.id);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => break 'outer format!("protocol error from the runtime: {e}"),
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) => break "the sandbox stopped".to_string(),
            Err(e) => break e.to_string(),
            Ok(n) => dec.push(&buf[..n]),
        }
    };
    // Ending every open session's queue wakes their pending `next` calls; dropping the
    // control waiters fails their requests.
    inner.senders.lock().unwrap().clear();
    inner.controls.lock().unwrap().clear();
    for (_, w) in inner.send_windows.lock().unwrap().drain() {
        w.close();
    }
    let _ = closed.send(Some(reason));
}
