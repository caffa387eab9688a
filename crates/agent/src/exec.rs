//! Exec sessions. Each request becomes a child process whose output is relayed in
//! flow-controlled chunks; stdin, signals and terminal resizes arrive as session
//! messages. PID 1 reaps every child (also orphans re-parented to it) in one reaper
//! thread and hands exit statuses to the sessions that wait for them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use msb_protocol::{ExecRequest, Frame, Message, TtySize, INITIAL_WINDOW, MAX_CHUNK};

use crate::port::Port;
use crate::window::{send_windowed, Window};

type Waiters = HashMap<i32, Sender<ExitStatus>>;
/// Builds the message that carries a chunk of one output stream.
type Wrap = fn(Vec<u8>) -> Message;

/// Where a session's stdin goes.
pub enum Input {
    Data(Vec<u8>),
    Close,
}

/// What the main loop needs to steer a running session.
pub struct Control {
    /// Process group to signal (the child is its leader); 0 for sessions without one.
    pub(crate) pgid: i32,
    pub(crate) stdin: Option<Sender<Input>>,
    pub(crate) window: Arc<Window>,
    pub(crate) pty: Option<Arc<OwnedFd>>,
}

pub struct Sessions {
    port: Arc<Port>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    waiters: Mutex<Waiters>,
    spawned: Condvar,
    pub(crate) controls: Mutex<HashMap<u32, Control>>,
}

/// Directory of `.script()` files; on every command's PATH.
pub const SCRIPTS_DIR: &str = "/.msb/scripts";

impl Sessions {
    pub fn start(
        port: Arc<Port>,
        env: Vec<(String, String)>,
        workdir: Option<String>,
        user: Option<String>,
    ) -> Arc<Sessions> {
        let s = Arc::new(Sessions {
            port,
            env,
            workdir,
            user,
            waiters: Mutex::new(HashMap::new()),
            spawned: Condvar::new(),
            controls: Mutex::new(HashMap::new()),
        });
        let reaper = s.clone();
        std::thread::spawn(move || reaper.reap());
        s
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Register a session the main loop routes input to. False when the id is in use.
    pub(crate) fn register(&self, id: u32, c: Control) -> bool {
        let mut m = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        if m.contains_key(&id) {
            return false;
        }
        m.insert(id, c);
        true
    }

    pub(crate) fn unregister(&self, id: u32) {
        if let Some(c) = self
            .controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            c.window.close();
        }
    }

