//! The commands' output, recorded: `sandboxes/<name>/exec.log` (JSON lines), read back by
//! the SDK's `sb.logs()` / `logStream()` and `msb logs`.
//!
//! The relay hands this module every Exec request it forwards (to learn the session's
//! command and whether it runs on a terminal) and every frame the guest sends; output of
//! exec sessions becomes entries, fs sessions are ignored. One line per entry:
//!
//! ```text
//! {"msb":"exec-log","v":1,"gen":"5f0c...","t":"..."}            first line of each file
//! {"t":"2026-12-03T06:40:01.123Z","s":"stdout","id":3,"d":"hi\n"}
//! {"t":"...","s":"stderr","id":3,"d":"//79","e":"b64"}           not UTF-8: base64
//! {"t":"...","s":"system","id":3,"d":"exec: sh -c 'echo hi'\n"}
//! ```
//!
//! `s` is the reference SDK's source: `stdout`/`stderr` in pipe mode, `output` for a TTY
//! session (one merged stream), `system` for markers (sandbox started/stopped, an exec
//! started/ended, entries dropped). `gen` names the file: a cursor of the SDK is
//! (gen, offset), so it stays valid across rotations while the file is kept.
//!
//! Never blocks the relay: entries go through a bounded queue (by count and by bytes) to
//! a writer thread; when the writer falls behind, entries are dropped and counted, and a
//! `system` entry says how many. The file rotates at [`MAX_FILE_BYTES`], keeping one
//! previous file (`exec.log.1`): at most twice that on disk. Files are opened relative to
//! the sandbox directory's fd with `O_NOFOLLOW` (a link in their place is refused).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msb_protocol::{decode_raw, ExecRequest, Message};
use serde::Serialize;

use crate::unix_ms_now as now_ms;

pub const FILE_NAME: &str = "exec.log";
pub const PREVIOUS_FILE_NAME: &str = "exec.log.1";
/// Rotate the current file when an entry would take it past this size.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Entries waiting for the writer, at most (count).
const QUEUE_ENTRIES: usize = 4096;
/// Bytes of entries waiting for the writer, at most: past it entries are dropped.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Bookkeeping counted per queued entry (a flood of empty chunks is bounded too).
const ENTRY_COST: usize = 64;
/// Exec sessions tracked at once; output of sessions past it is not recorded.
const MAX_SESSIONS: usize = 65_536;
/// The command of an exec marker, at most (bytes).
const MAX_COMMAND_BYTES: usize = 512;
/// The first bytes of every file.
const HEADER_PREFIX: &[u8] = b"{\"msb\":\"exec-log\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Stdout,
    Stderr,
    Output,
    System,
}

struct Entry {
    ms: u64,
    source: Source,
    session: Option<u64>,
    data: Vec<u8>,
}

enum Msg {
    Entry(Entry),
    Close(SyncSender<()>),
}

#[derive(Clone, Copy)]
struct Session {
    id: u64,
    tty: bool,
}

struct Shared {
    tx: Mutex<Option<SyncSender<Msg>>>,
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
    dropped_bytes: AtomicU64,
    /// guest request id -> exec session
    sessions: Mutex<HashMap<u32, Session>>,
    next_session: AtomicU64,
}

/// The recorder of one sandbox's exec output. Cheap to clone.
#[derive(Clone)]
pub struct ExecLog {
    shared: Arc<Shared>,
}

