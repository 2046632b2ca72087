//! Feeds arbitrary bytes, cut into arbitrary reads, to every framing's decoder: none may panic,
//! buffer past its limits, or yield a message larger than its limit.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sockit::{FrameCodec, Framing, Limits};
use tokio_util::codec::Decoder;

const LIMIT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, wire)) = rest.split_first() else {
        return;
    };
    let name = Framing::NAMES[usize::from(selector) % Framing::NAMES.len()];
    let framing: Framing = name.parse().expect("listed names parse");
    let limits = Limits {
        max_frame: LIMIT,
        max_line: LIMIT,
        max_header: LIMIT,
    };
    let mut codec = FrameCodec::new(framing, limits);
    let mut buf = BytesMut::new();
    let step = usize::from(cut).max(1);
    for chunk in wire.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => assert!(msg.len() <= LIMIT.max(sockit::codec::RAW_CHUNK)),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // One unfinished frame at most: a prefix or header plus its body, within the limits.
        assert!(
            buf.len() <= 4 + 2 * LIMIT + step,
            "{name}: {} bytes buffered",
            buf.len()
        );
    }
    let _ = codec.decode_eof(&mut buf);
});