    fn reap(&self) {
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on any child.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid < 0 {
                // No children: sleep until a spawn registers one (or reap orphans later).
                let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                if w.is_empty() {
                    let _ = self.spawned.wait_timeout(w, Duration::from_secs(1));
                }
                continue;
            }
            let tx = self
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid);
            if let Some(tx) = tx {
                let _ = tx.send(ExitStatus::from_raw(status));
            }
        }
    }

    pub fn spawn(self: &Arc<Self>, id: u32, req: ExecRequest) {
        if self
            .controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
        {
            let _ = self.port.send(&Frame::new(
                id,
                Message::Failed {
                    reason: "session id in use".into(),
                },
            ));
            return;
        }
        if let Err(reason) = self.try_spawn(id, &req) {
            let _ = self.port.send(&Frame::new(id, Message::Failed { reason }));
        }
    }

    /// A message for a running session (stdin, signal, resize, credit).
    pub fn input(&self, id: u32, msg: Message) {
        let controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = controls.get(&id) else { return };
        match msg {
            Message::Stdin(data) => {
                if let Some(tx) = &c.stdin {
                    let _ = tx.send(Input::Data(data));
                }
            }
            Message::StdinClose => {
                if let Some(tx) = &c.stdin {
                    let _ = tx.send(Input::Close);
                }
            }
            // An fs read has no process: any signal cancels it (its thread sees the
            // window closed and ends the session with ECANCELED).
            Message::Signal { .. } if c.pgid == 0 => c.window.close(),
            Message::Signal { signal } if (1..=64).contains(&signal) && c.pgid > 1 => {
                // SAFETY: plain kill of the session's process group.
                unsafe { libc::kill(-c.pgid, signal) };
            }
            Message::Resize { rows, cols } => {
                if let Some(pty) = &c.pty {
                    set_winsize(pty.as_raw_fd(), TtySize { rows, cols });
                }
            }
            Message::Credit { bytes } => c.window.grant(bytes),
            _ => {}
        }
    }

    fn try_spawn(self: &Arc<Self>, id: u32, req: &ExecRequest) -> Result<(), String> {
        let mut env = crate::env::merge(&self.env, &req.env);
        add_scripts_to_path(&mut env);
        let cwd = req
            .cwd
            .clone()
            .or_else(|| self.workdir.clone())
            .unwrap_or_else(|| "/".into());
        if !fs::metadata(&cwd).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(format!("working directory {cwd} does not exist"));
        }
        // Resolving the program here (not in std) keeps std on its posix_spawn path, which
        // it leaves for fork when PATH was changed and the program has no '/'.
        let program = resolve_program(&req.cmd, &env)?;
        let mut cmd = Command::new(&program);
        cmd.arg0(&req.cmd).args(&req.args).env_clear().envs(env);
        if let Some(user) = req.user.as_ref().or(self.user.as_ref()) {
            let (uid, gid, home) = resolve_user(user)?;
            cmd.uid(uid).gid(gid);
            if let Some(h) = home {
                if !req.env.iter().any(|(k, _)| k == "HOME") {
                    cmd.env("HOME", h);
                }
            }
        }
        let rlimits = parse_rlimits(&req.rlimits)?;

        // stdio: a pseudo-terminal, or pipes.
        let mut pty_master: Option<OwnedFd> = None;
        if let Some(size) = req.tty {
            let (master, slave) = open_pty(size)?;
            let slave_fd = slave.as_raw_fd();
            cmd.stdin(Stdio::from(slave.try_clone().map_err(|e| e.to_string())?))
                .stdout(Stdio::from(slave.try_clone().map_err(|e| e.to_string())?))
                .stderr(Stdio::from(slave));
            let _ = slave_fd;
            pty_master = Some(master);
        } else {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
        let tty = req.tty.is_some();
        if tty || !rlimits.is_empty() {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    for &(res, n) in &rlimits {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(res, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if tty {
                        // Own session with the terminal as its controlling terminal.
                        libc::setsid();
                        libc::ioctl(0, libc::TIOCSCTTY, 0);
                    } else {
                        libc::setpgid(0, 0);
                    }
                    Ok(())
                });
            }
        } else {
            cmd.process_group(0);
        }

        let (tx, rx) = channel();
        let mut child = {
            // Registered under the lock so the reaper cannot miss a fast exit.
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            // The child inherits our cwd. Setting it here (all spawns hold this lock, and
            // nothing else in the agent uses relative paths) instead of with current_dir()
            // keeps std on its posix_spawn (vfork) path: a static binary cannot look up
            // posix_spawn_file_actions_addchdir_np, and fork is slow under emulation.
            std::env::set_current_dir(&cwd).map_err(|e| format!("working directory {cwd}: {e}"))?;
            let child = cmd.spawn().map_err(|e| match e.kind() {
                ErrorKind::NotFound => format!("command not found: {}", req.cmd),
                ErrorKind::PermissionDenied => format!("permission denied: {}", req.cmd),
                _ => format!("cannot start {}: {e}", req.cmd),
            })?;
            w.insert(child.id() as i32, tx);
            self.spawned.notify_all();
            child
        };
        // The command line's copy of the slave end must go, or EOF never comes.
        drop(cmd);
        let pid = child.id();
        let window = Arc::new(Window::new(INITIAL_WINDOW));
        let pty = pty_master.map(Arc::new);

        // Stdin: a writer thread fed by the main loop, so a child that does not read its
        // stdin never blocks the agent.
        let stdin_target: Option<File> = match (&pty, child.stdin.take()) {
            (Some(m), _) => Some(File::from(m.try_clone().map_err(|e| e.to_string())?)),
            (None, Some(s)) => Some(File::from(OwnedFd::from(s))),
            (None, None) => None,
        };
        let stdin_tx = stdin_target.map(|f| {
            let (itx, irx) = channel::<Input>();
            let port = self.port.clone();
            std::thread::spawn(move || feed_stdin(f, irx, tty, &port, id));
            itx
        });
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Control {
                    pgid: pid as i32,
                    stdin: stdin_tx,
                    window: window.clone(),
                    pty: pty.clone(),
                },
            );
        self.port.send(&Frame::new(id, Message::Started { pid }))?;

        let mut outputs: Vec<(File, Wrap)> = Vec::new();
        if let Some(m) = &pty {
            outputs.push((
                File::from(m.try_clone().map_err(|e| e.to_string())?),
                Message::Stdout,
            ));
        } else {
            if let Some(o) = child.stdout.take() {
                outputs.push((File::from(OwnedFd::from(o)), Message::Stdout));
            }
            if let Some(e) = child.stderr.take() {
                outputs.push((File::from(OwnedFd::from(e)), Message::Stderr));
            }
        }
        let me = self.clone();
        // One thread per session: relays the output, then reports the exit status.
        std::thread::spawn(move || {
            relay_outputs(outputs, &me.port, &window, id);
            let status = rx.recv().ok();
            let msg = Message::Exited {
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
            };
            me.controls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            window.close();
            let _ = me.port.send(&Frame::new(id, msg));
        });
        Ok(())
    }
}

