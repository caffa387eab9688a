//! The main loop of a booted sandbox: carries out stop, kill, drain and detach requests,
//! enforces the idle timeout and the maximum duration, watches the creating process in
//! attached mode, and records how the VM ended.

use std::fs;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::time::Duration;

use msb_protocol::{Frame, Message, CHANNEL_ID};
use msb_store::{CRASHED, DRAINING, STOPPED};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::diagnose::tail;
use crate::relay::Control;
use crate::sandbox::{Running, Sandbox};
use crate::{log, log_error};

/// fd on which an attached runtime receives the read end of its creator's pipe.
/// Why an attached sandbox stopped when its creator went away.
const CREATOR_EXITED: &str = "creator exited";
const ATTACH_FD: i32 = 3;
const ATTACH_STOP_GRACE: Duration = Duration::from_secs(5);
const SIGNAL_STOP_GRACE: Duration = Duration::from_secs(10);
/// Grace for the guest to shut down after a drain, idle timeout or max duration.
const POLICY_STOP_GRACE: Duration = Duration::from_secs(10);
const EXIT_KILLED: i64 = 137;

/// Why the VM is going away, as far as the host asked for it.
#[derive(Debug, Clone)]
enum Ending {
    Stop(&'static str),
    Kill,
    Protocol(String),
}

impl Sandbox {
    /// Serve until QEMU exits, then record the outcome in the store.
    pub async fn run(&mut self, mut running: Running) {
        let Some(mut qemu) = self.qemu.take() else {
            return;
        };
        let mut attach = self
            .cfg
            .attached
            .then(|| watch_attach_pipe(running.ctl_tx.clone()));
        watch_signals(running.ctl_tx.clone());
        let mut active = running.relay.active_sessions();

        let mut ending: Option<Ending> = None;
        let mut kill_at: Option<Instant> = None;
        let mut forced = false;
        let mut shutdown_sent = false;
        let mut draining = false;
        let mut detached = !self.cfg.attached;
        let mut idle_since = Instant::now();
        let idle_timeout = self.cfg.idle_timeout_secs.map(Duration::from_secs);
        let max_at = self
            .cfg
            .max_duration_secs
            .map(|s| Instant::now() + Duration::from_secs(s));
        let mut tick = tokio::time::interval(Duration::from_millis(500));

        let status = loop {
            let kill_sleep = async {
                match kill_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let mut request: Option<Ending> = None;
            tokio::select! {
                status = qemu.wait() => break status,
                Some(ctl) = running.ctl_rx.recv() => match ctl {
                    Control::Stop(grace) => {
                        if !shutdown_sent {
                            kill_at = Some(Instant::now() + grace);
                            request = Some(Ending::Stop("stopped"));
                        }
                    }
                    Control::Kill => {
                        log("kill requested");
                        ending = Some(Ending::Kill);
                        let _ = qemu.start_kill();
                    }
                    Control::Protocol(msg) => {
                        log(&format!("ending the sandbox: {msg}"));
                        ending = Some(Ending::Protocol(msg));
                        let _ = qemu.start_kill();
                    }
                    Control::Drain(done) => {
                        if !draining && ending.is_none() {
                            log("draining");
                            draining = true;
                            let _ = self.store.set_status(&self.cfg.name, DRAINING);
                        }
                        let _ = done.send(());
                    }
                    Control::Detach(done) => {
                        if let Some(h) = attach.take() {
                            h.abort();
                            // Leave the creator's session: its terminal's signals are not ours.
                            // SAFETY: setsid has no preconditions; failure (already a leader) is fine.
                            unsafe { libc::setsid() };
                            log("detached from the creating process");
                        }
                        detached = true;
                        let _ = done.send(());
                    }
                    Control::CreatorGone => {
                        if !detached && !shutdown_sent {
                            log("creator went away: stopping");
                            kill_at = Some(Instant::now() + ATTACH_STOP_GRACE);
                            request = Some(Ending::Stop(CREATOR_EXITED));
                        }
                    }
                },
                _ = active.changed() => {
                    if *active.borrow() == 0 {
                        idle_since = Instant::now();
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let busy = *active.borrow() > 0;
                    if busy {
                        idle_since = now;
                    }
                    if ending.is_none() {
                        if max_at.is_some_and(|t| now >= t) {
                            log("maximum duration reached");
                            running.relay.set_draining();
                            let _ = self.store.set_status(&self.cfg.name, DRAINING);
                            request = Some(Ending::Stop("max duration"));
                        } else if !busy && idle_timeout.is_some_and(|t| now.duration_since(idle_since) >= t) {
                            log("idle timeout");
                            running.relay.set_draining();
                            let _ = self.store.set_status(&self.cfg.name, DRAINING);
                            request = Some(Ending::Stop("idle timeout"));
                        } else if draining && !busy {
                            request = Some(Ending::Stop("drained"));
                        }
                    }
                }
                _ = kill_sleep => {
                    log("grace period over: killing QEMU");
                    forced = true;
                    let _ = qemu.start_kill();
                    kill_at = None;
                }
            }
            if let Some(Ending::Stop(reason)) = request {
                if !shutdown_sent && ending.is_none() {
                    log(&format!("stopping: {reason}"));
                    shutdown_sent = true;
                    ending = Some(Ending::Stop(reason));
                    kill_at.get_or_insert(Instant::now() + POLICY_STOP_GRACE);
                    running
                        .relay
                        .send_to_guest(&Frame::new(CHANNEL_ID, Message::Shutdown))
                        .await;
                }
            }
        };

        let (state, code, reason) = match (&ending, &status) {
            (Some(Ending::Kill), _) => (STOPPED, EXIT_KILLED, "killed".to_string()),
            (Some(Ending::Protocol(m)), _) => (CRASHED, 1, format!("protocol error: {m}")),
            (Some(Ending::Stop(r)), _) if forced => (
                STOPPED,
                EXIT_KILLED,
                format!("{r} (killed after the grace period)"),
            ),
            (Some(Ending::Stop(r)), _) => (STOPPED, 0, r.to_string()),
            (None, _) if tail(&self.dir.join("console.log"), 50).contains("Kernel panic") => {
                (CRASHED, 1, "kernel panic".to_string())
            }
            (None, Ok(s)) if s.success() => (STOPPED, 0, "guest powered off".to_string()),
            (None, Ok(s)) => (CRASHED, 1, format!("VMM exited: {s}")),
            (None, Err(e)) => (CRASHED, 1, format!("VMM: {e}")),
        };
        if state == CRASHED {
            log_error(&format!("VM ended: {state} ({code}, {reason})"));
        } else {
            log(&format!("VM ended: {state} ({code}, {reason})"));
        }
        if let Err(e) = self.store.set_exited(&self.cfg.name, state, code, &reason) {
            log_error(&format!("recording the exit: {e}"));
        }
        if self.cfg.ephemeral && matches!(ending, Some(Ending::Stop(CREATOR_EXITED))) {
            // Nobody is left to remove it: a throwaway sandbox goes with its creator.
            log("ephemeral sandbox whose creator exited: removing it");
            if let Err(e) = msb_store::remove_sandbox_state(&self.store, &self.cfg.name) {
                log_error(&format!("removing the ephemeral sandbox: {e}"));
            }
        }
    }
}

/// The creator holds the write end of a pipe whose read end is our fd 3. When the
/// creator exits (even by SIGKILL) the pipe reaches EOF: stop the VM.
fn watch_attach_pipe(ctl: mpsc::Sender<Control>) -> JoinHandle<()> {
    // SAFETY: fd 3 was set up by the creator for us and is owned by nothing else here.
    let file = unsafe { fs::File::from_raw_fd(ATTACH_FD) };
    tokio::spawn(async move {
        let _ = tokio::task::spawn_blocking(move || {
            let mut f = file;
            let mut b = [0u8; 64];
            while matches!(f.read(&mut b), Ok(n) if n > 0) {}
        })
        .await;
        let _ = ctl.send(Control::CreatorGone).await;
    })
}

fn watch_signals(ctl: mpsc::Sender<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = ctl.send(Control::Stop(SIGNAL_STOP_GRACE)).await;
    });
}
