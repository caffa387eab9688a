//! The main loop of a booted sandbox: carries out stop, kill, drain and detach requests,
//! enforces the idle timeout and the maximum duration, watches the creating process in
//! attached mode, and records how the VM ended.

use std::fs;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::process::ExitStatus;
use std::time::Duration;

use msb_protocol::{Frame, Message, CHANNEL_ID};
use msb_store::{CRASHED, DRAINING, PAUSED, RUNNING, STOPPED};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::diagnose::tail;
use crate::qmp::Qmp;
use crate::relay::Control;
use crate::sandbox::{Running, Sandbox};
use crate::{fork, template};
use crate::{log, log_error, unix_ms_now};

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
    /// Killed because a secret's placeholder went where it may not (block-and-terminate).
    SecretViolation,
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
        let mut detached = !self.cfg.attached;
        let mut policies = Policies::new(
            self.cfg.idle_timeout_secs,
            self.cfg.max_duration_secs,
            Instant::now(),
        );
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // QEMU's control socket, connected on the first pause.
        let mut qmp: Option<Qmp> = None;
        let mut paused = false;

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
                    Control::SecretViolation => {
                        log("a secret violation asks to terminate the sandbox: killing it");
                        ending = Some(Ending::SecretViolation);
                        let _ = qemu.start_kill();
                    }
                    Control::Protocol(msg) => {
                        log(&format!("ending the sandbox: {msg}"));
                        ending = Some(Ending::Protocol(msg));
                        let _ = qemu.start_kill();
                    }
                    Control::Drain(done) => {
                        if !policies.draining && ending.is_none() {
                            log("draining");
                            policies.draining = true;
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
                    Control::Touch(done) => {
                        let _ = done.send(policies.touch(Instant::now()));
                    }
                    Control::Pause(done) => {
                        let r = if ending.is_some() || shutdown_sent {
                            Err("the sandbox is stopping".to_string())
                        } else if paused {
                            Ok(())
                        } else {
                            // Commands are refused before the vCPUs stop: none starts half-way.
                            running.relay.set_paused(true);
                            match self.qmp_execute(&mut qmp, "stop").await {
                                Ok(()) => {
                                    paused = true;
                                    log("paused");
                                    let _ = self.store.set_status(&self.cfg.name, PAUSED);
                                    Ok(())
                                }
                                Err(e) => {
                                    running.relay.set_paused(false);
                                    Err(e)
                                }
                            }
                        };
                        let _ = done.send(r);
                    }
                    Control::Resume(done) => {
                        let r = if !paused {
                            Ok(())
                        } else {
                            match self.qmp_execute(&mut qmp, "cont").await {
                                Ok(()) => {
                                    paused = false;
                                    // The guest's clock stood still while paused: set it
                                    // before any command runs again.
                                    running
                                        .relay
                                        .send_to_guest(&Frame::new(
                                            CHANNEL_ID,
                                            Message::SetClock { unix_ms: unix_ms_now() },
                                        ))
                                        .await;
                                    running.relay.set_paused(false);
                                    // A resume is activity: the idle clock starts again.
                                    policies.touch(Instant::now());
                                    log("resumed");
                                    let status = if policies.draining { DRAINING } else { RUNNING };
                                    let _ = self.store.set_status(&self.cfg.name, status);
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        };
                        let _ = done.send(r);
                    }
                    Control::Fork(dir, done) => {
                        let r = if ending.is_some() || shutdown_sent {
                            Err("the sandbox is stopping".to_string())
                        } else {
                            let pid = qemu.id().unwrap_or(0);
                            self.fork_into(&mut qmp, &running, pid, &dir, paused).await
                        };
                        if r.is_ok() {
                            // The parent's time stood still meanwhile, as for a pause.
                            policies.touch(Instant::now());
                        }
                        let _ = done.send(r);
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
                    policies.sessions_changed(*active.borrow(), Instant::now());
                }
                _ = tick.tick() => {
                    if paused {
                        // A paused sandbox is not idle: it waits for its resume.
                        policies.idle_since = Instant::now();
                    }
                    let due = policies.tick(*active.borrow(), Instant::now());
                    if ending.is_none() {
                        match due {
                            Some(PolicyStop::MaxDuration) => {
                                log("maximum duration reached");
                                running.relay.set_draining();
                                let _ = self.store.set_status(&self.cfg.name, DRAINING);
                            }
                            Some(PolicyStop::IdleTimeout) => {
                                log("idle timeout");
                                running.relay.set_draining();
                                let _ = self.store.set_status(&self.cfg.name, DRAINING);
                            }
                            Some(PolicyStop::Drained) | None => {}
                        }
                        request = due.map(|d| Ending::Stop(d.reason()));
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
                    if paused {
                        // The guest shuts itself down: it needs its vCPUs back.
                        match self.qmp_execute(&mut qmp, "cont").await {
                            Ok(()) => {
                                paused = false;
                                running.relay.set_paused(false);
                            }
                            Err(e) => log_error(&format!("resuming to stop: {e}")),
                        }
                    }
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

        let (state, code, reason) = outcome(ending.as_ref(), forced, &status, || {
            tail(&self.dir.join("console.log"), 50).contains("Kernel panic")
        });
        if state == CRASHED {
            log_error(&format!("VM ended: {state} ({code}, {reason})"));
        } else {
            log(&format!("VM ended: {state} ({code}, {reason})"));
        }
        if let Err(e) = self.store.set_exited(&self.cfg.name, state, code, &reason) {
            log_error(&format!("recording the exit: {e}"));
        }
        if self.cfg.ephemeral {
            // A throwaway sandbox goes when its VM ends, however it ends (a stop, kill,
            // drain, idle timeout, its creator exiting, a crash of the guest).
            log("ephemeral sandbox: removing it");
            if let Err(e) = msb_store::remove_sandbox_state(&self.store, &self.cfg.name) {
                log_error(&format!("removing the ephemeral sandbox: {e}"));
            }
        }
    }
}

impl Sandbox {
    /// QEMU's control connection, connecting first if needed.
    async fn qmp_conn<'a>(&self, qmp: &'a mut Option<Qmp>) -> Result<&'a mut Qmp, String> {
        if qmp.is_none() {
            *qmp = Some(Qmp::connect(&self.qmp_sock, Duration::from_secs(2)).await?);
        }
        Ok(qmp.as_mut().expect("connected above"))
    }

    /// One QMP command, connecting first if needed (a failed connection is retried next time).
    async fn qmp_execute(&self, qmp: &mut Option<Qmp>, command: &str) -> Result<(), String> {
        let q = self.qmp_conn(qmp).await?;
        match q.execute(command, None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                *qmp = None;
                Err(e)
            }
        }
    }
}

impl Sandbox {
    /// Save this running sandbox for a fork into `dir` (crate::fork): vCPUs stopped (unless
    /// paused already), memory and device state saved, the writable disk copied, then
    /// running again with its clock set. Any failure leaves the parent running.
    async fn fork_into(
        &self,
        qmp: &mut Option<Qmp>,
        running: &Running,
        qemu_pid: u32,
        dir: &std::path::Path,
        paused: bool,
    ) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        fork::check_dir(&self.cfg.msb_home, dir)?;
        if !self.cfg.mounts.is_empty() {
            return Err("a sandbox with volumes cannot be forked".into());
        }
        if !paused {
            self.qmp_execute(qmp, "stop").await?;
        }
        // Read once the vCPUs stopped: nothing the guest holds is above it after.
        let first_id = fork::first_id(running.relay.next_guest_id());
        let saved = async {
            let q = self.qmp_conn(qmp).await?;
            let ram_bytes = self.cfg.memory_mib as u64 * 1024 * 1024;
            let used = template::save_stopped(q, qemu_pid, ram_bytes, dir).await?;
            let t_mem = t0.elapsed();
            let upper = msb_store::sparse::copy_sparse(
                &self.dir.join("upper.ext4"),
                &dir.join("upper.ext4"),
            )
            .map_err(|e| format!("copying the writable disk: {e}"))?;
            fork::write_info(
                dir,
                &fork::ForkInfo {
                    parent: self.cfg.name.clone(),
                    first_id,
                    image: self.cfg.image.clone(),
                    cpus: self.cfg.cpus,
                    memory_mib: self.cfg.memory_mib,
                    network: self.cfg.network.is_some(),
                    net_stream: self.net_stream,
                },
            )?;
            Ok::<_, String>((used, upper, t_mem))
        }
        .await;
        if !paused {
            self.qmp_execute(qmp, "cont").await?;
            running
                .relay
                .send_to_guest(&Frame::new(
                    CHANNEL_ID,
                    Message::SetClock {
                        unix_ms: unix_ms_now(),
                    },
                ))
                .await;
        }
        let (used, upper, t_mem) = saved.inspect_err(|e| log_error(&format!("fork: {e}")))?;
        let memory = if used == 0 {
            "memory in the state stream (mapped from a template)".to_string()
        } else {
            format!("{used} bytes of memory")
        };
        log(&format!(
            "forked into {}: {memory}, a {upper}-byte disk, stopped {} ms (memory and devices {} ms)",
            dir.display(),
            t0.elapsed().as_millis(),
            t_mem.as_millis()
        ));
        Ok(())
    }
}