impl ExecLog {
    /// Open (append to) `<dir>/exec.log` and start its writer thread.
    pub fn open(dir: &Path) -> io::Result<ExecLog> {
        let file = LogFile::open(dir, MAX_FILE_BYTES)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_ENTRIES);
        let shared = Arc::new(Shared {
            tx: Mutex::new(Some(tx)),
            queued_bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("exec-log".into())
            .spawn(move || writer(file, rx, s))?;
        Ok(ExecLog { shared })
    }

    /// A `system` marker not tied to a session ("--- sandbox started ---").
    pub fn system(&self, text: &str) {
        self.push(Source::System, None, line(text));
    }

    /// The relay forwards an Exec request under guest id `gid`.
    pub fn exec_started(&self, gid: u32, req: &ExecRequest) {
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        {
            let mut s = self.shared.sessions.lock().unwrap();
            if s.len() >= MAX_SESSIONS {
                return;
            }
            s.insert(
                gid,
                Session {
                    id,
                    tty: req.tty.is_some(),
                },
            );
        }
        self.push(
            Source::System,
            Some(id),
            line(&format!("exec: {}", command_line(req))),
        );
    }

    /// A frame from the guest (raw, as read; not validated yet: the relay does that).
    /// Output of a known exec session is recorded; its last frame ends the session.
    pub fn guest_frame(&self, raw: &[u8]) {
        if raw.len() < 8 {
            return;
        }
        let gid = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        // Cheap test first: frames of fs sessions and metrics are not decoded again.
        let Some(session) = self.shared.sessions.lock().unwrap().get(&gid).copied() else {
            return;
        };
        let Ok(frame) = decode_raw(raw) else { return };
        let ends = frame.message.ends_session();
        match frame.message {
            Message::Stdout(data) => {
                let source = if session.tty {
                    Source::Output
                } else {
                    Source::Stdout
                };
                self.push(source, Some(session.id), data);
            }
            Message::Stderr(data) => self.push(Source::Stderr, Some(session.id), data),
            Message::Exited { code, signal } => {
                let how = match (code, signal) {
                    (_, Some(s)) => format!("killed by signal {s}"),
                    (Some(c), None) => format!("exit code {c}"),
                    (None, None) => "ended".to_string(),
                };
                self.push(
                    Source::System,
                    Some(session.id),
                    line(&format!("exec: {how}")),
                );
            }
            Message::Failed { reason } => {
                let r = truncate(&reason, MAX_COMMAND_BYTES);
                self.push(
                    Source::System,
                    Some(session.id),
                    line(&format!("exec: failed to start: {r}")),
                );
            }
            _ => {}
        }
        if ends {
            self.shared.sessions.lock().unwrap().remove(&gid);
        }
    }

    /// Write what is queued, then a last marker, and stop the writer (waits at most
    /// `timeout`). Later entries are dropped.
    pub fn close(&self, last: &str, timeout: Duration) {
        self.system(last);
        let Some(tx) = self.shared.tx.lock().unwrap().take() else {
            return;
        };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        // The queue may be full: wait for room, but not for ever.
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Close(done_tx);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = done_rx.recv_timeout(left);
    }

    fn push(&self, source: Source, session: Option<u64>, data: Vec<u8>) {
        let bytes = data.len() as u64;
        let cost = data.len() + ENTRY_COST;
        let s = &self.shared;
        let guard = s.tx.lock().unwrap();
        let Some(tx) = guard.as_ref() else { return };
        let drop_it = |s: &Shared| {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            s.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        };
        if s.queued_bytes.fetch_add(cost, Ordering::AcqRel) + cost > QUEUE_BYTES {
            s.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return drop_it(s);
        }
        let entry = Entry {
            ms: now_ms(),
            source,
            session,
            data,
        };
        if tx.try_send(Msg::Entry(entry)).is_err() {
            s.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            drop_it(s);
        }
    }
}

/// This process's recorder (one sandbox per process), for [`finish`].
static CURRENT: std::sync::OnceLock<ExecLog> = std::sync::OnceLock::new();

/// Boot wiring: record the execs of `relay` in `<dir>/exec.log` from now on. A log that
/// cannot be opened is reported in runtime.log; the sandbox runs without it.
pub fn start(dir: &Path, relay: &crate::relay::Relay) {
    match ExecLog::open(dir) {
        Ok(l) => {
            l.system("--- sandbox started ---");
            relay.set_exec_log(l.clone());
            let _ = CURRENT.set(l);
        }
        Err(e) => crate::log_error(&format!(
            "exec.log: {e}: the commands' output is not recorded"
        )),
    }
}

/// At the end of the process: the stop marker, and everything queued reaches the file.
pub fn finish() {
    if let Some(l) = CURRENT.get() {
        l.close("--- sandbox stopped ---", Duration::from_secs(3));
    }
}

fn writer(mut file: LogFile, rx: Receiver<Msg>, shared: Arc<Shared>) {
    let report_drops = |file: &mut LogFile| {
        let n = shared.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            let bytes = shared.dropped_bytes.swap(0, Ordering::Relaxed);
            let text = format!(
                "exec log: {n} entries ({bytes} bytes) dropped: the log writer fell behind"
            );
            let _ = file.append(&Entry {
                ms: now_ms(),
                source: Source::System,
                session: None,
                data: line(&text),
            });
        }
    };
    let mut next = rx.recv().ok();
    while let Some(msg) = next {
        match msg {
            Msg::Entry(e) => {
                shared
                    .queued_bytes
                    .fetch_sub(e.data.len() + ENTRY_COST, Ordering::AcqRel);
                report_drops(&mut file);
                if let Err(err) = file.append(&e) {
                    crate::log_error(&format!("exec.log: {err}"));
                }
            }
            Msg::Close(done) => {
                report_drops(&mut file);
                let _ = file.flush();
                let _ = done.send(());
                return;
            }
        }
        next = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(_) => {
                // Idle: what was written reaches the file before we wait.
                let _ = file.flush();
                rx.recv().ok()
            }
        };
    }
    let _ = file.flush();
}

