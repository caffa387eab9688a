//! Sandbox records from the store, for `Sandbox.get/list/remove` and killing a sandbox
//! whose runtime may not answer.

use std::time::Duration;

use msb_protocol::{Frame, Message, CHANNEL_ID, PROTOCOL_VERSION};
use msb_store::{remove_sandbox_state, runtime_alive, try_lock, Record, Store, STOPPED};
use napi::Result;
use napi_derive::napi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::err;
use msb_contract::ErrorCode;

#[napi(object)]
pub struct SandboxRecord {
    pub name: String,
    #[napi(ts_type = "SandboxStatus")]
    pub status: String,
    pub config_json: String,
    /// Milliseconds since the epoch.
    pub created_at: f64,
    pub updated_at: f64,
    pub runtime_pid: Option<u32>,
    pub socket_path: Option<String>,
    pub exit_code: Option<i32>,
    pub exit_reason: Option<String>,
}

impl From<Record> for SandboxRecord {
    fn from(r: Record) -> Self {
        SandboxRecord {
            name: r.name,
            status: r.status,
            config_json: r.config_json,
            created_at: r.created_at_ms as f64,
            updated_at: r.updated_at_ms as f64,
            runtime_pid: r.runtime_pid.map(|p| p as u32),
            socket_path: r.socket_path,
            exit_code: r.exit_code.map(|c| c as i32),
            exit_reason: r.exit_reason,
        }
    }
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidConfig,
            format!("name: invalid sandbox name '{name}'"),
        ))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(ErrorCode::Runtime, e))?
}

fn open(home: &str) -> Result<Store> {
    Store::open(home).map_err(|e| err(ErrorCode::Runtime, e))
}

fn not_found(name: &str) -> napi::Error {
    err(
        ErrorCode::SandboxNotFound,
        format!("no sandbox named '{name}'"),
    )
}

/// Every sandbox (running, draining, stopped, crashed), by name.
#[napi]
pub async fn list_sandboxes(msb_home: String) -> Result<Vec<SandboxRecord>> {
    blocking(move || {
        Ok(open(&msb_home)?
            .list()
            .map_err(|e| err(ErrorCode::Runtime, e))?
            .into_iter()
            .map(Into::into)
            .collect())
    })
    .await
}

#[napi]
pub async fn get_sandbox(msb_home: String, name: String) -> Result<SandboxRecord> {
    check_name(&name)?;
    blocking(move || {
        let rec = open(&msb_home)?
            .get(&name)
            .map_err(|e| err(ErrorCode::Runtime, e))?;
        rec.map(Into::into).ok_or_else(|| not_found(&name))
    })
    .await
}

/// Delete a stopped (or crashed) sandbox's row and directory.
#[napi]
pub async fn remove_sandbox(msb_home: String, name: String) -> Result<()> {
    check_name(&name)?;
    blocking(move || {
        let store = open(&msb_home)?;
        let exists = store
            .get(&name)
            .map_err(|e| err(ErrorCode::Runtime, e))?
            .is_some();
        if !exists && !store.layout().sandbox_dir(&name).exists() {
            return Err(not_found(&name));
        }
        let Some(_lock) =
            try_lock(store.layout(), &name).map_err(|e| err(ErrorCode::Runtime, e))?
        else {
            return Err(err(
                ErrorCode::SandboxStillRunning,
                format!("sandbox '{name}' is still running: stop it first"),
            ));
        };
        remove_sandbox_state(&store, &name).map_err(|e| err(ErrorCode::Runtime, e))
    })
    .await
}

/// Largest stored configuration `updateSandboxConfig` takes.
const MAX_CONFIG_BYTES: usize = 16 << 20;

