//! msb-runtime: one process per sandbox. Reads its configuration (JSON) on stdin, boots
//! the VM, answers with one JSON line on stdout (`ready` or `error`), then relays clients
//! to the guest until the VM is gone. See docs/ARCHITECTURE.md "Process model".

mod bench_backends;
mod boot;
mod config;
mod cpu;
mod diagnose;
mod disks;
mod error;
mod exec_log;
mod fork;
mod qmp;
mod relay;
mod sandbox;
mod shares;
mod supervise;
mod template;
mod vm;

use msb_contract::ErrorCode;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::config::Config;
use crate::error::RtError;
use crate::sandbox::Sandbox;

/// Verbosity of runtime.log: 0 trace, 1 debug, 2 info (default), 3 warn, 4 error.
static LOG_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// An info line in runtime.log (dropped at log level warn or error).
pub(crate) fn log(msg: &str) {
    if LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed) <= 2 {
        eprintln!("msb-runtime: {msg}");
    }
}

/// The host's wall clock in milliseconds since the epoch (0 before 1970).
pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An error line in runtime.log (always written).
pub(crate) fn log_error(msg: &str) {
    eprintln!("msb-runtime: error: {msg}");
}

fn set_log_level(level: Option<&str>) {
    let n = match level {
        Some("trace") => 0,
        Some("debug") => 1,
        Some("warn") => 3,
        Some("error") => 4,
        _ => 2,
    };
    LOG_LEVEL.store(n, std::sync::atomic::Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--floor-argv" {
        // For bench/coldstart: the QEMU command line of a bare boot of `kernel` with
        // `initramfs`, with the same machine, accelerator and kernel arguments as a sandbox.
        match vm::floor_argv(Path::new(&args[2]), Path::new(&args[3])) {
            Ok(argv) => println!("{}", serde_json::json!(argv)),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // Each TCP flow of the network stack owns two 128 KiB buffers. With glibc's dynamic
    // mmap threshold, the first freed buffer raises the threshold and later buffers come
    // from the heap, which keeps its peak: a burst of 10 000 short flows (a SYN flood)
    // left ~200 MiB resident for good. A fixed threshold keeps them in their own
    // mappings, untouched until data passes and returned to the kernel when freed; the
    // 64 KiB data chunks stay below it, on the heap (an mmap per chunk costs throughput).
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async_main());
    std::process::exit(code);
}

/// The one line on stdout, then stdout is closed so the creator's read ends.
fn announce(line: serde_json::Value) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: replaces fd 1 with /dev/null.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn announce_error(e: &RtError) {
    announce(serde_json::json!({ "error": { "code": e.code.as_str(), "message": e.message } }));
}

/// Resolves on the first SIGTERM or SIGINT (registered at once, so that from then on
/// neither kills the process by default: a stop during boot is handled, not fatal).
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

async fn async_main() -> i32 {
    let stopped = stop_signal();
    // Zeroized when dropped: the configuration carries the secrets' values.
    let mut input = zeroize::Zeroizing::new(String::new());
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        announce_error(&RtError::runtime(format!("reading configuration: {e}")));
        return 1;
    }
    let cfg: Config = match serde_json::from_str(input.as_str()) {
        Ok(c) => c,
        Err(e) => {
            announce_error(&RtError::new(
                ErrorCode::InvalidConfig,
                format!("configuration: {e}"),
            ));
            return 1;
        }
    };
    set_log_level(cfg.log_level.as_deref());
    let mut sb = match Sandbox::prepare(cfg) {
        Ok(s) => s,
        Err(e) => {
            announce_error(&e);
            return 1;
        }
    };
    let booted = tokio::select! {
        r = sb.boot() => Some(r),
        _ = stopped => None,
    };
    let Some(booted) = booted else {
        // Stopped while booting (SIGTERM, e.g. `stop()` on a starting sandbox): end the VM,
        // record a plain stop, tell the creator.
        log("stopped while booting");
        sb.kill_vm().await;
        sb.boot_cancelled();
        sb.cleanup();
        announce_error(&RtError::new(
            ErrorCode::SandboxNotRunning,
            "the sandbox was stopped while it was booting",
        ));
        return 0;
    };
    match booted {
        Ok(running) => {
            announce(
                serde_json::json!({ "ready": { "socket": sb.agent_sock, "pid": std::process::id() } }),
            );
            sb.run(running).await;
            exec_log::finish();
            sb.cleanup();
            0
        }
        Err(e) => {
            log_error(&e.to_string());
            sb.kill_vm().await;
            sb.boot_failed(&e);
            sb.cleanup();
            announce_error(&e);
            1
        }
    }
}
