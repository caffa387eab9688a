//! What `AgentClient.next` returns: one event of an exec or fs session, as a tagged
//! union (`kind`), mapped once from the protocol's messages.

use msb_protocol::{FsEntry, Message};
use serde::Serialize;
use ts_rs::TS;

use crate::ErrorCode;

#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum SessionEvent {
    /// Exec: the process is running.
    Started {
        pid: u32,
    },
    /// Exec: output (on a TTY session, the terminal's output).
    Stdout {
        #[serde(with = "serde_bytes")]
        #[ts(type = "Buffer")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "serde_bytes")]
        #[ts(type = "Buffer")]
        data: Vec<u8>,
    },
    /// Exec, last event: `code` is the exit code, 128 + signal when a signal ended the
    /// process (then `signal` is set), -1 when the guest reported neither.
    Exited {
        code: i32,
        signal: Option<i32>,
    },
    /// Exec, last event: the process could not be started.
    Failed {
        reason: String,
    },
    /// Fs read: a chunk of the file, then `fsEnd`.
    FsData {
        #[serde(with = "serde_bytes")]
        #[ts(type = "Buffer")]
        data: Vec<u8>,
    },
    FsEnd,
    /// Fs write, mkdir, remove, ...: done.
    FsDone,
    FsExists {
        exists: bool,
    },
    FsStat {
        entry: FsEntry,
    },
    FsEntries {
        entries: Vec<FsEntry>,
    },
    /// Fs, last event: `errno` is a symbolic name (ENOENT, EISDIR, ...), EIO when the
    /// guest sent something implausible.
    FsError {
        errno: String,
        message: String,
    },
}

/// A message that is not an event of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAnEvent {
    /// The runtime (or guest) ended the request with an error; `code` is trusted only when
    /// it is one the runtime itself sends, anything else is `protocol`.
    Error { code: ErrorCode, message: String },
    /// A message that has no place in a session (a protocol error): its variant name.
    Unexpected(String),
}

impl SessionEvent {
    /// Map a message of a session to its event.
    pub fn from_message(msg: Message) -> Result<SessionEvent, NotAnEvent> {
        Ok(match msg {
            Message::Started { pid } => SessionEvent::Started { pid },
            Message::Stdout(data) => SessionEvent::Stdout { data },
            Message::Stderr(data) => SessionEvent::Stderr { data },
            Message::Exited { code, signal } => SessionEvent::Exited {
                code: code.or(signal.map(|s| 128 + s)).unwrap_or(-1),
                signal,
            },
            Message::Failed { reason } => SessionEvent::Failed { reason },
            Message::FsData(data) => SessionEvent::FsData { data },
            Message::FsEnd => SessionEvent::FsEnd,
            Message::FsDone => SessionEvent::FsDone,
            Message::FsExists(exists) => SessionEvent::FsExists { exists },
            Message::FsStat(entry) => SessionEvent::FsStat { entry },
            Message::FsEntries(entries) => SessionEvent::FsEntries { entries },
            Message::FsError { errno, message } => SessionEvent::FsError {
                errno: safe_errno(&errno),
                message,
            },
            Message::Error { code, message } => {
                return Err(NotAnEvent::Error {
                    code: trusted_code(&code),
                    message,
                })
            }
            other => return Err(NotAnEvent::Unexpected(other.kind_name())),
        })
    }
}

/// Error codes msb-runtime may hand to the SDK on a session or control request; anything
/// else (a guest could put any string there) is reported as a protocol error.
pub fn trusted_code(code: &str) -> ErrorCode {
    match code {
        "sandboxDraining" => ErrorCode::SandboxDraining,
        "sandboxPaused" => ErrorCode::SandboxPaused,
        "runtime" => ErrorCode::Runtime,
        _ => ErrorCode::Protocol,
    }
}

