use std::io::Cursor;

use msb_protocol::*;

fn exec() -> Message {
    Message::Exec(ExecRequest {
        cmd: "echo".into(),
        args: vec!["hi".into()],
        env: vec![("A".into(), "b".into())],
        cwd: Some("/tmp".into()),
        user: None,
        stdin: true,
        tty: Some(TtySize { rows: 24, cols: 80 }),
        rlimits: vec![("nofile".into(), 64)],
    })
}

#[test]
fn round_trip_blocking_and_incremental() {
    let msgs = vec![
        Frame::new(
            CHANNEL_ID,
            Message::Hello {
                version: PROTOCOL_VERSION,
            },
        ),
        Frame::new(7, exec()),
        Frame::new(7, Message::Stdout(vec![0, 1, 2, 255])),
        Frame::new(
            7,
            Message::Exited {
                code: Some(42),
                signal: None,
            },
        ),
        Frame::control(1, Message::Stop { timeout_ms: 500 }),
        Frame::new(
            8,
            Message::Fs(FsOp::Write {
                path: "/a".into(),
                mode: Some(0o600),
                append: false,
            }),
        ),
        Frame::new(8, Message::Stdin(vec![1, 2, 3])),
        Frame::new(8, Message::Credit { bytes: 65536 }),
        Frame::new(
            8,
            Message::FsEntries(vec![FsEntry {
                name: "x".into(),
                kind: "file".into(),
                size: 3,
                mode: 0o644,
                modified_ms: 1,
            }]),
        ),
        Frame::new(
            8,
            Message::FsError {
                errno: "ENOENT".into(),
                message: "/a: gone".into(),
            },
        ),
    ];
    let mut wire = Vec::new();
    for m in &msgs {
        wire.extend(m.encode().unwrap());
    }
    let mut cur = Cursor::new(wire.clone());
    for m in &msgs {
        assert_eq!(read_frame(&mut cur).unwrap().as_ref(), Some(m));
    }
    assert!(
        read_frame(&mut cur).unwrap().is_none(),
        "clean EOF between frames"
    );

    // One byte at a time through the incremental decoder.
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    for b in wire {
        dec.push(&[b]);
        while let Some(f) = dec.next_frame().unwrap() {
            out.push(f);
        }
    }
    assert_eq!(out, msgs);
    dec.finish().unwrap();
}

#[test]
fn truncated_frames_are_errors() {
    let wire = Frame::new(3, exec()).encode().unwrap();
    for cut in 1..wire.len() {
        let mut cur = Cursor::new(wire[..cut].to_vec());
        let err = read_frame(&mut cur).unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err}");

        let mut dec = FrameDecoder::new();
        dec.push(&wire[..cut]);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(matches!(dec.finish(), Err(FrameError::Truncated)));
    }
}

#[test]
fn oversized_frames_are_rejected_before_reading() {
    // A length just over the limit, with no body behind it: must fail on the header.
    let mut wire = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    wire.extend([0u8; 5]);
    assert!(matches!(
        read_frame(&mut Cursor::new(wire.clone())),
        Err(FrameError::TooLong(_))
    ));
    let mut dec = FrameDecoder::new();
    dec.push(&wire);
    assert!(matches!(dec.next_frame(), Err(FrameError::TooLong(_))));

    let huge = u32::MAX.to_be_bytes().to_vec();
    assert!(matches!(
        read_frame(&mut Cursor::new(huge)),
        Err(FrameError::TooLong(_))
    ));

    // The encoder refuses to build one either.
    let big = Message::Stdout(vec![0u8; MAX_PAYLOAD + 1]);
    assert!(matches!(
        encode_frame(1, 0, &big),
        Err(FrameError::PayloadTooLarge(_))
    ));
}

#[test]
fn short_length_and_unknown_flags_are_rejected() {
    let wire = [0, 0, 0, 4, 0, 0, 0, 1];
    assert!(matches!(
        read_frame(&mut Cursor::new(wire.to_vec())),
        Err(FrameError::TooShort(4))
    ));

    let mut good = Frame::new(1, Message::Ready).encode().unwrap();
    good[8] = 0x80;
    assert!(matches!(
        read_frame(&mut Cursor::new(good)),
        Err(FrameError::UnknownFlags(0x80))
    ));
}

#[test]
fn garbage_payloads_are_errors_not_panics() {
    // Deterministic pseudo-random garbage of many lengths, plus valid CBOR of the wrong shape.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for len in 0..512usize {
        let mut payload = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            payload.push(seed as u8);
        }
        let mut wire = ((payload.len() + 5) as u32).to_be_bytes().to_vec();
        wire.extend(9u32.to_be_bytes());
        wire.push(0);
        wire.extend(&payload);
        // Either a (coincidentally) valid message or an error; never a panic or hang.
        let _ = read_frame(&mut Cursor::new(wire));
    }
    let mut wrong = Vec::new();
    ciborium::into_writer(&("exec", 5u8), &mut wrong).unwrap();
    let mut wire = ((wrong.len() + 5) as u32).to_be_bytes().to_vec();
    wire.extend([0, 0, 0, 1, 0]);
    wire.extend(wrong);
    assert!(matches!(
        read_frame(&mut Cursor::new(wire)),
        Err(FrameError::Payload(_))
    ));
}

#[test]
fn raw_relay_helpers() {
    let mut raw = Frame::new(5, Message::Stderr(b"x".to_vec()))
        .encode()
        .unwrap();
    set_raw_id(&mut raw, 99);
    let f = decode_raw(&raw).unwrap();
    assert_eq!(f.id, 99);
    assert_eq!(f.message, Message::Stderr(b"x".to_vec()));
    assert!(decode_raw(&raw[..raw.len() - 1]).is_err());
}

#[test]
fn direction_rules() {
    assert!(!Message::Shutdown.allowed_from_guest());
    assert!(!exec().allowed_from_guest());
    assert!(Message::Stdout(vec![]).allowed_from_guest());
    assert!(!Message::Ready.allowed_from_client());
    assert!(exec().allowed_from_client());
    // The guest may not start sessions or send input; clients may not send output.
    assert!(!Message::Fs(FsOp::List { path: "/".into() }).allowed_from_guest());
    assert!(!Message::Stdin(vec![]).allowed_from_guest());
    assert!(!Message::FsData(vec![]).allowed_from_client());
    assert!(Message::Credit { bytes: 1 }.is_session_input());
    assert!(Message::FsDone.ends_session() && !Message::FsData(vec![]).ends_session());
}
