//! The wire format, frozen: one of every message, encoded, in a committed golden file, so
//! that any change of the format is a visible diff in review (and a reason to bump
//! PROTOCOL_VERSION). `MSB_BLESS=1 cargo test -p msb-protocol --test golden` rewrites it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use msb_protocol::*;

fn entry() -> FsEntry {
    FsEntry {
        name: "a.txt".into(),
        kind: "file".into(),
        size: 5,
        mode: 0o644,
        modified_ms: 1_700_000_000_000,
    }
}

fn disk(serial: &str) -> DiskSpec {
    DiskSpec {
        serial: serial.into(),
        fstype: "ext4".into(),
    }
}

/// One of every message (and of every FsOp and LowerSpec).
fn samples() -> Vec<Message> {
    vec![
        Message::Hello {
            version: PROTOCOL_VERSION,
        },
        Message::Bootstrap(Bootstrap {
            root: RootSpec {
                lower: LowerSpec::Disk(disk("lower")),
                upper: disk("upper"),
            },
            env: vec![("PATH".into(), "/bin".into())],
            workdir: Some("/work".into()),
            user: Some("1000:1000".into()),
            hostname: "sb".into(),
            time_unix_ms: 1_700_000_000_000,
            entropy: vec![1, 2, 3, 4],
            mounts: vec![GuestMount {
                fstype: "virtiofs".into(),
                source: "vol0".into(),
                target: "/data".into(),
                readonly: true,
                options: String::new(),
            }],
            network: Some(GuestNetwork {
                ip: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 2),
                mtu: 65520,
                host_ip: Ipv4Addr::new(10, 0, 2, 254),
                dns: true,
            }),
            ca_cert_pem: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
        }),
        Message::Bootstrap(Bootstrap {
            root: RootSpec {
                lower: LowerSpec::Virtiofs { tag: "root".into() },
                upper: disk("upper"),
            },
            env: vec![],
            workdir: None,
            user: None,
            hostname: "sb".into(),
            time_unix_ms: 0,
            entropy: vec![],
            mounts: vec![],
            network: None,
            ca_cert_pem: None,
        }),
        Message::Ready,
        Message::Exec(ExecRequest {
            cmd: "sh".into(),
            args: vec!["-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            user: Some("nobody".into()),
            stdin: true,
            tty: Some(TtySize { rows: 24, cols: 80 }),
            rlimits: vec![("nofile".into(), 64), ("core".into(), u64::MAX)],
        }),
        Message::Started { pid: 42 },
        Message::Stdout(b"out".to_vec()),
        Message::Stderr(b"err".to_vec()),
        Message::Exited {
            code: Some(0),
            signal: None,
        },
        Message::Exited {
            code: None,
            signal: Some(9),
        },
        Message::Failed {
            reason: "no such file".into(),
        },
        Message::Shutdown,
        Message::Error {
            code: "protocol".into(),
            message: "bad".into(),
        },
        Message::Stop { timeout_ms: 5000 },
        Message::Kill,
        Message::Drain,
        Message::Detach,
        Message::Metrics,
        Message::GuestStats(GuestStats {
            mem_total_bytes: 536_870_912,
            mem_available_bytes: 400_000_000,
            disk_read_bytes: 1,
            disk_write_bytes: 2,
            net_rx_bytes: 3,
            net_tx_bytes: 4,
        }),
        Message::MetricsReport(MetricsReport {
            cpu_percent: 12.5,
            memory_bytes: 50_000_000,
            memory_limit_bytes: 536_870_912,
            disk_read_bytes: 5_000_000_000,
            disk_write_bytes: 2,
            net_rx_bytes: 3,
            net_tx_bytes: 4,
            timestamp_ms: 1_700_000_000_000,
            uptime_ms: 1234,
        }),
        Message::Done,
        Message::Stdin(b"in".to_vec()),
        Message::StdinClose,
        Message::Signal { signal: 15 },
        Message::Resize {
            rows: 40,
            cols: 120,
        },
        Message::Credit { bytes: 65_792 },
        Message::Fs(FsOp::Read { path: "/a".into() }),
        Message::Fs(FsOp::Write {
            path: "/a".into(),
            mode: Some(0o600),
            append: false,
        }),
        Message::Fs(FsOp::List { path: "/".into() }),
        Message::Fs(FsOp::Stat { path: "/a".into() }),
        Message::Fs(FsOp::Exists { path: "/a".into() }),
        Message::Fs(FsOp::Mkdir {
            path: "/d".into(),
            mode: None,
            recursive: true,
        }),
        Message::Fs(FsOp::Remove { path: "/a".into() }),
        Message::Fs(FsOp::RemoveDir {
            path: "/d".into(),
            recursive: true,
        }),
        Message::Fs(FsOp::Copy {
            src: "/a".into(),
            dst: "/b".into(),
        }),
        Message::Fs(FsOp::Rename {
            src: "/a".into(),
            dst: "/b".into(),
        }),
        Message::Fs(FsOp::Symlink {
            target: "/a".into(),
            link: "/l".into(),
        }),
        Message::FsData(b"data".to_vec()),
        Message::FsEnd,
        Message::FsEntries(vec![entry()]),
        Message::FsStat(entry()),
        Message::FsExists(true),
        Message::FsDone,
        Message::FsError {
            errno: "ENOENT".into(),
            message: "/a".into(),
        },
        Message::Ping,
        Message::Touch,
        Message::Touched { activity_seq: 3 },
        Message::Pause,
        Message::Resume,
        Message::SetClock {
            unix_ms: 1_700_000_000_123,
        },
        Message::Fork {
            dir: "/h/forks/f1".into(),
        },
        Message::Forked {
            entropy: vec![1, 2, 3],
            first_id: 65_536,
            hostname: "f1".into(),
            unix_ms: 1_700_000_000_123,
        },
        Message::Prepare {
            lower: DiskSpec {
                serial: "lower".into(),
                fstype: "ext4".into(),
            },
        },
        Message::PrepareRoot {
            upper: DiskSpec {
                serial: "upper".into(),
                fstype: "ext4".into(),
            },
            network: Some(GuestNetwork {
                ip: "100.96.0.2".parse().unwrap(),
                prefix_len: 30,
                gateway: "100.96.0.1".parse().unwrap(),
                mtu: 1500,
                host_ip: "100.96.0.1".parse().unwrap(),
                dns: true,
            }),
        },
        Message::Prepared,
    ]
}