/// Write stdin as it comes, returning credit to the host for each chunk written (the
/// host never has more than a window of stdin in flight).
fn feed_stdin(mut f: File, rx: Receiver<Input>, tty: bool, port: &Port, id: u32) {
    let mut broken = false;
    while let Ok(msg) = rx.recv() {
        match msg {
            Input::Data(d) => {
                // After EPIPE the data is dropped, but credit still flows so the host's
                // writer never hangs on a child that stopped reading.
                if !broken && f.write_all(&d).is_err() {
                    broken = true;
                }
                let _ = port.send(&Frame::new(
                    id,
                    Message::Credit {
                        bytes: d.len() as u32 + msb_protocol::FRAME_COST,
                    },
                ));
            }
            Input::Close => {
                if tty {
                    // A terminal has no EOF of its own: send the EOF character (^D).
                    let _ = f.write_all(&[4]);
                }
                return;
            }
        }
    }
}

/// Copy the session's output to the port until every stream reached EOF. Writing waits
/// for the host's credit, which is what slows a fast producer down.
fn relay_outputs(mut pipes: Vec<(File, Wrap)>, port: &Port, window: &Window, id: u32) {
    for (f, _) in &pipes {
        // SAFETY: fcntl on our own open fd.
        unsafe {
            let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let mut buf = vec![0u8; MAX_CHUNK];
    while !pipes.is_empty() {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|(f, _)| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut closed = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            let (file, wrap) = &mut pipes[i];
            // Gather what is there (up to a full chunk) before sending: a producer that
            // writes in small pieces still travels in large frames.
            let mut filled = 0;
            let mut eof = false;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // On a terminal, EIO means the last holder of the slave went away.
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            if filled > 0 && !send_windowed(port, window, id, &buf[..filled], *wrap) {
                return;
            }
            if eof {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
        }
    }
}

fn open_pty(size: TtySize) -> Result<(OwnedFd, File), String> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers are valid; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot open a terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: both fds were just opened and are ours.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), File::from_raw_fd(slave)) };
    // SAFETY: setting close-on-exec on our own fd.
    unsafe { libc::fcntl(m.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok((m, s))
}

fn set_winsize(fd: RawFd, size: TtySize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ioctl with a valid winsize on our pty master.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn parse_rlimits(list: &[(String, u64)]) -> Result<Vec<(libc::__rlimit_resource_t, u64)>, String> {
    list.iter()
        .map(|(name, n)| {
            let res = match name.as_str() {
                "nofile" => libc::RLIMIT_NOFILE,
                "nproc" => libc::RLIMIT_NPROC,
                "as" => libc::RLIMIT_AS,
                "cpu" => libc::RLIMIT_CPU,
                "fsize" => libc::RLIMIT_FSIZE,
                "core" => libc::RLIMIT_CORE,
                "stack" => libc::RLIMIT_STACK,
                "memlock" => libc::RLIMIT_MEMLOCK,
                "data" => libc::RLIMIT_DATA,
                other => return Err(format!("unknown resource limit: {other}")),
            };
            Ok((res, *n))
        })
        .collect()
}

/// Put the scripts directory at the end of PATH (scripts never shadow system tools).
fn add_scripts_to_path(env: &mut [(String, String)]) {
    if let Some((_, v)) = env.iter_mut().rev().find(|(k, _)| k == "PATH") {
        if !v.split(':').any(|d| d == SCRIPTS_DIR) {
            v.push(':');
            v.push_str(SCRIPTS_DIR);
        }
    }
}

/// Find `cmd` on the PATH of the command's environment, as execvp would.
fn resolve_program(cmd: &str, env: &[(String, String)]) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    if cmd.is_empty() {
        return Err("empty command".into());
    }
    if cmd.contains('/') {
        return Ok(cmd.to_string());
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/bin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{cmd}");
        if let Ok(m) = fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(format!("command not found: {cmd}"))
}

/// `name`, `uid` or `uid:gid`; names are looked up in the guest's /etc/passwd.
fn resolve_user(user: &str) -> Result<(u32, u32, Option<String>), String> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32, String)> {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 6 && pred(f))
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_string())))
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, default_gid, home) = if let Ok(uid) = u.parse::<u32>() {
        match entry(&|f| f[2] == u) {
            Some((_, gid, home)) => (uid, gid, Some(home)),
            None => (uid, uid, None),
        }
    } else {
        let (uid, gid, home) = entry(&|f| f[0] == u).ok_or_else(|| format!("unknown user: {u}"))?;
        (uid, gid, Some(home))
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = fs::read_to_string("/etc/group").unwrap_or_default();
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("unknown group: {g}"))?
            }
        },
        None => default_gid,
    };
    Ok((uid, gid, home))
}
