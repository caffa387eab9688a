//! Exec sessions. Each request becomes a child process whose stdout and stderr are
//! relayed in chunks; PID 1 reaps every child (also orphans re-parented to it) in one
//! reaper thread and hands exit statuses to the sessions that wait for them.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use msb_protocol::{ExecRequest, Frame, Message, MAX_CHUNK};

use crate::port::Port;

type Waiters = HashMap<i32, Sender<ExitStatus>>;

pub struct Sessions {
    port: Arc<Port>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    waiters: Mutex<Waiters>,
    spawned: Condvar,
}

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
        });
        let reaper = s.clone();
        std::thread::spawn(move || reaper.reap());
        s
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
        if let Err(reason) = self.try_spawn(id, &req) {
            let _ = self.port.send(&Frame::new(id, Message::Failed { reason }));
        }
    }

    fn try_spawn(self: &Arc<Self>, id: u32, req: &ExecRequest) -> Result<(), String> {
        let mut env = self.env.clone();
        for (k, v) in &req.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
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
        cmd.arg0(&req.cmd)
            .args(&req.args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(user) = req.user.as_ref().or(self.user.as_ref()) {
            let (uid, gid, home) = resolve_user(user)?;
            cmd.uid(uid).gid(gid);
            if let Some(h) = home {
                if !req.env.iter().any(|(k, _)| k == "HOME") {
                    cmd.env("HOME", h);
                }
            }
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
        self.port
            .send(&Frame::new(id, Message::Started { pid: child.id() }))?;

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let port = self.port.clone();
        // One thread per session: relays both pipes, then reports the exit status.
        std::thread::spawn(move || {
            relay_pipes(stdout, stderr, &port, id);
            let status = rx.recv().ok();
            let msg = Message::Exited {
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
            };
            let _ = port.send(&Frame::new(id, msg));
        });
        Ok(())
    }
}

/// Copy stdout and stderr to the port in chunks until both reach EOF. Writing to the
/// port blocks while the host is not reading, which is what slows a fast producer down.
fn relay_pipes(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>, port: &Port, id: u32) {
    type Wrap = fn(Vec<u8>) -> Message;
    let mut pipes: Vec<(std::fs::File, Wrap)> = Vec::new();
    if let Some(o) = stdout {
        pipes.push((std::fs::File::from(OwnedFd::from(o)), Message::Stdout));
    }
    if let Some(e) = stderr {
        pipes.push((std::fs::File::from(OwnedFd::from(e)), Message::Stderr));
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
            match file.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if port.send(&Frame::new(id, wrap(buf[..n].to_vec()))).is_err() {
                        return;
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
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
        Some(g) => g
            .parse::<u32>()
            .map_err(|_| format!("invalid group in user spec: {user}"))?,
        None => default_gid,
    };
    Ok((uid, gid, home))
}
