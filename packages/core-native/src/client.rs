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

use msb_contract::{ErrorCode, NotAnEvent, SessionEvent};
use msb_protocol::{
    check_version, write_frame_async, ExecRequest, Frame, FrameReader, FsOp, Message,
    MetricsReport, CHANNEL_ID, FRAME_COST, INITIAL_WINDOW, MAX_CHUNK, PROTOCOL_VERSION,
};
use napi::bindgen_prelude::Buffer;
use napi::Result;
use napi_derive::napi;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::err;
use crate::serde_js::{FromJs, ToJs};

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
    let mut w = inner.writer.lock().await;
    write_frame_async(&mut *w, &frame)
        .await
        .map_err(|e| match e {
            msb_protocol::FrameError::Io(e) => err(
                ErrorCode::Runtime,
                format!("the sandbox is not running ({e})"),
            ),
            e => err(ErrorCode::Protocol, e),
        })
}

#[napi]
impl AgentClient {
    /// Connect to a runtime's agent socket and exchange hellos.
    #[napi(factory)]
    pub async fn connect(socket_path: String) -> Result<AgentClient> {
        let stream = UnixStream::connect(&socket_path).await.map_err(|e| {
            err(
                ErrorCode::Runtime,
                format!("cannot connect to {socket_path}: {e}"),
            )
        })?;
        let (rd, mut wr) = stream.into_split();
        let hello = Frame::new(
            CHANNEL_ID,
            Message::Hello {
                version: PROTOCOL_VERSION,
            },
        );
        write_frame_async(&mut wr, &hello)
            .await
            .map_err(|e| err(ErrorCode::Runtime, e))?;
        let mut rd = FrameReader::with_capacity(rd, 128 * 1024);
        let reply = match rd.next_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(err(
                    ErrorCode::Runtime,
                    "the runtime closed the connection during the handshake",
                ))
            }
            Err(e) => return Err(err(ErrorCode::Protocol, e)),
        };
        match reply.message {
            Message::Hello { version } => {
                check_version(version).map_err(|e| err(ErrorCode::Protocol, e))?
            }
            Message::Error { message, .. } => return Err(err(ErrorCode::Protocol, message)),
            other => {
                return Err(err(
                    ErrorCode::Protocol,
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
        tokio::spawn(reader(inner.clone(), rd, closed_tx));
        Ok(AgentClient { inner })
    }

    /// Start a command; returns the session id to pass to `next`.
    #[napi(ts_args_type = "request: ExecRequest")]
    pub async fn exec(&self, request: FromJs<ExecRequest>) -> Result<u32> {
        self.open_session(Message::Exec(request.0)).await
    }

    /// Start a filesystem operation; its results come through `next`.
    #[napi(ts_args_type = "op: FsOp")]
    pub async fn fs(&self, op: FromJs<FsOp>) -> Result<u32> {
        self.open_session(Message::Fs(op.0)).await
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
            return Err(err(ErrorCode::SandboxNotRunning, "the session has ended"));
        };
        for chunk in data.chunks(MAX_CHUNK) {
            let permits = window
                .acquire_many(chunk.len() as u32 + FRAME_COST)
                .await
                .map_err(|_| err(ErrorCode::SandboxNotRunning, "the session has ended"))?;
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
                ErrorCode::InvalidConfig,
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
            return Err(err(ErrorCode::SandboxNotRunning, reason));
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

    /// The next event of a session, or null once its final event was returned. Taking an
    /// output chunk returns its credit to the guest: a consumer that stops calling `next`
    /// stops the producer.
    #[napi(ts_return_type = "Promise<SessionEvent | null>")]
    pub async fn next(&self, session_id: u32) -> Result<Option<ToJs<SessionEvent>>> {
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
                ErrorCode::Runtime,
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
        match SessionEvent::from_message(msg) {
            Ok(ev) => Ok(Some(ToJs(ev))),
            Err(NotAnEvent::Error { code, message }) => Err(err(code, message)),
            Err(NotAnEvent::Unexpected(kind)) => Err(err(
                ErrorCode::Protocol,
                format!("unexpected message {kind}"),
            )),
        }
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
    #[napi(ts_return_type = "Promise<MetricsReport>")]
    pub async fn metrics(&self) -> Result<ToJs<MetricsReport>> {
        match self.control(Message::Metrics).await? {
            Message::MetricsReport(m) => Ok(ToJs(m)),
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

    /// One round trip to the guest agent through the runtime. Does not count as activity
    /// for the idle timeout.
    #[napi]
    pub async fn ping(&self) -> Result<()> {
        match self.control(Message::Ping).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Count as activity for the idle timeout (its clock restarts); resolves to the
    /// sandbox's activity sequence after this touch.
    #[napi]
    pub async fn touch(&self) -> Result<f64> {
        match self.control(Message::Touch).await? {
            Message::Touched { activity_seq } => Ok(activity_seq as f64),
            other => Err(unexpected(other)),
        }
    }

    /// Stop the VM's vCPUs (it then uses no CPU; memory and disks stay). Resolves once
    /// paused; commands are refused (`sandboxPaused`) until `resume`.
    #[napi]
    pub async fn pause(&self) -> Result<()> {
        match self.control(Message::Pause).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Let a paused VM run again. Resolves once it runs.
    #[napi]
    pub async fn resume(&self) -> Result<()> {
        match self.control(Message::Resume).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Save the running sandbox for a fork into `dir` (`$MSB_HOME/forks/<name>`): its
    /// memory, device state and a copy of its writable disk. The sandbox runs on; its
    /// vCPUs stop for the time of the copy. Resolves once saved.
    #[napi]
    pub async fn fork(&self, dir: String) -> Result<()> {
        match self.control(Message::Fork { dir }).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Ask for a graceful stop (killed after `timeout_ms`) and resolve once the request
    /// is sent, without waiting for the VM to end.
    #[napi]
    pub async fn request_stop(&self, timeout_ms: u32) -> Result<()> {
        if let Some(reason) = self.inner.closed.borrow().clone() {
            return Err(err(ErrorCode::SandboxNotRunning, reason));
        }
        write(
            &self.inner,
            Frame::control(
                CHANNEL_ID,
                Message::Stop {
                    timeout_ms: timeout_ms as u64,
                },
            ),
        )
        .await
    }

    /// Ask for the VM to be killed and resolve once the request is sent.
    #[napi]
    pub async fn request_kill(&self) -> Result<()> {
        if let Some(reason) = self.inner.closed.borrow().clone() {
            return Err(err(ErrorCode::SandboxNotRunning, reason));
        }
        write(&self.inner, Frame::control(CHANNEL_ID, Message::Kill)).await
    }

    /// Resolves when the VM is gone, without asking it to stop.
    #[napi]
    pub async fn wait(&self) -> Result<()> {
        self.wait_closed().await;
        Ok(())
    }

    async fn control(&self, msg: Message) -> Result<Message> {
        if let Some(reason) = self.inner.closed.borrow().clone() {
            return Err(err(ErrorCode::SandboxNotRunning, reason));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.inner.controls.lock().unwrap().insert(id, tx);
        write(&self.inner, Frame::control(id, msg)).await?;
        match rx.await {
            Ok(Message::Error { code, message }) => {
                Err(err(msb_contract::trusted_code(&code), message))
            }
            Ok(m) => Ok(m),
            Err(_) => Err(err(ErrorCode::SandboxNotRunning, "the sandbox stopped")),
        }
    }

    async fn wait_closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| c.is_some()).await;
    }
}

fn unexpected(m: Message) -> napi::Error {
    err(
        ErrorCode::Protocol,
        format!("unexpected answer from the runtime: {m:?}"),
    )
}

async fn reader(
    inner: Arc<Inner>,
    mut rd: FrameReader<OwnedReadHalf>,
    closed: watch::Sender<Option<String>>,
) {
    let reason = loop {
        let f = match rd.next_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => break "the sandbox stopped".to_string(),
            Err(msb_protocol::FrameError::Io(e)) => break e.to_string(),
            Err(e) => break format!("protocol error from the runtime: {e}"),
        };
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