/// Index of a message's variant. Exhaustive: a new variant does not compile until it is
/// listed here, and the test then fails until `samples` has one.
fn variant(m: &Message) -> usize {
    match m {
        Message::Hello { .. } => 0,
        Message::Bootstrap(_) => 1,
        Message::Ready => 2,
        Message::Exec(_) => 3,
        Message::Started { .. } => 4,
        Message::Stdout(_) => 5,
        Message::Stderr(_) => 6,
        Message::Exited { .. } => 7,
        Message::Failed { .. } => 8,
        Message::Shutdown => 9,
        Message::Error { .. } => 10,
        Message::Stop { .. } => 11,
        Message::Kill => 12,
        Message::Drain => 13,
        Message::Detach => 14,
        Message::Metrics => 15,
        Message::GuestStats(_) => 16,
        Message::MetricsReport(_) => 17,
        Message::Done => 18,
        Message::Stdin(_) => 19,
        Message::StdinClose => 20,
        Message::Signal { .. } => 21,
        Message::Resize { .. } => 22,
        Message::Credit { .. } => 23,
        Message::Fs(_) => 24,
        Message::FsData(_) => 25,
        Message::FsEnd => 26,
        Message::FsEntries(_) => 27,
        Message::FsStat(_) => 28,
        Message::FsExists(_) => 29,
        Message::FsDone => 30,
        Message::FsError { .. } => 31,
        Message::Ping => 32,
        Message::Touch => 33,
        Message::Touched { .. } => 34,
        Message::Pause => 35,
        Message::Resume => 36,
        Message::SetClock { .. } => 37,
        Message::Fork { .. } => 38,
        Message::Forked { .. } => 39,
        Message::Prepare { .. } => 40,
        Message::Prepared => 41,
        Message::PrepareRoot { .. } => 42,
    }
}
const VARIANTS: usize = 43;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The payload in CBOR diagnostic notation (RFC 8949 section 8): `{"k": 1, "b": h'00ff'}`.
fn readable(m: &Message) -> String {
    let mut buf = Vec::new();
    ciborium::into_writer(m, &mut buf).unwrap();
    diag(&ciborium::from_reader(&buf[..]).unwrap())
}

