//! Sparse disk files for snapshots (msb_store::sparse): the SDK copies a stopped
//! sandbox's writable disk into a snapshot and checks a snapshot's content digest.

use msb_contract::ErrorCode;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::err;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(ErrorCode::Runtime, e))?
        .map_err(|e| err(ErrorCode::Runtime, e))
}

/// Copies `src` to `dst` keeping holes (a reflink where the filesystem can); `dst` is
/// replaced atomically. The source must be a regular file, not a link. Returns the
/// apparent size in bytes.
#[napi]
pub async fn copy_sparse(src: String, dst: String) -> Result<f64> {
    blocking(move || msb_store::sparse::copy_sparse(src.as_ref(), dst.as_ref()).map(|n| n as f64))
        .await
}

/// The content digest of a sparse file ("sha256:<hex>", algorithm
/// `msb-sparse-sha256-v1`: holes and zero chunks are not hashed).
#[napi]
pub async fn sparse_sha256(path: String) -> Result<String> {
    blocking(move || msb_store::sparse::sparse_sha256(path.as_ref())).await
}

/// A sparse file's layout: its apparent size and data extents (`[offset, length]`, in
/// order), for writing only its data into a snapshot archive.
#[napi(object)]
pub struct SparseLayout {
    pub size: f64,
    pub extents: Vec<Vec<f64>>,
}

#[napi]
pub async fn sparse_extents(path: String) -> Result<SparseLayout> {
    blocking(move || {
        msb_store::sparse::file_extents(path.as_ref()).map(|(size, ex)| SparseLayout {
            size: size as f64,
            extents: ex
                .into_iter()
                .map(|(o, l)| vec![o as f64, l as f64])
                .collect(),
        })
    })
    .await
}

/// Copies a stopped sandbox's writable disk (`sandboxes/<name>/upper.ext4`) to `dst`,
/// holding the sandbox's lock for the whole copy, so that no runtime can start on it
/// meanwhile. A sandbox whose runtime holds the lock is `sandboxStillRunning`.
#[napi]
pub async fn copy_sandbox_upper(msb_home: String, name: String, dst: String) -> Result<f64> {
    crate::state::check_name(&name)?;
    tokio::task::spawn_blocking(move || {
        let layout = msb_store::Layout::new(&msb_home);
        let src = layout.sandbox_dir(&name).join("upper.ext4");
        if !src.exists() {
            return Err(err(
                ErrorCode::SandboxNotFound,
                format!("sandbox {name} has no writable disk (it never booted)"),
            ));
        }
        let lock = msb_store::try_lock(&layout, &name).map_err(|e| err(ErrorCode::Runtime, e))?;
        let Some(_lock) = lock else {
            return Err(err(
                ErrorCode::SandboxStillRunning,
                format!("sandbox {name} is running; stop it first"),
            ));
        };
        msb_store::sparse::copy_sparse(&src, dst.as_ref())
            .map(|n| n as f64)
            .map_err(|e| {
                err(
                    ErrorCode::Runtime,
                    format!("copying the writable disk of {name}: {e}"),
                )
            })
    })
    .await
    .map_err(|e| err(ErrorCode::Runtime, e))?
}
