//! A client of one msb-runtime: exec sessions over its agent socket.
//!
//! Events are pulled (`next`), not pushed: a consumer that stops pulling stops the reader
//! once the session's queue is full, and the backpressure travels to the guest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use msb_protocol::{ExecRequest, Frame, FrameDecoder, Message, CHANNEL_ID, PROTOCOL_VERSION};
use napi::bindgen_prelude::Buffer;
use napi::Result;
use napi_derive::napi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::err;

const SESSION_QUEUE: usize = 64;

#[napi(object)]
pub struct ExecEvent {
    /// "started" | "stdout" | "stderr" | "exited" | "failed"
    pub kind: String,
    pub pid: Option<u32>,
    pub data: Option<Buffer>,
    /// Exit code; 128 + signal when a signal ended the process.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
}

struct Session {
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>,
}

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Control requests waiting for the runtime's answer, by request id.
    controls: Mutex<HashMap<u32, oneshot::Sender<Message>>>,
    senders: Mutex<HashMap<u32, mpsc::Sender<Message>>>,
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
        if let Some(reason) = self.inner.closed.borrow().clone() {
            return Err(err("runtime", reason));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.inner.senders.lock().unwrap().insert(id, tx);
        self.inner.sessions.lock().unwrap().insert(
            id,
            Session {
                rx: Arc::new(tokio::sync::Mutex::new(rx)),
            },
        );
        if let Err(e) = write(&self.inner, Frame::new(id, Message::Exec(req))).await {
            self.inner.senders.lock().unwrap().remove(&id);
            self.inner.sessions.lock().unwrap().remove(&id);
            return Err(e);
        }
        Ok(id)
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
            self.inner.sessions.lock().unwrap().remove(&session_id);
        }
        let ev = |kind: &str| ExecEvent {
            kind: kind.into(),
            pid: None,
            data: None,
            code: None,
            signal: None,
            reason: None,
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
                    let tx = inner.senders.lock().unwrap().get(&f.id).cloned();
                    if let Some(tx) = tx {
                        let ends = f.message.ends_session();
                        let _ = tx.send(f.message).await;
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
    let _ = closed.send(Some(reason));
}
