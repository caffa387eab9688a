//! The virtio-console port named `agent`: the agent's only channel to the host.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use msb_protocol::{read_frame, write_frame, Frame, FrameError, CHANNEL_ID};

pub struct Port {
    reader: Mutex<File>,
    writer: Mutex<File>,
    /// In a fork: frames of sessions with a lower id (the parent's) are dropped.
    forgotten_below: AtomicU32,
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
                        forgotten_below: AtomicU32::new(0),
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
        if forgotten(frame.id, self.forgotten_below.load(Ordering::Relaxed)) {
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        send_to(&mut *w, frame)
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

impl Port {
    /// A fork: the sessions of ids below `first_id` belong to the parent, whose host side
    /// is gone; their frames are dropped from now on.
    pub fn forget_ids_below(&self, first_id: u32) {
        self.forgotten_below.store(first_id, Ordering::Relaxed);
    }
}

/// A session frame of a forgotten id (channel frames never are).
fn forgotten(id: u32, below: u32) -> bool {
    id != CHANNEL_ID && id < below
}

/// Write one whole frame with the protocol's codec. A frame that cannot be encoded
/// (payload too large) fails before anything is written; a failed write says so.
fn send_to<W: Write>(w: &mut W, frame: &Frame) -> Result<(), String> {
    write_frame(w, frame).map_err(|e| match e {
        FrameError::Io(e) => format!("write to host: {e}"),
        e => e.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use msb_protocol::{read_frame, Message, MAX_PAYLOAD};

    #[test]
    fn send_to_writes_one_frame_that_read_frame_gives_back() {
        let mut out = Vec::new();
        let a = Frame::new(7, Message::Stdout(b"hello".to_vec()));
        let b = Frame::new(
            8,
            Message::Exited {
                code: Some(3),
                signal: None,
            },
        );
        send_to(&mut out, &a).unwrap();
        send_to(&mut out, &b).unwrap();
        // Exactly the bytes of the protocol's own encoding, back to back.
        let mut want = a.encode().unwrap();
        want.extend(b.encode().unwrap());
        assert_eq!(out, want);
        let mut r = &out[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(a));
        assert_eq!(read_frame(&mut r).unwrap(), Some(b));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn a_fork_forgets_the_parents_sessions_but_not_the_channel() {
        assert!(!forgotten(5, 0), "not a fork");
        assert!(forgotten(5, 65_536));
        assert!(!forgotten(65_536, 65_536));
        assert!(!forgotten(CHANNEL_ID, 65_536));
    }

    #[test]
    fn send_to_refuses_an_oversized_payload_without_writing() {
        let mut out = Vec::new();
        let big = Frame::new(1, Message::Stdout(vec![0; MAX_PAYLOAD + 1]));
        let e = send_to(&mut out, &big).unwrap_err();
        assert!(e.contains("exceeds the maximum"), "{e}");
        assert!(out.is_empty());
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENODEV))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn send_to_reports_a_failed_write_as_a_write_to_the_host() {
        let e = send_to(&mut Broken, &Frame::new(1, Message::Ready)).unwrap_err();
        assert!(e.starts_with("write to host: "), "{e}");
        assert!(e.contains("No such device"), "{e}");
    }
}
