//! Per-session flow control: the guest may have at most `window` bytes of output in
//! flight; the host returns credit as its consumer reads.

use std::sync::{Condvar, Mutex};

pub struct Window {
    avail: Mutex<(i64, bool)>,
    cv: Condvar,
}

impl Window {
    pub fn new(initial: u32) -> Window {
        Window {
            avail: Mutex::new((initial as i64, false)),
            cv: Condvar::new(),
        }
    }

    /// Wait until `cost` credit is available and take it. False once closed.
    pub fn acquire(&self, cost: u32) -> bool {
        let mut g = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        while g.0 < cost as i64 && !g.1 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.1 {
            return false;
        }
        g.0 -= cost as i64;
        true
    }

    pub fn grant(&self, bytes: u32) {
        let mut g = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_add(bytes as i64);
        self.cv.notify_all();
    }

    /// Unblock every waiter for good (the session is being torn down).
    pub fn close(&self) {
        let mut g = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = true;
        self.cv.notify_all();
    }
}

/// Send one chunk (at most `MAX_CHUNK` bytes) once the credit allows. False once the
/// window closed or the port failed.
pub fn send_windowed(
    port: &crate::port::Port,
    window: &Window,
    id: u32,
    data: &[u8],
    wrap: fn(Vec<u8>) -> msb_protocol::Message,
) -> bool {
    window.acquire(data.len() as u32 + msb_protocol::FRAME_COST)
        && port
            .send(&msb_protocol::Frame::new(id, wrap(data.to_vec())))
            .is_ok()
}
