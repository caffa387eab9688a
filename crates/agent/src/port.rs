//! The virtio-console port named `agent`: the agent's only channel to the host.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use msb_protocol::{read_frame, Frame, FrameError};

pub struct Port {
    reader: Mutex<File>,
    writer: Mutex<File>,
}

impl Port {
    /// Find `/sys/class/virtio-ports/*/name == name` and open its /dev node.
    pub fn open_named(name: &str) -> Result<Port, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(dev) = find_port(name) {
                if let Ok(f) = OpenOptions::new().read(true).write(true).open(&dev) {
                    let w = f.try_clone().map_err(|e| e.to_string())?;
                    return Ok(Port {
                        reader: Mutex::new(f),
                        writer: Mutex::new(w),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(format!("virtio port '{name}' did not appear"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn send(&self, frame: &Frame) -> Result<(), String> {
        let bytes = frame.encode().map_err(|e| e.to_string())?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&bytes)
            .map_err(|e| format!("write to host: {e}"))
    }

    /// Next frame. While no host is connected a read returns EOF: wait and retry.
    pub fn recv(&self) -> Result<Frame, FrameError> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match read_frame(&mut *r)? {
                Some(f) => return Ok(f),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

fn find_port(name: &str) -> Option<String> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let n = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    None
}