/// `exec.log` in a directory opened once: every later step is relative to its fd.
struct LogFile {
    dir: OwnedFd,
    out: BufWriter<File>,
    size: u64,
    max: u64,
    /// The sandbox's name and its log's id: the same in every file of one sandbox, from
    /// its create to its removal (a later sandbox of the name gets another).
    name: String,
    uid: String,
    /// The current file's generation.
    gen: String,
}

/// The first line of each file (only the fields a reader needs to place a cursor).
#[derive(Serialize, serde::Deserialize)]
struct Header {
    msb: String,
    v: u32,
    sandbox: String,
    uid: String,
    gen: String,
    /// The generation of the file before this one ("" for the first).
    prev: String,
    t: String,
}

impl LogFile {
    fn open(dir: &Path, max: u64) -> io::Result<LogFile> {
        let path = CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: open(2) on a valid C string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd_dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = open_at(&fd_dir, FILE_NAME, false)?;
        let size = file.metadata()?.len();
        let name = dir_name(dir);
        let mut f = LogFile {
            dir: fd_dir,
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            max,
            name,
            uid: random_hex(),
            gen: String::new(),
        };
        if size == 0 {
            f.header("")?;
        } else {
            match f.read_header() {
                // Ours: appended to (a restarted sandbox keeps its log).
                Some(h) if h.sandbox == f.name => {
                    f.uid = h.uid;
                    f.gen = h.gen;
                }
                // Not ours (or cut short before its header): kept as the previous file.
                _ => f.rotate()?,
            }
        }
        Ok(f)
    }

    fn read_header(&self) -> Option<Header> {
        let mut buf = [0u8; 1024];
        let file = self.out.get_ref();
        // SAFETY: pread into a buffer of its length.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let got = buf.get(..usize::try_from(n).ok()?)?;
        let end = got.iter().position(|&b| b == b'\n')?;
        if !got.starts_with(HEADER_PREFIX) {
            return None;
        }
        let h: Header = serde_json::from_slice(&got[..end]).ok()?;
        let hex16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        (h.v == 1 && hex16(&h.uid) && hex16(&h.gen)).then_some(h)
    }

