//! A relay for the vhost-user control connection, between QEMU and our backend, that
//! drops one message.
//!
//! QEMU's virtio-net (7.2, Debian 12) sends `SET_VRING_ENABLE` while the device is being
//! set up, before any `SET_FEATURES`. The spec says that message is only valid once
//! `VHOST_USER_F_PROTOCOL_FEATURES` is negotiated, and the rust-vmm `vhost` crate enforces
//! it by closing the connection. QEMU also insists on that message (without protocol
//! features it falls back to its own data path). So the relay forwards every message both
//! ways, file descriptors included, except a `SET_VRING_ENABLE` seen before the first
//! `SET_FEATURES`: that one is held back (and answered here if QEMU asks for an answer),
//! and the last state asked for each ring is sent to the backend right after the first
//! `SET_FEATURES`. QEMU does not send it again when it starts the device, so without the
//! replay the rings would stay disabled.
//!
//! Only control messages pass here (a few dozen per boot); the data path is the shared
//! guest memory.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// The largest message we relay (a memory table of 8 regions is 264 bytes).
const MAX_PAYLOAD: usize = 64 * 1024;
/// vhost-user passes at most 8 descriptors with a message.
const MAX_FDS: usize = 8;

/// Relay until either side closes; then close both.
pub(crate) fn relay(qemu: UnixStream, backend: UnixStream) -> io::Result<()> {
    let to_qemu = Arc::new(Mutex::new(qemu.try_clone()?));
    let backend_rd = backend.try_clone()?;
    let replies = {
        let to_qemu = to_qemu.clone();
        std::thread::Builder::new()
            .name("msb-net-vhost-relay".into())
            .spawn(move || copy_replies(backend_rd, &to_qemu))?
    };
    let r = forward_requests(&qemu, &backend, &to_qemu);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    let _ = qemu.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    r
}

/// Backend -> QEMU: replies, byte for byte.
fn copy_replies(mut backend: UnixStream, to_qemu: &Mutex<UnixStream>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match backend.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to_qemu.lock().unwrap().write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_qemu.lock().unwrap().shutdown(std::net::Shutdown::Both);
}

/// QEMU -> backend: requests with their descriptors, minus the early SET_VRING_ENABLE.
fn forward_requests(
    qemu: &UnixStream,
    backend: &UnixStream,
    to_qemu: &Mutex<UnixStream>,
) -> io::Result<()> {
    let mut features_seen = false;
    let mut early_enables: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut hdr = [0u8; HDR];
        let (n, fds) = recv_with_fds(qemu, &mut hdr)?;
        if n == 0 {
            return Ok(());
        }
        if n < HDR {
            (&*qemu).read_exact(&mut hdr[n..])?;
        }
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let (code, flags, size) = (word(0), word(4), word(8) as usize);
        if size > MAX_PAYLOAD {
            return Err(io::Error::other(format!(
                "vhost-user message of {size} bytes"
            )));
        }
        let mut msg = hdr.to_vec();
        msg.resize(HDR + size, 0);
        (&*qemu).read_exact(&mut msg[HDR..])?;
        if code == SET_VRING_ENABLE && !features_seen {
            // Held back: the last state asked for each ring is applied after SET_FEATURES.
            if size == 8 {
                let ring = u32::from_le_bytes(msg[HDR..HDR + 4].try_into().unwrap());
                early_enables.retain(|m: &Vec<u8>| m[HDR..HDR + 4] != ring.to_le_bytes());
                let mut m = msg.clone();
                m[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
                early_enables.push(m);
            }
            if flags & FLAG_NEED_REPLY != 0 {
                to_qemu.lock().unwrap().write_all(&ack(code))?;
            }
            continue;
        }
        send(backend, &msg, &fds)?;
        if code == SET_FEATURES && !features_seen {
            features_seen = true;
            // Sent without NEED_REPLY: the backend answers none of these.
            for m in early_enables.drain(..) {
                send(backend, &m, &[])?;
            }
        }
        // Our copies of the descriptors close here; the backend has its own.
    }
}

