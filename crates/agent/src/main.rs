//! msb-agent: PID 1 of the guest.
//!
//! Boot order (DESIGN.md "Keep the door open for snapshot starts"): mount the kernel
//! filesystems, load modules, open the `agent` port, say hello and wait. Nothing
//! sandbox-specific is known until the host's `Bootstrap` arrives; only then are disks
//! touched, the root switched and commands served.

mod boot;
mod env;
mod exec;
mod fsops;
mod memcg;
mod net;
mod port;
mod spawn;
mod sys;
mod trust;
mod warm;
mod window;

use std::sync::Arc;

use msb_protocol::{Frame, FrameError, Message, CHANNEL_ID, PROTOCOL_VERSION};

use crate::exec::Sessions;
use crate::port::Port;

/// Pause between reads of a port that keeps failing (see the main loop).
const IO_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

fn main() {
    if let Err(e) = run() {
        log(&format!("fatal: {e}"));
    }
    // PID 1 must never exit: that panics the kernel. Power off instead.
    sys::power_off();
}

/// The answer to `Prepare` / `PrepareRoot`.
fn prepared(what: &str, r: Result<(), String>) -> Message {
    match r {
        Ok(()) => Message::Prepared,
        Err(e) => {
            log(&format!("prepare ({what}) failed: {e}"));
            Message::Error {
                code: "prepare".into(),
                message: e,
            }
        }
    }
}

pub fn log(msg: &str) {
    eprintln!("msb-agent: {msg}");
}

fn run() -> Result<(), String> {
    sys::mount_early()?;
    sys::load_modules("/etc/msb/modules");
    let port = Arc::new(Port::open_named("agent")?);
    port.send(&Frame::new(
        CHANNEL_ID,
        Message::Hello {
            version: PROTOCOL_VERSION,
        },
    ))?;
    // Sandbox-agnostic work, done while the host answers the hello (its next message is
    // read after this, so a memory template has it too).
    memcg::prepare();
    boot::index_disks();

    let mut sessions: Option<Arc<Sessions>> = None;
    let mut io_errors: u32 = 0;
    loop {
        let frame = match port.recv() {
            Ok(f) => {
                io_errors = 0;
                f
            }
            Err(FrameError::Truncated) => continue,
            Err(FrameError::Io(_)) => {
                // A port whose driver was unbound (rebinding virtio_console) fails every
                // read at once: back off instead of burning a host core on the retries.
                // The first error is retried at once, as before.
                io_errors = io_errors.saturating_add(1);
                if io_errors > 1 {
                    std::thread::sleep(IO_ERROR_BACKOFF);
                }
                continue;
            }
            Err(e) => {
                // A host that sends garbage gets an error frame; the agent keeps serving.
                log(&format!("bad frame from host: {e}"));
                let _ = port.send(&Frame::new(
                    CHANNEL_ID,
                    Message::Error {
                        code: "protocol".into(),
                        message: e.to_string(),
                    },
                ));
                continue;
            }
        };
        match frame.message {
            Message::Hello { version } => {
                // The host refuses a guest of another version (it checks our Hello and
                // fails the boot naming both); we only say so on the console.
                if let Err(e) = msb_protocol::check_version(version) {
                    log(&e);
                }
                port.send(&Frame::new(
                    CHANNEL_ID,
                    Message::Hello {
                        version: PROTOCOL_VERSION,
                    },
                ))?;
            }
            Message::Prepare { lower } if sessions.is_none() => {
                port.send(&Frame::new(
                    CHANNEL_ID,
                    prepared("image", boot::prepare(&lower)),
                ))?;
            }
            Message::PrepareRoot { upper, network } if sessions.is_none() => {
                port.send(&Frame::new(
                    CHANNEL_ID,
                    prepared("root", boot::prepare_root(&upper, network.as_ref())),
                ))?;
            }
            Message::Bootstrap(b) if sessions.is_none() => match boot::bootstrap(&b) {
                Ok(env) => {
                    sessions = Some(Sessions::start(
                        port.clone(),
                        env,
                        b.workdir.clone(),
                        b.user.clone(),
                    ));
                    port.send(&Frame::new(CHANNEL_ID, Message::Ready))?;
                }
                Err(e) => {
                    log(&format!("bootstrap failed: {e}"));
                    port.send(&Frame::new(
                        CHANNEL_ID,
                        Message::Error {
                            code: "bootstrap".into(),
                            message: e,
                        },
                    ))?;
                }
            },
            Message::Exec(req) => match &sessions {
                Some(s) => s.spawn(frame.id, req),
                None => port.send(&Frame::new(
                    frame.id,
                    Message::Failed {
                        reason: "sandbox is not bootstrapped".into(),
                    },
                ))?,
            },
            m if m.is_session_input() => {
                if let Some(s) = &sessions {
                    s.input(frame.id, m);
                }
            }
            Message::Fs(op) => match &sessions {
                Some(s) => fsops::start(s, frame.id, op),
                None => port.send(&Frame::new(
                    frame.id,
                    Message::FsError {
                        errno: "EAGAIN".into(),
                        message: "sandbox is not bootstrapped".into(),
                    },
                ))?,
            },
            Message::Metrics => port.send(&Frame::new(
                frame.id,
                Message::GuestStats(sys::guest_stats()),
            ))?,
            Message::SetClock { unix_ms } => sys::set_time(unix_ms),
            Message::Forked {
                entropy,
                first_id,
                hostname,
                unix_ms,
            } => {
                // A new sandbox from a running one's memory: its own random state, the
                // host's time, its own name; the parent's sessions are not ours.
                sys::set_time(unix_ms);
                if !sys::add_entropy_and_reseed(&entropy) {
                    log("fork: reseeding the RNG failed");
                }
                if !hostname.is_empty() {
                    if let Err(e) = sys::set_hostname(&hostname) {
                        log(&format!("fork: {e}"));
                    }
                }
                match &sessions {
                    Some(s) => s.forked(&hostname, first_id),
                    None => port.forget_ids_below(first_id),
                }
            }
            Message::Shutdown => {
                sys::shutdown();
                return Ok(());
            }
            other => log(&format!("ignoring unexpected message {other:?}")),
        }
    }
}