/// The guest names the errno; only plausible names pass (E + capitals and digits).
pub fn safe_errno(s: &str) -> String {
    let ok = s.len() <= 16
        && s.starts_with('E')
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        s.to_string()
    } else {
        "EIO".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> FsEntry {
        FsEntry {
            name: "a".into(),
            kind: "file".into(),
            size: 5_000_000_000,
            mode: 0o644,
            modified_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn exec_messages_map_to_their_events() {
        assert_eq!(
            SessionEvent::from_message(Message::Started { pid: 42 }),
            Ok(SessionEvent::Started { pid: 42 })
        );
        assert_eq!(
            SessionEvent::from_message(Message::Stderr(b"e".to_vec())),
            Ok(SessionEvent::Stderr {
                data: b"e".to_vec()
            })
        );
        assert_eq!(
            SessionEvent::from_message(Message::Failed {
                reason: "no".into()
            }),
            Ok(SessionEvent::Failed {
                reason: "no".into()
            })
        );
    }

    #[test]
    fn exit_code_is_128_plus_signal_or_minus_one() {
        let ex =
            |code, signal| SessionEvent::from_message(Message::Exited { code, signal }).unwrap();
        assert_eq!(
            ex(Some(3), None),
            SessionEvent::Exited {
                code: 3,
                signal: None
            }
        );
        assert_eq!(
            ex(None, Some(9)),
            SessionEvent::Exited {
                code: 137,
                signal: Some(9)
            }
        );
        assert_eq!(
            ex(None, None),
            SessionEvent::Exited {
                code: -1,
                signal: None
            }
        );
    }

    #[test]
    fn fs_messages_map_and_errno_is_sanitised() {
        assert_eq!(
            SessionEvent::from_message(Message::FsEntries(vec![entry()])),
            Ok(SessionEvent::FsEntries {
                entries: vec![entry()]
            })
        );
        assert_eq!(
            SessionEvent::from_message(Message::FsExists(true)),
            Ok(SessionEvent::FsExists { exists: true })
        );
        assert_eq!(
            SessionEvent::from_message(Message::FsEnd),
            Ok(SessionEvent::FsEnd)
        );
        for (sent, got) in [
            ("ENOENT", "ENOENT"),
            ("E2BIG", "E2BIG"),
            ("enoent", "EIO"),
            ("EVERYLONGERRNONAME", "EIO"),
            ("E\u{e9}", "EIO"),
            ("", "EIO"),
        ] {
            let ev = SessionEvent::from_message(Message::FsError {
                errno: sent.into(),
                message: "m".into(),
            });
            assert_eq!(
                ev,
                Ok(SessionEvent::FsError {
                    errno: got.into(),
                    message: "m".into()
                }),
                "{sent:?}"
            );
        }
    }

    #[test]
    fn errors_keep_only_trusted_codes_and_other_messages_are_unexpected() {
        let err = |code: &str| {
            SessionEvent::from_message(Message::Error {
                code: code.into(),
                message: "t".into(),
            })
        };
        assert_eq!(
            err("sandboxDraining"),
            Err(NotAnEvent::Error {
                code: ErrorCode::SandboxDraining,
                message: "t".into()
            })
        );
        assert_eq!(
            err("sandboxNotFound"),
            Err(NotAnEvent::Error {
                code: ErrorCode::Protocol,
                message: "t".into()
            })
        );
        assert_eq!(
            SessionEvent::from_message(Message::Shutdown),
            Err(NotAnEvent::Unexpected("Shutdown".into()))
        );
        assert_eq!(
            SessionEvent::from_message(Message::Stdin(vec![1; 10_000])),
            Err(NotAnEvent::Unexpected("Stdin".into()))
        );
    }

    #[test]
    fn events_serialize_as_tagged_camel_case_objects() {
        let j = |e: &SessionEvent| serde_json::to_value(e).unwrap();
        assert_eq!(
            j(&SessionEvent::Exited {
                code: 137,
                signal: Some(9)
            }),
            serde_json::json!({"kind": "exited", "code": 137, "signal": 9})
        );
        assert_eq!(
            j(&SessionEvent::FsEnd),
            serde_json::json!({"kind": "fsEnd"})
        );
        assert_eq!(
            j(&SessionEvent::FsStat { entry: entry() }),
            serde_json::json!({"kind": "fsStat", "entry": {"name": "a", "kind": "file", "size": 5e9, "mode": 420, "modifiedMs": 1_700_000_000_000i64}})
        );
    }
}