fn send(backend: &UnixStream, msg: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = backend
        .send_with_fds(&[msg], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < msg.len() {
        (&*backend).write_all(&msg[sent..])?;
    }
    Ok(())
}

/// A successful REPLY_ACK answer to `code`.
fn ack(code: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(HDR + 8);
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m
}

fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, which outlives the call.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: recvmsg gave us these descriptors; nothing else owns them.
    let fds: Vec<OwnedFd> = raw[..nfds]
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    // vmm-sys-util's recvmsg has no MSG_CMSG_CLOEXEC: close-on-exec right away, so that a
    // process msb-runtime starts (mke2fs runs while QEMU sets up) does not inherit guest
    // memory. The window is a few instructions wide; the relay holds them only briefly.
    for fd in &fds {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn holds_early_vring_enables_until_set_features_and_passes_descriptors() {
        let (qemu, relay_q) = UnixStream::pair().unwrap();
        let (relay_b, mut backend) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(relay_q, relay_b));

        let enable = msg(SET_VRING_ENABLE, FLAG_VERSION, &[0, 0, 0, 0, 1, 0, 0, 0]);
        let asked = msg(
            SET_VRING_ENABLE,
            FLAG_VERSION | FLAG_NEED_REPLY,
            &[1, 0, 0, 0, 1, 0, 0, 0],
        );
        let features = msg(SET_FEATURES, FLAG_VERSION, &7u64.to_le_bytes());
        // A message with a descriptor (as SET_VRING_KICK carries an eventfd).
        let kick = msg(12, FLAG_VERSION, &0u64.to_le_bytes());
        let (pipe_r, pipe_w) = {
            let mut p = [0; 2];
            assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
            unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
        };
        qemu.send_with_fds(&[&enable[..]], &[]).unwrap();
        qemu.send_with_fds(&[&asked[..]], &[]).unwrap();
        // The asked-for answer comes from the relay.
        let mut reply = [0u8; HDR + 8];
        (&qemu).read_exact(&mut reply).unwrap();
        assert_eq!(reply.to_vec(), ack(SET_VRING_ENABLE));
        qemu.send_with_fds(&[&features[..]], &[]).unwrap();
        qemu.send_with_fds(&[&kick[..]], &[pipe_w.as_raw_fd()])
            .unwrap();
        qemu.send_with_fds(&[&enable[..]], &[]).unwrap();

        // The backend sees SET_FEATURES first, then the held-back enables (the last state
        // of each ring, without NEED_REPLY), then the descriptor, then the late enable.
        let mut got = vec![0u8; features.len()];
        backend.read_exact(&mut got).unwrap();
        assert_eq!(got, features);
        for ring in [0u8, 1] {
            let mut got = vec![0u8; enable.len()];
            backend.read_exact(&mut got).unwrap();
            assert_eq!(
                got,
                msg(SET_VRING_ENABLE, FLAG_VERSION, &[ring, 0, 0, 0, 1, 0, 0, 0])
            );
        }
        let mut got = vec![0u8; kick.len()];
        let (n, fds) = recv_with_fds(&backend, &mut got).unwrap();
        if n < got.len() {
            backend.read_exact(&mut got[n..]).unwrap();
        }
        assert_eq!(got, kick);
        assert_eq!(fds.len(), 1);
        // The descriptor passed is the pipe's write end: a byte written arrives.
        let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
        w.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        std::fs::File::from(pipe_r).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        let mut got = vec![0u8; enable.len()];
        backend.read_exact(&mut got).unwrap();
        assert_eq!(got, enable);

        // Replies go back unchanged.
        let r = msg(1, FLAG_VERSION | FLAG_REPLY, &42u64.to_le_bytes());
        backend.write_all(&r).unwrap();
        let mut got = vec![0u8; r.len()];
        (&qemu).read_exact(&mut got).unwrap();
        assert_eq!(got, r);

        drop(qemu);
        t.join().unwrap().unwrap();
        // The backend side is closed too.
        assert_eq!(backend.read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn an_oversized_message_ends_the_relay() {
        let (qemu, relay_q) = UnixStream::pair().unwrap();
        let (relay_b, _backend) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(relay_q, relay_b));
        let mut m = msg(5, FLAG_VERSION, &[]);
        m[8..12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        qemu.send_with_fds(&[&m[..]], &[]).unwrap();
        assert!(t.join().unwrap().is_err());
    }
}