/// Replace a stopped (or crashed) sandbox's stored configuration (`modify`). Its lock is
/// held meanwhile, so it cannot start halfway through; a running one is
/// `sandboxStillRunning`, unless `while_running` (policy next_start: a running or draining
/// sandbox keeps its VM as booted, and its runtime never writes the configuration after
/// its start, so the next start takes the new one). A starting one is always refused.
#[napi]
pub async fn update_sandbox_config(
    msb_home: String,
    name: String,
    config_json: String,
    while_running: bool,
) -> Result<()> {
    check_name(&name)?;
    if config_json.len() > MAX_CONFIG_BYTES {
        return Err(err(
            ErrorCode::InvalidConfig,
            format!("config: more than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    blocking(move || {
        let store = open(&msb_home)?;
        let still_running = || {
            err(
                ErrorCode::SandboxStillRunning,
                format!("sandbox '{name}' is running: stop it first"),
            )
        };
        // Read (and reconcile) before taking the lock: a reader holding it would see
        // its own lock as a live runtime.
        let rec = store
            .get(&name)
            .map_err(|e| err(ErrorCode::Runtime, e))?
            .ok_or_else(|| not_found(&name))?;
        if rec.is_live() {
            if !while_running || rec.status == msb_store::STARTING {
                return Err(still_running());
            }
            return match store.set_config(&name, &config_json) {
                Ok(true) => Ok(()),
                Ok(false) => Err(not_found(&name)),
                Err(e) => Err(err(ErrorCode::Runtime, e)),
            };
        }
        let Some(_lock) =
            try_lock(store.layout(), &name).map_err(|e| err(ErrorCode::Runtime, e))?
        else {
            return Err(still_running());
        };
        if !store
            .set_config(&name, &config_json)
            .map_err(|e| err(ErrorCode::Runtime, e))?
        {
            return Err(not_found(&name));
        }
        Ok(())
    })
    .await
}

/// End a sandbox's VM at once: through its runtime when it answers, else by killing the
/// runtime (QEMU dies with it). Nothing to do for a stopped sandbox.
#[napi]
pub async fn kill_sandbox(msb_home: String, name: String) -> Result<()> {
    check_name(&name)?;
    let home = msb_home.clone();
    let n = name.clone();
    let rec = blocking(move || open(&home)?.get(&n).map_err(|e| err(ErrorCode::Runtime, e)))
        .await?
        .ok_or_else(|| not_found(&name))?;
    if !rec.is_live() {
        return Ok(());
    }
    if let Some(sock) = &rec.socket_path {
        if tokio::time::timeout(Duration::from_secs(3), kill_via_socket(sock))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return wait_gone(&msb_home, &name).await;
        }
    }
    // The runtime does not answer: kill it (QEMU has PDEATHSIG and follows). The pid is only
    // trusted while the sandbox's lock is held, so a recycled pid is never hit.
    let home = msb_home.clone();
    let n = name.clone();
    blocking(move || {
        let store = open(&home)?;
        if let (Some(pid), true) = (rec.runtime_pid, runtime_alive(store.layout(), &n)) {
            // SAFETY: plain kill.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        Ok(())
    })
    .await?;
    wait_gone(&msb_home, &name).await?;
    let n = name.clone();
    blocking(move || {
        let store = open(&msb_home)?;
        // The runtime could not record its own end.
        store
            .set_exited(&n, STOPPED, 137, "killed")
            .map_err(|e| err(ErrorCode::Runtime, e))
    })
    .await
}

/// Stop a sandbox by signalling its runtime (SIGTERM): for a sandbox that is still
/// starting (no socket yet), whose runtime then cancels the boot and records it stopped;
/// a running one stops gracefully. Resolves once the runtime is gone. The pid is only
/// trusted while the sandbox's lock is held, so a recycled pid is never hit.
#[napi]
pub async fn terminate_sandbox(msb_home: String, name: String) -> Result<()> {
    check_name(&name)?;
    let home = msb_home.clone();
    let n = name.clone();
    let signalled = blocking(move || {
        let store = open(&home)?;
        let rec = store
            .get(&n)
            .map_err(|e| err(ErrorCode::Runtime, e))?
            .ok_or_else(|| not_found(&n))?;
        if !rec.is_live() {
            return Ok(false);
        }
        if let (Some(pid), true) = (rec.runtime_pid, runtime_alive(store.layout(), &n)) {
            // SAFETY: plain kill.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    if signalled {
        wait_gone(&msb_home, &name).await?;
    }
    Ok(())
}

async fn kill_via_socket(sock: &str) -> std::io::Result<()> {
    let mut s = tokio::net::UnixStream::connect(sock).await?;
    let mut out = Frame::new(
        CHANNEL_ID,
        Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .encode()
    .map_err(std::io::Error::other)?;
    out.extend(
        Frame::control(CHANNEL_ID, Message::Kill)
            .encode()
            .map_err(std::io::Error::other)?,
    );
    s.write_all(&out).await?;
    // The runtime closes the connection when it exits.
    let mut buf = [0u8; 4096];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Wait until nobody holds the sandbox's lock (its runtime has exited).
async fn wait_gone(home: &str, name: &str) -> Result<()> {
    let layout = msb_store::Layout::new(home);
    for _ in 0..200 {
        if !runtime_alive(&layout, name) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(err(
        ErrorCode::Runtime,
        format!("sandbox '{name}' did not stop within 10 s"),
    ))
}
