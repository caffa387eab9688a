//! The async codec: frames across arbitrary read boundaries, clean and unclean ends of
//! stream, hostile lengths, and cancel safety.

use std::time::Duration;

use msb_protocol::*;
use tokio::io::{duplex, AsyncWriteExt};

fn frames() -> Vec<Frame> {
    vec![
        Frame::new(CHANNEL_ID, Message::Hello { version: 9 }),
        Frame::new(3, Message::Stdout(vec![7u8; 100_000])),
        Frame::control(4, Message::Stop { timeout_ms: 5 }),
        Frame::new(
            5,
            Message::Exited {
                code: Some(0),
                signal: None,
            },
        ),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn reads_frames_split_at_every_size_then_clean_eof() {
    rt().block_on(async {
        let bytes: Vec<u8> = frames().iter().flat_map(|f| f.encode().unwrap()).collect();
        for step in [1usize, 3, 4096, 1 << 20] {
            let (mut a, b) = duplex(1 << 16);
            let data = bytes.clone();
            let writer = tokio::spawn(async move {
                for c in data.chunks(step) {
                    a.write_all(c).await.unwrap();
                }
            });
            let mut r = FrameReader::with_capacity(b, 7);
            let mut got = Vec::new();
            while let Some(f) = r.next_frame().await.unwrap() {
                got.push(f);
            }
            writer.await.unwrap();
            assert_eq!(got, frames(), "step {step}");
        }
    });
}

#[test]
fn write_frame_async_writes_what_encode_gives() {
    rt().block_on(async {
        let (mut a, b) = duplex(1 << 20);
        for f in frames() {
            write_frame_async(&mut a, &f).await.unwrap();
        }
        drop(a);
        let mut r = FrameReader::new(b);
        let mut raws = Vec::new();
        while let Some(raw) = r.next_raw().await.unwrap() {
            raws.push(raw);
        }
        let want: Vec<Vec<u8>> = frames().iter().map(|f| f.encode().unwrap()).collect();
        assert_eq!(raws, want);
    });
}

#[test]
fn end_of_stream_inside_a_frame_is_truncated() {
    rt().block_on(async {
        let mut bytes = frames()[1].encode().unwrap();
        bytes.truncate(bytes.len() - 1);
        let (mut a, b) = duplex(1 << 20);
        a.write_all(&bytes).await.unwrap();
        drop(a);
        let err = FrameReader::new(b).next_frame().await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err:?}");
    });
}

#[test]
fn hostile_length_is_refused_before_allocating() {
    rt().block_on(async {
        let (mut a, b) = duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = FrameReader::new(b).next_raw().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLong(u32::MAX)), "{err:?}");
    });
}

#[test]
fn a_dropped_read_loses_no_bytes() {
    rt().block_on(async {
        let bytes = frames()[2].encode().unwrap();
        let (mut a, b) = duplex(1 << 16);
        let mut r = FrameReader::new(b);
        // Half a frame, then a read that times out and is dropped.
        a.write_all(&bytes[..6]).await.unwrap();
        let t = tokio::time::timeout(Duration::from_millis(20), r.next_frame()).await;
        assert!(t.is_err(), "no whole frame yet");
        a.write_all(&bytes[6..]).await.unwrap();
        assert_eq!(r.next_frame().await.unwrap(), Some(frames()[2].clone()));
    });
}
