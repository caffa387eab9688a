//! State on disk: the SQLite database (WAL) and the `$MSB_HOME` layout.
//!
//! Several processes use the store at once (the SDK in any number of Node processes, one
//! msb-runtime per sandbox): every connection sets a busy timeout and every change is
//! one short transaction. Whether a sandbox is really running is not taken from its row
//! alone: its msb-runtime holds an exclusive `flock` on `sandboxes/<name>/lock` for its
//! whole life, so a row that says running while nobody holds the lock belongs to a runtime
//! that died; readers report (and record) it as crashed.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

pub mod sparse;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The status values of a sandbox, as stored and as the SDK reports them. The one list:
/// the TypeScript union `SandboxStatus` is generated from it (crates/contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// Booting: the runtime holds the lock, the guest is not ready yet (no socket).
    Starting,
    Running,
    /// Running commands finish, new ones are refused, then it stops.
    Draining,
    /// Its vCPUs are stopped (`pause()`); memory and disks stay, commands are refused.
    Paused,
    Stopped,
    /// Its runtime died without recording an exit.
    Crashed,
}

impl SandboxStatus {
    pub const ALL: [SandboxStatus; 6] = [
        SandboxStatus::Starting,
        SandboxStatus::Running,
        SandboxStatus::Draining,
        SandboxStatus::Paused,
        SandboxStatus::Stopped,
        SandboxStatus::Crashed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Starting => "starting",
            SandboxStatus::Running => "running",
            SandboxStatus::Draining => "draining",
            SandboxStatus::Paused => "paused",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Crashed => "crashed",
        }
    }
}

pub const STARTING: &str = SandboxStatus::Starting.as_str();
pub const RUNNING: &str = SandboxStatus::Running.as_str();
pub const DRAINING: &str = SandboxStatus::Draining.as_str();
pub const PAUSED: &str = SandboxStatus::Paused.as_str();
pub const STOPPED: &str = SandboxStatus::Stopped.as_str();
pub const CRASHED: &str = SandboxStatus::Crashed.as_str();

/// One sandbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub status: String,
    pub config_json: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub runtime_pid: Option<i64>,
    pub socket_path: Option<String>,
    pub exit_code: Option<i64>,
    pub exit_reason: Option<String>,
}

impl Record {
    /// Its runtime is (or should be) alive: starting, running, draining or paused.
    pub fn is_live(&self) -> bool {
        self.status == STARTING
            || self.status == RUNNING
            || self.status == DRAINING
            || self.status == PAUSED
    }
}

/// Paths of the `$MSB_HOME` layout.
#[derive(Debug, Clone)]
pub struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Layout { home: home.into() }
    }
    pub fn db(&self) -> PathBuf {
        self.home.join("db").join("msb.sqlite")
    }
    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.home.join("sandboxes").join(name)
    }
    pub fn sandbox_lock(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("lock")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }
    /// Names the sandbox's current run directory (`run/<8-hex>`), written before that
    /// directory is made, so that whoever finds the runtime dead can remove it.
    pub fn run_dir_record(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("run-dir")
    }
}