/// How the VM ended, for the store: (status, exit code, reason). `panicked` reads the
/// kernel log, only when the host did not end the VM itself.
fn outcome(
    ending: Option<&Ending>,
    forced: bool,
    status: &std::io::Result<ExitStatus>,
    panicked: impl FnOnce() -> bool,
) -> (&'static str, i64, String) {
    match (ending, status) {
        (Some(Ending::Kill), _) => (STOPPED, EXIT_KILLED, "killed".to_string()),
        (Some(Ending::SecretViolation), _) => (
            STOPPED,
            EXIT_KILLED,
            "terminated: secret violation".to_string(),
        ),
        (Some(Ending::Protocol(m)), _) => (CRASHED, 1, format!("protocol error: {m}")),
        (Some(Ending::Stop(r)), _) if forced => (
            STOPPED,
            EXIT_KILLED,
            format!("{r} (killed after the grace period)"),
        ),
        (Some(Ending::Stop(r)), _) => (STOPPED, 0, r.to_string()),
        (None, _) if panicked() => (CRASHED, 1, "kernel panic".to_string()),
        (None, Ok(s)) if s.success() => (STOPPED, 0, "guest powered off".to_string()),
        (None, Ok(s)) => (CRASHED, 1, format!("VMM exited: {s}")),
        (None, Err(e)) => (CRASHED, 1, format!("VMM: {e}")),
    }
}