    /// Start a file: its header names the sandbox, its log's id, its generation and the
    /// generation before it (so that a reader finds the file that follows one it read).
    fn header(&mut self, prev: &str) -> io::Result<()> {
        self.gen = random_hex();
        let h = Header {
            msb: "exec-log".into(),
            v: 1,
            sandbox: self.name.clone(),
            uid: self.uid.clone(),
            gen: self.gen.clone(),
            prev: prev.into(),
            t: rfc3339(now_ms()),
        };
        let mut line = serde_json::to_vec(&h).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let from = CString::new(FILE_NAME)?;
        let to = CString::new(PREVIOUS_FILE_NAME)?;
        let d = self.dir.as_raw_fd();
        // SAFETY: renameat(2) of names relative to our directory fd; replaces the previous file.
        if unsafe { libc::renameat(d, from.as_ptr(), d, to.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let file = open_at(&self.dir, FILE_NAME, true)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        let prev = std::mem::take(&mut self.gen);
        self.header(&prev)
    }

    fn append(&mut self, e: &Entry) -> io::Result<()> {
        let line = encode(e);
        if self.size + line.len() as u64 > self.max {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Open `name` in `dir` for appending, never following a link; `fresh`: it must not exist.
fn open_at(dir: &OwnedFd, name: &str, fresh: bool) -> io::Result<File> {
    let c = CString::new(name)?;
    // Read too: the header of a file appended to is read back.
    let mut flags = libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW;
    flags |= libc::O_CLOEXEC;
    if fresh {
        flags |= libc::O_EXCL;
    }
    // SAFETY: openat(2) relative to an fd we own.
    let mut fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 && fresh && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        // Something appeared in its place since the rename: it goes.
        // SAFETY: unlinkat(2) relative to an fd we own (a link is removed, not followed).
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
        // SAFETY: as above.
        fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!("{name} is not a regular file")));
    }
    Ok(file)
}

#[derive(Serialize)]
struct Line<'a> {
    t: &'a str,
    s: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    d: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<&'static str>,
}

/// One JSON line: `d` is the bytes as text when they are UTF-8 and that is not longer
/// than base64 would be (JSON writes most control bytes as 6), else base64 (`"e":"b64"`).
fn encode(e: &Entry) -> Vec<u8> {
    let t = rfc3339(e.ms);
    let b64;
    let text = std::str::from_utf8(&e.data)
        .ok()
        .filter(|_| json_len(&e.data) <= e.data.len().div_ceil(3) * 4);
    let (d, enc) = match text {
        Some(s) => (s, None),
        None => {
            b64 = base64(&e.data);
            (b64.as_str(), Some("b64"))
        }
    };
    let mut out = serde_json::to_vec(&Line {
        t: &t,
        s: e.source,
        id: e.session,
        d,
        e: enc,
    })
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// Length of `data` as a JSON string's contents (serde_json's escapes).
fn json_len(data: &[u8]) -> usize {
    data.iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn line(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    if !text.ends_with('\n') {
        v.push(b'\n');
    }
    v
}

/// `cmd arg1 'arg two'`, at most [`MAX_COMMAND_BYTES`].
fn command_line(req: &ExecRequest) -> String {
    let mut s = String::new();
    for (i, a) in std::iter::once(&req.cmd).chain(req.args.iter()).enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let plain = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
        if plain {
            s.push_str(a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        }
        if s.len() > MAX_COMMAND_BYTES {
            break;
        }
    }
    truncate(&s, MAX_COMMAND_BYTES)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.replace('\n', " ");
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", s[..end].replace('\n', " "))
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut r) = File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut r, &mut b);
    }
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2026-12-03T06:40:01.123Z`
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_protocol::{Frame, TtySize};
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "msb-exec-log-{tag}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn raw(id: u32, msg: Message) -> Vec<u8> {
        Frame::new(id, msg).encode().unwrap()
    }

    fn exec(cmd: &str, args: &[&str], tty: bool) -> ExecRequest {
        ExecRequest {
            cmd: cmd.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            tty: tty.then_some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        }
    }

    #[test]
    fn records_exec_output_with_sources_and_session_ids() {
        let dir = tempdir("sources");
        let log = ExecLog::open(&dir).unwrap();
        log.system("--- sandbox started ---");
        log.exec_started(5, &exec("sh", &["-c", "echo hi; echo 'x y'"], false));
        log.exec_started(6, &exec("sh", &[], true));
        log.guest_frame(&raw(5, Message::Stdout(b"hi\n".to_vec())));
        log.guest_frame(&raw(5, Message::Stderr(vec![0xff, 0xfe, b'!'])));
        log.guest_frame(&raw(6, Message::Stdout(b"$ ".to_vec())));
        // Another session (fs, metrics) of the guest: not recorded.
        log.guest_frame(&raw(9, Message::Stdout(b"nope".to_vec())));
        log.guest_frame(&raw(
            5,
            Message::Exited {
                code: Some(3),
                signal: None,
            },
        ));
        // The session is over: a late frame on its id is not recorded.
        log.guest_frame(&raw(5, Message::Stdout(b"late".to_vec())));
        log.close("--- sandbox stopped ---", Duration::from_secs(5));
        log.system("after close: dropped");

        let l = lines(&dir.join(FILE_NAME));
        assert_eq!(l[0]["msb"], "exec-log");
        assert_eq!(l[0]["gen"].as_str().unwrap().len(), 16);
        let got: Vec<(String, Option<u64>, String)> = l[1..]
            .iter()
            .map(|v| {
                (
                    v["s"].as_str().unwrap().to_string(),
                    v["id"].as_u64(),
                    v["d"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("system", None, "--- sandbox started ---\n"),
            (
                "system",
                Some(1),
                "exec: sh -c 'echo hi; echo '\\''x y'\\'''\n",
            ),
            ("system", Some(2), "exec: sh\n"),
            ("stdout", Some(1), "hi\n"),
            ("stderr", Some(1), "//4h"),
            ("output", Some(2), "$ "),
            ("system", Some(1), "exec: exit code 3\n"),
            ("system", None, "--- sandbox stopped ---\n"),
        ];
        let want: Vec<(String, Option<u64>, String)> = want
            .iter()
            .map(|(s, i, d)| (s.to_string(), *i, d.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(l[5]["e"], "b64");
        assert!(l[4].get("e").is_none());
        let t = l[4]["t"].as_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z'), "{t}");
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_keeping_one_previous_file_and_a_new_generation() {
        let dir = tempdir("rotate");
        let mut f = LogFile::open(&dir, 400).unwrap();
        let entry = |n: usize| Entry {
            ms: 0,
            source: Source::Stdout,
            session: Some(1),
            data: format!("{n:0100}").into_bytes(),
        };
        for n in 0..12 {
            f.append(&entry(n)).unwrap();
        }
        f.flush().unwrap();
        let cur = lines(&dir.join(FILE_NAME));
        let prev = lines(&dir.join(PREVIOUS_FILE_NAME));
        assert_ne!(cur[0]["gen"], prev[0]["gen"]);
        assert_eq!(
            cur[0]["prev"], prev[0]["gen"],
            "each file names the one before"
        );
        assert_eq!(cur[0]["uid"], prev[0]["uid"], "one log id per sandbox");
        assert_eq!(
            cur[0]["sandbox"],
            dir.file_name().unwrap().to_str().unwrap()
        );
        for l in [&cur, &prev] {
            assert_eq!(l[0]["msb"], "exec-log");
            assert!(l.len() > 1);
        }
        // Oldest entries went with the file rotated twice; what is kept is in order.
        let kept: Vec<u64> = prev[1..]
            .iter()
            .chain(cur[1..].iter())
            .map(|v| v["d"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(*kept.last().unwrap(), 11);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert!(std::fs::metadata(dir.join(FILE_NAME)).unwrap().len() <= 400);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopening_appends_and_a_foreign_file_is_rotated_away() {
        let dir = tempdir("reopen");
        let log = ExecLog::open(&dir).unwrap();
        log.system("one");
        log.close("stop", Duration::from_secs(5));
        let log = ExecLog::open(&dir).unwrap();
        log.system("two");
        log.close("stop", Duration::from_secs(5));
        let l = lines(&dir.join(FILE_NAME));
        assert_eq!(l.len(), 5, "one header, four entries");
        assert_eq!(l[3]["d"], "two\n");
        let uid = l[0]["uid"].clone();

        std::fs::write(dir.join(FILE_NAME), b"garbage\n").unwrap();
        let log = ExecLog::open(&dir).unwrap();
        log.close("stop", Duration::from_secs(5));
        assert_eq!(
            std::fs::read(dir.join(PREVIOUS_FILE_NAME)).unwrap(),
            b"garbage\n"
        );
        let h = &lines(&dir.join(FILE_NAME))[0];
        assert_eq!(h["msb"], "exec-log");
        assert_ne!(h["uid"], uid, "a log that is not ours starts a new id");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_in_place_of_the_file_is_refused() {
        let dir = tempdir("link");
        let target = dir.join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(FILE_NAME)).unwrap();
        let err = ExecLog::open(&dir).err().expect("opened through a link");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read(&target).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flood_is_dropped_and_counted_not_queued_without_bound() {
        let dir = tempdir("flood");
        let log = ExecLog::open(&dir).unwrap();
        log.exec_started(1, &exec("yes", &[], false));
        let chunk = raw(1, Message::Stdout(vec![b'y'; 512 * 1024]));
        // 24 MiB offered at once: the queue holds at most QUEUE_BYTES (at most one
        // rotation: both files hold what was written).
        for _ in 0..48 {
            log.guest_frame(&chunk);
            assert!(log.shared.queued_bytes.load(Ordering::Relaxed) <= QUEUE_BYTES);
        }
        log.close("stop", Duration::from_secs(20));
        let mut l = lines(&dir.join(FILE_NAME));
        if dir.join(PREVIOUS_FILE_NAME).exists() {
            l.extend(lines(&dir.join(PREVIOUS_FILE_NAME)));
        }
        let written = l.iter().filter(|v| v["s"] == "stdout").count() as u64;
        let dropped: u64 = l
            .iter()
            .filter_map(|v| v["d"].as_str()?.strip_prefix("exec log: "))
            .map(|d| d.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(written + dropped, 48, "every chunk written or counted");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_when_it_is_not_longer_than_base64() {
        let entry = |data: &[u8]| Entry {
            ms: 0,
            source: Source::Stdout,
            session: Some(1),
            data: data.to_vec(),
        };
        let v = |data: &[u8]| -> serde_json::Value {
            serde_json::from_slice(encode(&entry(data)).trim_ascii_end()).unwrap()
        };
        let plain = v(b"hello \"world\"\n");
        assert_eq!(plain["d"], "hello \"world\"\n");
        assert!(plain.get("e").is_none());
        // NUL bytes are valid UTF-8 but 6 bytes each in JSON: base64 is shorter.
        let zeros = v(&[0u8; 300]);
        assert_eq!(zeros["e"], "b64");
        assert_eq!(zeros["d"].as_str().unwrap().len(), 400);
        assert_eq!(json_len(b"a\x01\n\\"), 1 + 6 + 2 + 2);
    }

    #[test]
    fn timestamps_and_base64() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_280_001_999), "2026-12-03T06:40:01.999Z");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0x21]), "//4h");
    }
}