/// A fresh run directory id for `name`: recorded in `sandboxes/<name>/run-dir` (after
/// removing the one an earlier, dead runtime left), returned as `run/<id>`. The caller
/// holds the sandbox's lock.
pub fn new_run_dir(layout: &Layout, name: &str, id: u32) -> std::io::Result<PathBuf> {
    clean_run_dir(layout, name);
    let hex = format!("{id:08x}");
    let record = layout.run_dir_record(name);
    let tmp = record.with_extension("tmp");
    fs::write(&tmp, &hex)?;
    fs::rename(&tmp, &record)?;
    let dir = layout.run_dir().join(hex);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Remove the run directory (sockets) recorded for `name`, and the record. Only a
/// well-formed id is ever used to build the path. The caller holds the sandbox's lock
/// (or is its runtime, exiting).
pub fn clean_run_dir(layout: &Layout, name: &str) {
    let record = layout.run_dir_record(name);
    if let Ok(id) = fs::read_to_string(&record) {
        let id = id.trim();
        if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = fs::remove_dir_all(layout.run_dir().join(id));
        }
    }
    let _ = fs::remove_file(&record);
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// True when some process holds the sandbox's lock (its msb-runtime is alive).
pub fn runtime_alive(layout: &Layout, name: &str) -> bool {
    let Ok(f) = OpenOptions::new()
        .write(true)
        .open(layout.sandbox_lock(name))
    else {
        return false;
    };
    // SAFETY: flock on an open fd; a lock we get is released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    name          TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    config        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    runtime_pid   INTEGER,
    socket_path   TEXT,
    exit_code     INTEGER,
    exit_reason   TEXT
);
";

pub struct Store {
    conn: Connection,
    layout: Layout,
}

impl Store {
    pub fn open(home: impl Into<PathBuf>) -> Result<Store> {
        let layout = Layout::new(home);
        let db = layout.db();
        if let Some(dir) = db.parent() {
            fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(&db)?;
        conn.busy_timeout(Duration::from_secs(15))?;
        // Switching to WAL and creating the schema take locks for which SQLite does not
        // always wait (two processes opening a new database at once get SQLITE_BUSY at
        // once), so these steps retry on their own.
        retry_busy(|| {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                conn.pragma_update(None, "journal_mode", "WAL")?;
            }
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)
        })?;
        Ok(Store { conn, layout })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Insert a new sandbox, `starting`, booted by the runtime `pid`. False when the name is taken.
    pub fn insert_new(&self, name: &str, config_json: &str, pid: u32) -> Result<bool> {
        let now = now_ms();
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO sandboxes (name, status, config, created_at, updated_at, runtime_pid) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            params![name, STARTING, config_json, now, pid as i64],
        )?;
        Ok(n == 1)
    }

    pub fn get_raw(&self, name: &str) -> Result<Option<Record>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, status, config, created_at, updated_at, runtime_pid, socket_path, exit_code, exit_reason FROM sandboxes WHERE name = ?1",
                params![name],
                row_to_record,
            )
            .optional()?)
    }

    /// The record with its status checked against the runtime's lock.
    pub fn get(&self, name: &str) -> Result<Option<Record>> {
        match self.get_raw(name)? {
            Some(r) => Ok(Some(self.reconcile(r)?)),
            None => Ok(None),
        }
    }

    /// Every sandbox, statuses checked, ordered by name. A row that cannot be read is
    /// skipped rather than failing the whole list.
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, status, config, created_at, updated_at, runtime_pid, socket_path, exit_code, exit_reason FROM sandboxes ORDER BY name",
        )?;
        let rows: Vec<Record> = stmt
            .query_map([], row_to_record)?
            .filter_map(|r| r.ok())
            .collect();
        rows.into_iter().map(|r| self.reconcile(r)).collect()
    }

    fn reconcile(&self, r: Record) -> Result<Record> {
        if !r.is_live() {
            return Ok(r);
        }
        // Nobody holds the lock (or there is no lock file): the runtime died without
        // recording an exit. The row is updated and its sockets removed while we hold the
        // lock, so a runtime starting meanwhile cannot lose its new run directory.
        let _lock = match try_lock_existing(&self.layout, &r.name) {
            Ok(Some(l)) => Some(l),
            Ok(None) => return Ok(r),
            Err(_) => None,
        };
        clean_run_dir(&self.layout, &r.name);
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, runtime_pid = NULL, socket_path = NULL, exit_code = 1, exit_reason = 'runtime died', updated_at = ?3 WHERE name = ?1 AND status IN ('starting', 'running', 'draining', 'paused')",
            params![r.name, CRASHED, now_ms()],
        )?;
        Ok(self.get_raw(&r.name)?.unwrap_or(r))
    }

    /// A stopped or crashed sandbox starts again (`starting`, booted by the runtime `pid`):
    /// clear the previous exit.
    pub fn set_starting(&self, name: &str, config_json: &str, pid: u32) -> Result<()> {
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, config = ?3, runtime_pid = ?5, socket_path = NULL, exit_code = NULL, exit_reason = NULL, updated_at = ?4 WHERE name = ?1",
            params![name, STARTING, config_json, now_ms(), pid as i64],
        )?;
        Ok(())
    }

    pub fn set_running(&self, name: &str, pid: u32, socket: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, runtime_pid = ?3, socket_path = ?4, updated_at = ?5 WHERE name = ?1",
            params![name, RUNNING, pid as i64, socket, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_status(&self, name: &str, status: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, status, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_exited(&self, name: &str, status: &str, code: i64, reason: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, exit_code = ?3, exit_reason = ?4, runtime_pid = NULL, socket_path = NULL, updated_at = ?5 WHERE name = ?1",
            params![name, status, code, reason, now_ms()],
        )?;
        Ok(())
    }

    /// Replace a sandbox's stored configuration (`modify` of a stopped sandbox; the caller
    /// holds its lock). Nothing else changes. False when there is no such row.
    pub fn set_config(&self, name: &str, config_json: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE sandboxes SET config = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, config_json, now_ms()],
        )? == 1)
    }

    pub fn delete(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM sandboxes WHERE name = ?1", params![name])?
            == 1)
    }
}

fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        name: row.get(0)?,
        status: row.get(1)?,
        config_json: row.get(2)?,
        created_at_ms: row.get(3)?,
        updated_at_ms: row.get(4)?,
        runtime_pid: row.get(5)?,
        socket_path: row.get(6)?,
        exit_code: row.get(7)?,
        exit_reason: row.get(8)?,
    })
}

/// Take the sandbox's lock without waiting. `None` when its runtime holds it.
pub fn try_lock(layout: &Layout, name: &str) -> std::io::Result<Option<fs::File>> {
    fs::create_dir_all(layout.sandbox_dir(name))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.sandbox_lock(name))?;
    // SAFETY: flock on an open fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(f))
}

/// Like [`try_lock`], but never creates anything: no lock file, no lock.
fn try_lock_existing(layout: &Layout, name: &str) -> std::io::Result<Option<fs::File>> {
    let f = OpenOptions::new()
        .write(true)
        .open(layout.sandbox_lock(name))?;
    // SAFETY: flock on an open fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(f))
}

/// Remove a sandbox's directory, run directory and row. The caller holds its lock.
pub fn remove_sandbox_state(store: &Store, name: &str) -> Result<()> {
    clean_run_dir(store.layout(), name);
    let dir = store.layout().sandbox_dir(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    store.delete(name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_is_unique_and_lists_in_order() {
        let home = tempfile::tempdir().unwrap();
        let s = Store::open(home.path()).unwrap();
        assert!(s.insert_new("b", "{}", 1).unwrap());
        assert!(s.insert_new("a", "{\"x\":1}", 1).unwrap());
        assert!(!s.insert_new("a", "{}", 1).unwrap(), "a name is unique");
        let names: Vec<_> = s.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn set_config_replaces_only_the_configuration() {
        let home = tempfile::tempdir().unwrap();
        let s = Store::open(home.path()).unwrap();
        s.insert_new("m", "{\"cpus\":1}", 1).unwrap();
        s.set_exited("m", STOPPED, 0, "stopped").unwrap();
        assert!(s.set_config("m", "{\"cpus\":2}").unwrap());
        let r = s.get_raw("m").unwrap().unwrap();
        assert_eq!(r.config_json, "{\"cpus\":2}");
        assert_eq!((r.status.as_str(), r.exit_code), (STOPPED, Some(0)));
        assert!(!s.set_config("nope", "{}").unwrap(), "no such row");
    }

    #[test]
    fn a_running_row_without_a_lock_holder_is_crashed() {
        let home = tempfile::tempdir().unwrap();
        let s = Store::open(home.path()).unwrap();
        s.insert_new("w", "{}", 1).unwrap();
        s.set_running("w", 1234, "/x.sock").unwrap();
        // Someone holds the lock: still running.
        let held = try_lock(s.layout(), "w").unwrap().expect("free lock");
        // flock locks belong to the open file description: a second open sees it held.
        assert!(runtime_alive(s.layout(), "w"));
        assert_eq!(s.get("w").unwrap().unwrap().status, RUNNING);
        drop(held);
        let r = s.get("w").unwrap().unwrap();
        assert_eq!(r.status, CRASHED);
        assert_eq!(r.exit_reason.as_deref(), Some("runtime died"));
        assert_eq!(r.runtime_pid, None);
    }

    #[test]
    fn a_dead_runtime_s_run_directory_goes_when_its_row_is_found_crashed() {
        let home = tempfile::tempdir().unwrap();
        let s = Store::open(home.path()).unwrap();
        s.insert_new("w", "{}", 1).unwrap();
        let held = try_lock(s.layout(), "w").unwrap().expect("free lock");
        let run = new_run_dir(s.layout(), "w", 0xabcd0123).unwrap();
        assert_eq!(run, s.layout().run_dir().join("abcd0123"));
        fs::write(run.join("agent.sock"), b"").unwrap();
        s.set_running("w", 1234, &run.join("agent.sock").to_string_lossy())
            .unwrap();
        assert_eq!(s.list().unwrap()[0].status, RUNNING);
        assert!(run.exists(), "a live runtime keeps its sockets");
        drop(held); // the runtime dies (SIGKILL)
        assert_eq!(s.list().unwrap()[0].status, CRASHED);
        assert!(!run.exists(), "the crashed runtime's run directory is gone");
        assert!(!s.layout().run_dir_record("w").exists());
        // A record never names anything outside run/.
        fs::write(s.layout().run_dir_record("w"), "../../x").unwrap();
        let outside = home.path().join("x");
        fs::create_dir(&outside).unwrap();
        clean_run_dir(s.layout(), "w");
        assert!(outside.exists());
    }

    #[test]
    fn a_new_run_directory_replaces_the_one_left_by_a_dead_runtime() {
        let home = tempfile::tempdir().unwrap();
        let l = Layout::new(home.path());
        fs::create_dir_all(l.sandbox_dir("w")).unwrap();
        let old = new_run_dir(&l, "w", 1).unwrap();
        let new = new_run_dir(&l, "w", 2).unwrap();
        assert!(!old.exists() && new.exists());
        fs::create_dir_all(l.sandbox_dir("w").join("x")).unwrap();
        let s = Store::open(home.path()).unwrap();
        s.insert_new("w", "{}", 1).unwrap();
        remove_sandbox_state(&s, "w").unwrap();
        assert!(!new.exists(), "remove takes the run directory too");
    }

    #[test]
    fn concurrent_connections_do_not_fail_with_busy() {
        // No Store::open before the threads: they race to create the database too.
        let home = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let p = home.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = Store::open(&p).unwrap();
                    for i in 0..50 {
                        let name = format!("t{t}-{i}");
                        assert!(s.insert_new(&name, "{}", 1).unwrap());
                        s.set_exited(&name, STOPPED, 0, "stopped").unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = Store::open(home.path()).unwrap();
        assert_eq!(s.list().unwrap().len(), 400);
    }

    #[test]
    fn exit_and_restart_and_delete() {
        let home = tempfile::tempdir().unwrap();
        let s = Store::open(home.path()).unwrap();
        s.insert_new("w", "{}", 1).unwrap();
        s.set_exited("w", STOPPED, 137, "killed").unwrap();
        let r = s.get("w").unwrap().unwrap();
        assert_eq!(
            (r.status.as_str(), r.exit_code, r.exit_reason.as_deref()),
            (STOPPED, Some(137), Some("killed"))
        );
        s.set_starting("w", "{\"v\":2}", 7).unwrap();
        let r = s.get_raw("w").unwrap().unwrap();
        assert_eq!(
            (
                r.status.as_str(),
                r.exit_code,
                r.config_json.as_str(),
                r.runtime_pid
            ),
            (STARTING, None, "{\"v\":2}", Some(7))
        );
        assert!(s.delete("w").unwrap());
        assert!(s.get("w").unwrap().is_none());
    }
}