/// A stop the host-side policies call for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PolicyStop {
    MaxDuration,
    IdleTimeout,
    /// Draining, and the last session ended.
    Drained,
}

impl PolicyStop {
    fn reason(self) -> &'static str {
        match self {
            PolicyStop::MaxDuration => "max duration",
            PolicyStop::IdleTimeout => "idle timeout",
            PolicyStop::Drained => "drained",
        }
    }
}

/// Drain, idle timeout and maximum duration: what the main loop's tick decides, apart
/// from the loop (and with the time given, so that a test clock can drive it).
struct Policies {
    idle_timeout: Option<Duration>,
    max_at: Option<Instant>,
    /// Since when no exec or fs session has been in flight.
    idle_since: Instant,
    /// Refusing new execs; stop once the running ones finished.
    draining: bool,
    /// How many times activity was recorded (sessions starting or ending, touches).
    activity_seq: u64,
}

impl Policies {
    fn new(idle_timeout_secs: Option<u64>, max_duration_secs: Option<u64>, now: Instant) -> Self {
        Policies {
            idle_timeout: idle_timeout_secs.map(Duration::from_secs),
            max_at: max_duration_secs.map(|s| now + Duration::from_secs(s)),
            idle_since: now,
            draining: false,
            activity_seq: 0,
        }
    }

    /// An explicit touch: activity now, as if a session had just ended. Returns the
    /// activity sequence, this touch included.
    fn touch(&mut self, now: Instant) -> u64 {
        self.idle_since = now;
        self.activity_seq += 1;
        self.activity_seq
    }

    /// The number of sessions in flight changed: the last one ending starts the idle time.
    fn sessions_changed(&mut self, active: usize, now: Instant) {
        self.activity_seq += 1;
        if active == 0 {
            self.idle_since = now;
        }
    }

