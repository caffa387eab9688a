//! Exec sessions. Each request becomes a child process whose output is relayed in
//! flow-controlled chunks; stdin, signals and terminal resizes arrive as session
//! messages. PID 1 reaps every child (also orphans re-parented to it) in one reaper
//! thread and hands exit statuses to the sessions that wait for them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use msb_protocol::{ExecRequest, Frame, Message, TtySize, INITIAL_WINDOW, MAX_CHUNK};

use crate::port::Port;
use crate::spawn::{self, Plan, Session};
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
    /// The base environment (a fork changes its HOSTNAME).
    env: Mutex<Vec<(String, String)>>,
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
            env: Mutex::new(env),
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

    /// A fork: later commands see `HOSTNAME` = `hostname`; the parent's sessions (ids
    /// below `first_id`) lose their stdin and their output goes nowhere (crate::port).
    pub fn forked(&self, hostname: &str, first_id: u32) {
        {
            let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
            env.retain(|(k, _)| k != "HOSTNAME");
            env.push(("HOSTNAME".into(), hostname.into()));
        }
        self.port.forget_ids_below(first_id);
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls.retain(|&id, c| {
            if id < first_id {
                // Output nobody reads: let it flow (to nowhere) rather than block the process.
                c.window.grant(u32::MAX);
            }
            id >= first_id
        });
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
            Message::Signal { signal } => match signal_target(c.pgid, signal) {
                SignalTarget::Cancel => c.window.close(),
                SignalTarget::Group(pgid) => {
                    // SAFETY: plain kill of the session's process group.
                    unsafe { libc::kill(-pgid, signal) };
                }
                SignalTarget::Nothing => {}
            },
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
        let base = self.env.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut env = crate::env::merge(&base, &req.env);
        add_scripts_to_path(&mut env);
        let cwd = working_dir(req.cwd.as_deref(), self.workdir.as_deref())?;
        let program = resolve_program(&req.cmd, &env)?;
        let mut ids = None;
        if let Some(user) = req.user.as_ref().or(self.user.as_ref()) {
            let (uid, gid, home) = resolve_user(user)?;
            ids = Some((uid, gid));
            if let Some(h) = home_from_passwd(&req.env, home) {
                env = crate::env::merge(&env, &[("HOME".into(), h)]);
            }
        }
        let argv: Vec<&str> = std::iter::once(req.cmd.as_str())
            .chain(req.args.iter().map(String::as_str))
            .collect();
        let mut plan = Plan::new(&program, &argv, &env).map_err(|_| {
            format!(
                "cannot start {}: a NUL byte in its arguments or environment",
                req.cmd
            )
        })?;
        plan.ids = ids;
        plan.rlimits = parse_rlimits(&req.rlimits)?;
        plan.cgroup = crate::memcg::group_dir();

        // stdio: a pseudo-terminal, or pipes. `theirs` are the child's ends: they go once
        // it has exec'd, or EOF never comes.
        let io = |e: std::io::Error| e.to_string();
        let mut pty_master: Option<OwnedFd> = None;
        let (mut stdin_w, mut stdout_r, mut stderr_r) = (None, None, None);
        let theirs: Vec<OwnedFd>;
        if let Some(size) = req.tty {
            let (master, slave) = open_pty(size)?;
            let slave = OwnedFd::from(slave);
            plan.stdio = [slave.as_raw_fd(); 3];
            plan.session = Session::Terminal;
            theirs = vec![slave];
            pty_master = Some(master);
        } else {
            let stdin = if req.stdin {
                let (r, w) = spawn::pipe().map_err(io)?;
                stdin_w = Some(w);
                r
            } else {
                spawn::dev_null().map_err(io)?
            };
            let (out_r, out_w) = spawn::pipe().map_err(io)?;
            let (err_r, err_w) = spawn::pipe().map_err(io)?;
            stdout_r = Some(out_r);
            stderr_r = Some(err_r);
            plan.stdio = [stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
            theirs = vec![stdin, out_w, err_w];
        }
        let tty = req.tty.is_some();

        let (tx, rx) = channel();
        let pid = {
            // Registered under the lock so the reaper cannot miss a fast exit.
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            // The child inherits our cwd. Setting it here (all spawns hold this lock, and
            // nothing else in the agent uses relative paths) keeps the child's work to
            // system calls.
            std::env::set_current_dir(&cwd).map_err(|e| format!("working directory {cwd}: {e}"))?;
            let pid = match spawn::spawn(&plan) {
                // A file without `#!` is run by /bin/sh, as execvp does.
                Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                    let mut argv = vec!["/bin/sh", program.as_str()];
                    argv.extend(req.args.iter().map(String::as_str));
                    plan.retarget("/bin/sh", &argv)
                        .map_err(|_| spawn_error(&req.cmd, &e))?;
                    spawn::spawn(&plan)
                }
                r => r,
            }
            .map_err(|e| spawn_error(&req.cmd, &e))?;
            w.insert(pid as i32, tx);
            self.spawned.notify_all();
            pid
        };
        drop(theirs);
        let window = Arc::new(Window::new(INITIAL_WINDOW));
        let pty = pty_master.map(Arc::new);

        // Stdin: a writer thread fed by the main loop, so a child that does not read its
        // stdin never blocks the agent.
        let stdin_target: Option<File> = match (&pty, stdin_w) {
            (Some(m), _) => Some(File::from(m.try_clone().map_err(|e| e.to_string())?)),
            (None, Some(s)) => Some(File::from(s)),
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
            if let Some(o) = stdout_r {
                outputs.push((File::from(o), Message::Stdout));
            }
            if let Some(e) = stderr_r {
                outputs.push((File::from(e), Message::Stderr));
            }
        }
        let me = self.clone();
        // One thread per session: relays the output, then reports the exit status.
        std::thread::spawn(move || {
            relay_outputs(outputs, &me.port, &window, id);
            let msg = exited(rx.recv().ok());
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
    let ws = winsize(size);
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

/// The kernel's terminal size for a requested one (rows and columns; no pixel size).
fn winsize(size: TtySize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_winsize(fd: RawFd, size: TtySize) {
    let ws = winsize(size);
    // SAFETY: ioctl with a valid winsize on our pty master.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// What a `Signal` for a session does.
#[derive(Debug, PartialEq)]
enum SignalTarget {
    /// An fs read has no process: any signal cancels it (its thread sees the window
    /// closed and ends the session with ECANCELED).
    Cancel,
    /// Signal this process group.
    Group(i32),
    /// Out of range, or no group that may be signalled: `kill(-1, ..)` would reach every
    /// process, and group 1 is the agent's own.
    Nothing,
}

fn signal_target(pgid: i32, signal: i32) -> SignalTarget {
    if pgid == 0 {
        SignalTarget::Cancel
    } else if (1..=64).contains(&signal) && pgid > 1 {
        SignalTarget::Group(pgid)
    } else {
        SignalTarget::Nothing
    }
}

/// The command's working directory: its own, else the sandbox's workdir, else `/`. It
/// must be an existing directory.
fn working_dir(cwd: Option<&str>, workdir: Option<&str>) -> Result<String, String> {
    let cwd = cwd.or(workdir).unwrap_or("/").to_string();
    if !fs::metadata(&cwd).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(format!("working directory {cwd} does not exist"));
    }
    Ok(cwd)
}

/// HOME from the user's passwd entry, unless the request sets HOME itself.
fn home_from_passwd(req_env: &[(String, String)], home: Option<String>) -> Option<String> {
    home.filter(|_| !req_env.iter().any(|(k, _)| k == "HOME"))
}

/// The `Failed` reason for a command that could not be started.
fn spawn_error(cmd: &str, e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => format!("command not found: {cmd}"),
        ErrorKind::PermissionDenied => format!("permission denied: {cmd}"),
        _ => format!("cannot start {cmd}: {e}"),
    }
}

/// The session's last message. `None`: the reaper never reported the child.
fn exited(status: Option<ExitStatus>) -> Message {
    Message::Exited {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    }
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
    // /etc/group is read only for a group given by name.
    parse_user(user, &passwd, || {
        fs::read_to_string("/etc/group").unwrap_or_default()
    })
}

/// [`resolve_user`] over the text of /etc/passwd, and of /etc/group when `user` names a
/// group: `(uid, gid, home)`. A uid without a passwd entry gets `gid = uid` and no home.
fn parse_user(
    user: &str,
    passwd: &str,
    group: impl FnOnce() -> String,
) -> Result<(u32, u32, Option<String>), String> {
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
                let groups = group();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "msb-agent-test-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
        fn file(&self, name: &str, mode: u32) -> String {
            let p = self.0.join(name);
            fs::write(&p, b"#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p.to_str().unwrap().to_string()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    // ---- rlimits ----

    #[test]
    fn every_protocol_rlimit_name_is_mapped() {
        for name in msb_protocol::RLIMIT_NAMES {
            assert!(
                parse_rlimits(&[(name.to_string(), 1)]).is_ok(),
                "{name} is in RLIMIT_NAMES but the agent does not map it"
            );
        }
    }

    #[test]
    fn rlimit_names_map_to_their_resources() {
        let names = [
            ("nofile", libc::RLIMIT_NOFILE),
            ("nproc", libc::RLIMIT_NPROC),
            ("as", libc::RLIMIT_AS),
            ("cpu", libc::RLIMIT_CPU),
            ("fsize", libc::RLIMIT_FSIZE),
            ("core", libc::RLIMIT_CORE),
            ("stack", libc::RLIMIT_STACK),
            ("memlock", libc::RLIMIT_MEMLOCK),
            ("data", libc::RLIMIT_DATA),
        ];
        let req: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.to_string(), 100 + i as u64))
            .collect();
        let want: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (*r, 100 + i as u64))
            .collect();
        // Same order as asked (setrlimit runs in this order), values untouched.
        assert_eq!(parse_rlimits(&req).unwrap(), want);
        assert_eq!(parse_rlimits(&[]).unwrap(), vec![]);
    }

    #[test]
    fn rlimit_u64_max_is_rlim_infinity_and_zero_stays_zero() {
        assert_eq!(libc::RLIM_INFINITY, u64::MAX);
        let got = parse_rlimits(&kv_u64(&[("nofile", u64::MAX), ("core", 0)])).unwrap();
        assert_eq!(
            got,
            vec![
                (libc::RLIMIT_NOFILE, libc::RLIM_INFINITY),
                (libc::RLIMIT_CORE, 0)
            ]
        );
    }

    fn kv_u64(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn unknown_rlimit_names_fail_the_whole_request() {
        for bad in ["NOFILE", "rss", "", "nofile "] {
            assert_eq!(
                parse_rlimits(&kv_u64(&[("nofile", 10), (bad, 1)])),
                Err(format!("unknown resource limit: {bad}"))
            );
        }
    }

    // ---- users ----

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:100:Alice:/home/alice:/bin/sh
short:x:1001:1001
broken:x:abc:100::/home/broken:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
users:x:100:alice
wheel:x:10:alice
";

    fn user(u: &str) -> Result<(u32, u32, Option<String>), String> {
        parse_user(u, PASSWD, || GROUP.to_string())
    }

    #[test]
    fn user_by_name_takes_uid_gid_and_home_from_passwd() {
        assert_eq!(user("alice"), Ok((1000, 100, Some("/home/alice".into()))));
        assert_eq!(user("root"), Ok((0, 0, Some("/root".into()))));
        assert_eq!(user("nobody"), Err("unknown user: nobody".into()));
        // Lines with fewer than 6 fields, or a uid that is not a number, do not count.
        assert_eq!(user("short"), Err("unknown user: short".into()));
        assert_eq!(user("broken"), Err("unknown user: broken".into()));
    }

    #[test]
    fn user_by_uid_uses_the_passwd_entry_if_any_else_gid_equals_uid() {
        assert_eq!(user("1000"), Ok((1000, 100, Some("/home/alice".into()))));
        assert_eq!(user("1"), Ok((1, 1, Some("/usr/sbin".into()))));
        assert_eq!(user("4242"), Ok((4242, 4242, None)));
        // No passwd file at all (a minimal image): numbers still work, names do not.
        let none = |u: &str| parse_user(u, "", String::new);
        assert_eq!(none("0"), Ok((0, 0, None)));
        assert_eq!(none("65534:65534"), Ok((65534, 65534, None)));
        assert_eq!(none("root"), Err("unknown user: root".into()));
    }

    #[test]
    fn user_with_group_overrides_the_passwd_gid() {
        assert_eq!(user("alice:0"), Ok((1000, 0, Some("/home/alice".into()))));
        assert_eq!(user("1000:10"), Ok((1000, 10, Some("/home/alice".into()))));
        assert_eq!(user("4242:7"), Ok((4242, 7, None)));
        assert_eq!(
            user("alice:wheel"),
            Ok((1000, 10, Some("/home/alice".into())))
        );
        assert_eq!(user("4242:users"), Ok((4242, 100, None)));
        assert_eq!(user("alice:staff"), Err("unknown group: staff".into()));
        assert_eq!(user("alice:"), Err("unknown group: ".into()));
        // The user is checked first.
        assert_eq!(user("nobody:0"), Err("unknown user: nobody".into()));
    }

    #[test]
    fn group_file_is_read_only_for_a_group_name() {
        let read = std::cell::Cell::new(0);
        let count = || {
            read.set(read.get() + 1);
            GROUP.to_string()
        };
        parse_user("alice", PASSWD, count).unwrap();
        parse_user("alice:10", PASSWD, count).unwrap();
        assert_eq!(read.get(), 0);
        parse_user("alice:wheel", PASSWD, count).unwrap();
        assert_eq!(read.get(), 1);
    }

    #[test]
    fn home_from_passwd_yields_to_a_home_in_the_request() {
        let home = || Some("/home/alice".to_string());
        assert_eq!(home_from_passwd(&[], home()), home());
        assert_eq!(home_from_passwd(&kv(&[("PATH", "/bin")]), home()), home());
        assert_eq!(home_from_passwd(&kv(&[("HOME", "/tmp")]), home()), None);
        // An empty HOME is still the request's own choice.
        assert_eq!(home_from_passwd(&kv(&[("HOME", "")]), home()), None);
        assert_eq!(home_from_passwd(&[], None), None);
    }

    // ---- cwd, PATH, program ----

    #[test]
    fn working_dir_prefers_the_request_then_the_workdir_then_root() {
        let d = TempDir::new("cwd");
        let w = TempDir::new("workdir");
        assert_eq!(
            working_dir(Some(d.path()), Some(w.path())),
            Ok(d.path().into())
        );
        assert_eq!(working_dir(None, Some(w.path())), Ok(w.path().into()));
        assert_eq!(working_dir(None, None), Ok("/".into()));
    }

    #[test]
    fn working_dir_must_be_an_existing_directory() {
        let d = TempDir::new("cwd-missing");
        let file = d.file("f", 0o644);
        let missing = format!("{}/nope", d.path());
        for bad in [missing.as_str(), file.as_str(), ""] {
            assert_eq!(
                working_dir(Some(bad), Some(d.path())),
                Err(format!("working directory {bad} does not exist"))
            );
        }
        // A missing workdir fails too; it is not skipped for `/`.
        assert_eq!(
            working_dir(None, Some(&missing)),
            Err(format!("working directory {missing} does not exist"))
        );
    }

    #[test]
    fn scripts_dir_goes_at_the_end_of_the_last_path_once() {
        let mut env = kv(&[("PATH", "/a"), ("X", "1"), ("PATH", "/usr/bin:/bin")]);
        add_scripts_to_path(&mut env);
        let want = kv(&[
            ("PATH", "/a"),
            ("X", "1"),
            ("PATH", &format!("/usr/bin:/bin:{SCRIPTS_DIR}")),
        ]);
        assert_eq!(env, want);
        add_scripts_to_path(&mut env);
        assert_eq!(env, want, "added twice");

        let mut already = kv(&[("PATH", &format!("{SCRIPTS_DIR}:/bin"))]);
        add_scripts_to_path(&mut already);
        assert_eq!(already, kv(&[("PATH", &format!("{SCRIPTS_DIR}:/bin"))]));

        // No PATH: none is made up.
        let mut none = kv(&[("HOME", "/root")]);
        add_scripts_to_path(&mut none);
        assert_eq!(none, kv(&[("HOME", "/root")]));
    }

    #[test]
    fn program_is_found_on_the_last_path_and_must_be_an_executable_file() {
        let a = TempDir::new("path-a");
        let b = TempDir::new("path-b");
        a.file("tool", 0o644); // not executable: skipped
        fs::create_dir(format!("{}/sub", a.path())).unwrap(); // a directory: skipped
        let tool_b = b.file("tool", 0o755);
        b.file("sub", 0o700);
        let path = format!(":{}::{}", a.path(), b.path());
        let env = kv(&[("PATH", "/nonexistent"), ("PATH", &path)]);
        assert_eq!(resolve_program("tool", &env), Ok(tool_b));
        assert_eq!(
            resolve_program("sub", &env),
            Ok(format!("{}/sub", b.path()))
        );
        assert_eq!(
            resolve_program("missing", &env),
            Err("command not found: missing".into())
        );
        // Only the last PATH counts.
        let first_only = kv(&[("PATH", b.path()), ("PATH", "/nonexistent")]);
        assert_eq!(
            resolve_program("tool", &first_only),
            Err("command not found: tool".into())
        );
    }

    #[test]
    fn program_with_a_slash_is_taken_as_is_and_empty_is_refused() {
        assert_eq!(resolve_program("./x", &[]), Ok("./x".into()));
        assert_eq!(resolve_program("/no/such", &[]), Ok("/no/such".into()));
        assert_eq!(resolve_program("", &[]), Err("empty command".into()));
    }

    #[test]
    fn program_without_path_is_looked_up_in_usr_bin_and_bin() {
        let sh = resolve_program("sh", &kv(&[("HOME", "/")])).unwrap();
        assert!(sh == "/usr/bin/sh" || sh == "/bin/sh", "{sh}");
    }

    // ---- starting, signals, exit ----

    #[test]
    fn spawn_errors_name_the_command() {
        let e = |kind| std::io::Error::from(kind);
        assert_eq!(
            spawn_error("foo", &e(ErrorKind::NotFound)),
            "command not found: foo"
        );
        assert_eq!(
            spawn_error("foo", &e(ErrorKind::PermissionDenied)),
            "permission denied: foo"
        );
        let other = std::io::Error::from_raw_os_error(libc::E2BIG);
        assert_eq!(
            spawn_error("foo", &other),
            format!("cannot start foo: {other}")
        );
    }

    #[test]
    fn signals_go_to_the_group_never_to_pid_1_or_everyone() {
        assert_eq!(signal_target(0, 9), SignalTarget::Cancel);
        assert_eq!(signal_target(0, 0), SignalTarget::Cancel);
        assert_eq!(signal_target(42, 15), SignalTarget::Group(42));
        assert_eq!(signal_target(42, 1), SignalTarget::Group(42));
        assert_eq!(signal_target(42, 64), SignalTarget::Group(42));
        for (pgid, sig) in [(42, 0), (42, 65), (42, -9), (1, 9), (-1, 9), (-42, 9)] {
            assert_eq!(
                signal_target(pgid, sig),
                SignalTarget::Nothing,
                "{pgid} {sig}"
            );
        }
    }

    #[test]
    fn exit_status_becomes_code_or_signal() {
        let st = ExitStatus::from_raw;
        let ex = |code, signal| Message::Exited { code, signal };
        assert_eq!(exited(Some(st(0))), ex(Some(0), None));
        assert_eq!(exited(Some(st(3 << 8))), ex(Some(3), None));
        assert_eq!(exited(Some(st(255 << 8))), ex(Some(255), None));
        assert_eq!(exited(Some(st(libc::SIGKILL))), ex(None, Some(9)));
        assert_eq!(exited(Some(st(libc::SIGSEGV | 0x80))), ex(None, Some(11)));
        assert_eq!(exited(None), ex(None, None));
    }

    // ---- terminal size ----

    #[test]
    fn winsize_carries_rows_and_columns_not_swapped() {
        let ws = winsize(TtySize { rows: 24, cols: 80 });
        assert_eq!(
            (ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel),
            (24, 80, 0, 0)
        );
        let ws = winsize(TtySize {
            rows: u16::MAX,
            cols: 1,
        });
        assert_eq!((ws.ws_row, ws.ws_col), (u16::MAX, 1));
    }

    fn get_winsize(fd: RawFd) -> (u16, u16) {
        let mut ws = winsize(TtySize { rows: 0, cols: 0 });
        // SAFETY: ioctl with a valid out-pointer on our own terminal fd.
        assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) }, 0);
        (ws.ws_row, ws.ws_col)
    }

    #[test]
    fn pty_opens_at_the_requested_size_and_resizes() {
        let (master, slave) = open_pty(TtySize {
            rows: 33,
            cols: 120,
        })
        .unwrap();
        assert_eq!(get_winsize(slave.as_raw_fd()), (33, 120));
        set_winsize(master.as_raw_fd(), TtySize { rows: 50, cols: 7 });
        assert_eq!(get_winsize(slave.as_raw_fd()), (50, 7));
        // The master is close-on-exec (the child only gets the slave).
        // SAFETY: fcntl on our own fd.
        let fl = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fl & libc::FD_CLOEXEC, 0);
    }
}
