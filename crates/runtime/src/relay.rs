//! Multiplexes client connections (agent.sock) onto the one guest channel.
//!
//! Clients pick their own request ids; the relay maps each to a fresh id on the guest
//! channel and back, so sessions of different clients never collide. Frames from the
//! guest are decoded and checked before anything is forwarded: the guest is untrusted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msb_protocol::{
    decode_raw, set_raw_id, Frame, FrameDecoder, Message, CHANNEL_ID, FLAG_CONTROL,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// What clients and watchers ask the main loop to do.
#[derive(Debug)]
pub enum Control {
    Stop(Duration),
    Kill,
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
}

#[derive(Clone)]
pub struct Relay {
    routes: Arc<Mutex<Routes>>,
    to_guest: mpsc::Sender<Vec<u8>>,
    control: mpsc::Sender<Control>,
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
        };
        let r = relay.clone();
        tokio::spawn(async move { r.guest_reader(guest_rd, decoder).await });
        relay
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
        let target = {
            let mut r = self.routes.lock().unwrap();
            let Some(&(client, local)) = r.sessions.get(&frame.id) else {
                return Err(format!("guest used unknown request id {}", frame.id));
            };
            if frame.message.ends_session() {
                r.sessions.remove(&frame.id);
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
                    Message::Exec(req) => {
                        let guest_id = {
                            let mut r = self.routes.lock().unwrap();
                            if r.sessions
                                .values()
                                .any(|&(c, l)| c == client_id && l == frame.id)
                                || frame.id == CHANNEL_ID
                            {
                                None
                            } else {
                                let mut id = r.next_guest_id;
                                while id == CHANNEL_ID || r.sessions.contains_key(&id) {
                                    id = id.wrapping_add(1);
                                }
                                r.next_guest_id = id.wrapping_add(1);
                                r.sessions.insert(id, (client_id, frame.id));
                                Some(id)
                            }
                        };
                        match guest_id {
                            Some(gid) => {
                                self.send_to_guest(&Frame::new(gid, Message::Exec(req)))
                                    .await
                            }
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

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "hello",
        Message::Bootstrap(_) => "bootstrap",
        Message::Ready => "ready",
        Message::Exec(_) => "exec",
        Message::Started { .. } => "started",
        Message::Stdout(_) => "stdout",
        Message::Stderr(_) => "stderr",
        Message::Exited { .. } => "exited",
        Message::Failed { .. } => "failed",
        Message::Shutdown => "shutdown",
        Message::Error { .. } => "error",
        Message::Stop { .. } => "stop",
        Message::Kill => "kill",
    }
}