    /// On each tick: a stop that is due, first the maximum duration (even while busy),
    /// then the idle timeout, then the end of a drain.
    fn tick(&mut self, active: usize, now: Instant) -> Option<PolicyStop> {
        let busy = active > 0;
        if busy {
            self.idle_since = now;
        }
        if self.max_at.is_some_and(|t| now >= t) {
            Some(PolicyStop::MaxDuration)
        } else if !busy
            && self
                .idle_timeout
                .is_some_and(|t| now.duration_since(self.idle_since) >= t)
        {
            Some(PolicyStop::IdleTimeout)
        } else if self.draining && !busy {
            Some(PolicyStop::Drained)
        } else {
            None
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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use tokio::time::advance;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_session() {
        let mut p = Policies::new(Some(10), None, Instant::now());
        advance(9 * S).await;
        assert_eq!(p.tick(0, Instant::now()), None);
        advance(S).await;
        assert_eq!(p.tick(0, Instant::now()), Some(PolicyStop::IdleTimeout));

        // A session in flight keeps it alive, however long it runs...
        let mut p = Policies::new(Some(10), None, Instant::now());
        p.sessions_changed(1, Instant::now());
        advance(60 * S).await;
        assert_eq!(p.tick(1, Instant::now()), None);
        // ...and the idle time starts when the last one ends.
        advance(5 * S).await;
        p.sessions_changed(0, Instant::now());
        advance(9 * S).await;
        assert_eq!(p.tick(0, Instant::now()), None);
        advance(S).await;
        assert_eq!(p.tick(0, Instant::now()), Some(PolicyStop::IdleTimeout));

        // Without a timeout, never.
        let mut p = Policies::new(None, None, Instant::now());
        advance(365 * 24 * 3600 * S).await;
        assert_eq!(p.tick(0, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_touch_restarts_the_idle_clock() {
        let mut p = Policies::new(Some(10), None, Instant::now());
        advance(8 * S).await;
        assert_eq!(p.touch(Instant::now()), 1);
        advance(9 * S).await;
        assert_eq!(p.tick(0, Instant::now()), None, "9 s since the touch");
        p.sessions_changed(1, Instant::now());
        p.sessions_changed(0, Instant::now());
        assert_eq!(p.touch(Instant::now()), 4, "sessions count as activity too");
        advance(10 * S).await;
        assert_eq!(p.tick(0, Instant::now()), Some(PolicyStop::IdleTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_stops_even_a_busy_sandbox() {
        let mut p = Policies::new(Some(5), Some(30), Instant::now());
        for _ in 0..29 {
            advance(S).await;
            assert_eq!(p.tick(1, Instant::now()), None, "busy: not idle");
        }
        advance(S).await;
        assert_eq!(p.tick(1, Instant::now()), Some(PolicyStop::MaxDuration));
        // Max duration wins over an idle timeout due at the same time.
        let mut p = Policies::new(Some(30), Some(30), Instant::now());
        advance(30 * S).await;
        assert_eq!(p.tick(0, Instant::now()), Some(PolicyStop::MaxDuration));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_stops_when_the_last_session_ends() {
        let mut p = Policies::new(None, None, Instant::now());
        assert_eq!(p.tick(0, Instant::now()), None, "not draining");
        p.draining = true;
        advance(S).await;
        assert_eq!(p.tick(2, Instant::now()), None, "sessions still running");
        advance(100 * S).await;
        assert_eq!(p.tick(1, Instant::now()), None);
        p.sessions_changed(0, Instant::now());
        assert_eq!(p.tick(0, Instant::now()), Some(PolicyStop::Drained));
        assert_eq!(PolicyStop::Drained.reason(), "drained");
    }

    /// The main loop's own clock (its 500 ms tick) under the paused test clock: the idle
    /// timeout is seen at the first tick after it.
    #[tokio::test(start_paused = true)]
    async fn the_main_loop_tick_sees_the_idle_timeout() {
        let start = Instant::now();
        let mut p = Policies::new(Some(3), None, start);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let due = loop {
            tick.tick().await;
            if let Some(d) = p.tick(0, Instant::now()) {
                break d;
            }
        };
        assert_eq!(due, PolicyStop::IdleTimeout);
        assert_eq!(Instant::now() - start, 3 * S);
    }

    #[test]
    fn how_the_vm_ended_is_recorded() {
        let ok = Ok(ExitStatus::from_raw(0));
        let failed = Ok(ExitStatus::from_raw(1 << 8));
        let no_panic = || false;
        let stop = Ending::Stop("idle timeout");
        assert_eq!(
            outcome(Some(&stop), false, &ok, no_panic),
            (STOPPED, 0, "idle timeout".into())
        );
        assert_eq!(
            outcome(Some(&stop), true, &ok, no_panic),
            (
                STOPPED,
                EXIT_KILLED,
                "idle timeout (killed after the grace period)".into()
            )
        );
        assert_eq!(
            outcome(Some(&Ending::Kill), false, &failed, no_panic),
            (STOPPED, EXIT_KILLED, "killed".into())
        );
        assert_eq!(
            outcome(Some(&Ending::Protocol("bad".into())), false, &ok, no_panic),
            (CRASHED, 1, "protocol error: bad".into())
        );
        assert_eq!(
            outcome(None, false, &ok, no_panic),
            (STOPPED, 0, "guest powered off".into())
        );
        assert_eq!(
            outcome(None, false, &ok, || true),
            (CRASHED, 1, "kernel panic".into())
        );
        assert_eq!(
            outcome(None, false, &failed, no_panic),
            (CRASHED, 1, "VMM exited: exit status: 1".into())
        );
        // The kernel log is read only when the host did not end the VM itself.
        outcome(Some(&stop), false, &ok, || panic!("read the log"));
    }
}