fn diag(v: &ciborium::Value) -> String {
    use ciborium::Value as V;
    match v {
        V::Integer(i) => i128::from(*i).to_string(),
        V::Float(f) => format!("{f:?}"),
        V::Text(t) => format!("{t:?}"),
        V::Bytes(b) => format!("h'{}'", hex(b)),
        V::Bool(b) => b.to_string(),
        V::Null => "null".into(),
        V::Array(a) => format!("[{}]", a.iter().map(diag).collect::<Vec<_>>().join(", ")),
        V::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", diag(k), diag(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn render() -> String {
    let mut out = format!(
        "# msb-protocol wire format, version {PROTOCOL_VERSION}: one frame per message\n\
         # (id 7, no flags). Generated by crates/protocol/tests/golden.rs; a change here\n\
         # is a change of the wire format.\n\n"
    );
    for m in samples() {
        let frame = Frame::new(7, m.clone()).encode().unwrap();
        out.push_str(&format!(
            "{}\n  value: {}\n  frame: {}\n\n",
            m.kind_name(),
            readable(&m),
            hex(&frame)
        ));
    }
    out
}

#[test]
fn samples_cover_every_message() {
    let mut seen = [false; VARIANTS];
    for m in samples() {
        seen[variant(&m)] = true;
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|i| !seen[*i]).collect();
    assert!(missing.is_empty(), "no sample of variants {missing:?}");
}

#[test]
fn every_sample_round_trips() {
    for m in samples() {
        let frame = Frame::new(7, m.clone()).encode().unwrap();
        assert_eq!(decode_raw(&frame).unwrap().message, m);
    }
}

#[test]
fn wire_format_matches_the_golden_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/messages.txt");
    let now = render();
    if std::env::var_os("MSB_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        old == now,
        "the wire format changed ({}): if that is intended, bump PROTOCOL_VERSION when peers of the old format must be refused, run `MSB_BLESS=1 cargo test -p msb-protocol --test golden` and commit the file",
        path.display()
    );
}

#[test]
fn versions_must_match_exactly() {
    assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
    for other in [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, u32::MAX] {
        let e = check_version(other).unwrap_err();
        assert!(
            e.contains(&format!(
                "this side speaks {PROTOCOL_VERSION}, the peer {other}"
            )),
            "{e}"
        );
    }
}

#[test]
fn counters_cross_as_numbers_and_refuse_what_is_not_a_count() {
    // FsEntry.size is a float on the wire; an integer is accepted too (older encoders),
    // a negative or fractional one is refused.
    #[derive(serde::Serialize)]
    struct Raw {
        name: &'static str,
        kind: &'static str,
        size: ciborium::Value,
        mode: u32,
        #[serde(rename = "modifiedMs")]
        modified_ms: i64,
    }
    let decode = |size: ciborium::Value| {
        let mut buf = Vec::new();
        ciborium::into_writer(
            &Raw {
                name: "a",
                kind: "file",
                size,
                mode: 0,
                modified_ms: 0,
            },
            &mut buf,
        )
        .unwrap();
        ciborium::from_reader::<FsEntry, _>(&buf[..]).map(|e| e.size)
    };
    assert_eq!(decode(ciborium::Value::Float(5e9)).unwrap(), 5_000_000_000);
    assert_eq!(decode(ciborium::Value::Integer(7.into())).unwrap(), 7);
    assert!(decode(ciborium::Value::Float(-1.0)).is_err());
    assert!(decode(ciborium::Value::Float(1.5)).is_err());
    assert!(decode(ciborium::Value::Float(f64::NAN)).is_err());
    assert!(decode(ciborium::Value::Integer((-3).into())).is_err());
}
