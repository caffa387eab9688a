//! Cross-process locks (flock) for the TypeScript layers, e.g. the image cache. The
//! kernel drops a lock when its holder dies, so a crashed process never leaves one stale.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use napi::Result;
use napi_derive::napi;

use crate::err;
use msb_contract::ErrorCode;

#[napi]
pub struct FileLock {
    file: Mutex<Option<File>>,
}

#[napi]
impl FileLock {
    /// Release the lock (also happens when the process exits).
    #[napi]
    pub fn release(&self) {
        self.file.lock().unwrap().take();
    }
}

/// Wait for an exclusive lock on `path` (created if missing, parents included).
#[napi]
pub async fn lock_file(path: String) -> Result<FileLock> {
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = std::path::Path::new(&path).parent() {
            fs::create_dir_all(parent)
                .map_err(|e| err(ErrorCode::Runtime, format!("{}: {e}", parent.display())))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| err(ErrorCode::Runtime, format!("{path}: {e}")))?;
        loop {
            // SAFETY: flock on an open fd.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock {
                    file: Mutex::new(Some(f)),
                });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(err(ErrorCode::Runtime, format!("lock {path}: {e}")));
            }
        }
    })
    .await
    .map_err(|e| err(ErrorCode::Runtime, e))?
}
