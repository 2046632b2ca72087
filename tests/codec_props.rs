//! Property tests of the codecs: any messages, encoded and cut into arbitrary reads, decode
//! back to themselves; arbitrary bytes never panic a decoder or make it buffer past its limit.

use bytes::BytesMut;
use proptest::prelude::*;
use sockit::{CodecError, FrameCodec, Framing, Limits, Message};
use tokio_util::codec::{Decoder, Encoder};

/// Every framing except `raw`, which by definition does not keep message boundaries.
fn delimited() -> impl Strategy<Value = Framing> {
    prop::sample::select(
        Framing::NAMES
            .iter()
            .map(|n| n.parse::<Framing>().unwrap())
            .filter(|f| f.is_delimited())
            .collect::<Vec<_>>(),
    )
}

fn bodies(framing: Framing) -> BoxedStrategy<Vec<Vec<u8>>> {
    let max = match framing {
        Framing::Length {
            prefix: sockit::codec::Prefix::U8,
            ..
        } => 255,
        _ => 2000,
    };
    let body = if framing == Framing::Line {
        // A line cannot contain its terminator, nor end in the `\r` of a `\r\n`.
        prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..max,
        )
        .prop_map(|mut v| {
            if v.last() == Some(&b'\r') {
                v.pop();
            }
            v
        })
        .boxed()
    } else {
        prop::collection::vec(any::<u8>(), 0..max).boxed()
    };
    prop::collection::vec(body, 0..20).boxed()
}

/// Splits `wire` at the given cut points (taken modulo its length).
fn chunks(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if wire.is_empty() { 0 } else { c % wire.len() })
        .collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| wire[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn messages_survive_any_split_into_reads(
        (framing, messages) in delimited().prop_flat_map(|f| (Just(f), bodies(f))),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let mut codec = FrameCodec::new(framing, Limits::default());
        let mut wire = BytesMut::new();
        for m in &messages {
            codec.encode(&Message::new(m.clone()), &mut wire).unwrap();
        }
        let mut decoder = FrameCodec::new(framing, Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(msg) = decoder.decode(&mut buf).unwrap() {
                got.push(msg.into_body().to_vec());
            }
        }
        prop_assert!(decoder.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(got, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_outgrow_the_limits(
        framing in prop::sample::select(
            Framing::NAMES.iter().map(|n| n.parse::<Framing>().unwrap()).collect::<Vec<_>>()
        ),
        wire in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let limits = Limits { max_frame: 256, max_line: 256, max_header: 256 };
        let mut decoder = FrameCodec::new(framing, limits);
        let mut buf = BytesMut::new();
        'feed: for chunk in chunks(&wire, &cuts) {
            buf.extend_from_slice(&chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(msg)) => prop_assert!(msg.len() <= 8192),
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(!matches!(e, CodecError::Io(_)));
                        break 'feed;
                    }
                }
            }
            // What stays buffered is one unfinished frame: prefix/header plus at most a limit.
            prop_assert!(buf.len() <= 4 + 256 + 256 + chunk.len(), "buffered {}", buf.len());
        }
    }
}
