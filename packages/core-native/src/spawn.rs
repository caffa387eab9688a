//! Starting msb-runtime and removing a stopped sandbox's state.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use msb_contract::RuntimeConfig;
use napi::Result;
use napi_derive::napi;

use crate::err;
use msb_contract::ErrorCode;

#[napi(object)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub socket_path: String,
    pub sandbox_dir: String,
}

/// Write ends of attach pipes, by runtime pid. Kept for the life of this process (or
/// until the sandbox is released): when the process dies the kernel closes them and each
/// attached runtime stops its VM.
fn attach_pipes() -> &'static Mutex<HashMap<u32, OwnedFd>> {
    static PIPES: OnceLock<Mutex<HashMap<u32, OwnedFd>>> = OnceLock::new();
    PIPES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Start msb-runtime for a sandbox and wait until the guest is ready. `config_json` is a
/// `RuntimeConfig` as JSON; it goes to the runtime's stdin as is.
#[napi(ts_args_type = "configJson: string /* JSON of RuntimeConfig */")]
pub async fn start_sandbox(config_json: String) -> Result<RuntimeInfo> {
    tokio::task::spawn_blocking(move || start_blocking(config_json))
        .await
        .map_err(|e| err(ErrorCode::Runtime, e))?
}

fn start_blocking(config_json: String) -> Result<RuntimeInfo> {
    // It may carry the secrets' values (for the runtime's stdin): wiped when dropped.
    let config_json = zeroize::Zeroizing::new(config_json);
    let f: RuntimeConfig =
        serde_json::from_str(config_json.as_str()).map_err(|e| err(ErrorCode::InvalidConfig, e))?;
    if !f.runtime_path.is_file() {
        return Err(err(
            ErrorCode::Runtime,
            format!(
                "msb-runtime not found at {}: run `npm run setup` to build it (`msb doctor` checks the host)",
                f.runtime_path.display()
            ),
        ));
    }
    let mut cmd = Command::new(&f.runtime_path);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let pipe = if f.attached {
        Some(pipe_cloexec().map_err(|e| err(ErrorCode::Runtime, e))?)
    } else {
        None
    };
    if let Some((rd, _)) = &pipe {
        let fd = rd.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; the new fd 3 is not close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err(ErrorCode::Runtime, format!("cannot start msb-runtime: {e}")))?;
    let pid = child.id();
    if let Some((rd, wr)) = pipe {
        drop(rd);
        attach_pipes().lock().unwrap().insert(pid, wr);
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config_json.as_bytes());
    }
    let stdout = child.stdout.take();
    // Reap the runtime whenever it exits, so it never lingers as a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
        attach_pipes().lock().unwrap().remove(&pid);
    });

    let mut line = String::new();
    if let Some(out) = stdout {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut l = String::new();
            let _ = BufReader::new(out).read_line(&mut l);
            let _ = tx.send(l);
        });
        // The runtime enforces the boot timeout itself; this is a backstop.
        line = rx
            .recv_timeout(Duration::from_millis(f.boot_timeout_ms) + Duration::from_secs(30))
            .unwrap_or_default();
    }
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or(serde_json::Value::Null);
    if let Some(ready) = v.get("ready") {
        return Ok(RuntimeInfo {
            pid,
            socket_path: ready["socket"].as_str().unwrap_or_default().to_string(),
            sandbox_dir: f
                .msb_home
                .join("sandboxes")
                .join(&f.name)
                .display()
                .to_string(),
        });
    }
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    if let Some(e) = v.get("error") {
        let code = e["code"]
            .as_str()
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::Runtime);
        return Err(err(code, e["message"].as_str().unwrap_or("unknown error")));
    }
    Err(err(
        ErrorCode::Runtime,
        "msb-runtime exited without reporting readiness",
    ))
}

/// Release an attached sandbox: it keeps running after this process exits.
#[napi]
pub fn release_attachment(runtime_pid: u32) -> bool {
    attach_pipes()
        .lock()
        .unwrap()
        .remove(&runtime_pid)
        .is_some()
}
