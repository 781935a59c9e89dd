//! The embedded log's parsers of its own files (`libs/log/src/embedded/format.rs`, through
//! `runnel_log::fuzzing`) on arbitrary bytes: the input is read as a segment (frames one
//! after another, as recovery scans one), as a frame body behind a valid length and
//! checksum (so the body parser sees any bytes, not only those whose checksum a mutation
//! got right), as an index file and as a `published` file.
//!
//! Besides "no panic": whatever parses encodes back to the same bytes (a skip frame, but for
//! its padding, which a repair writes as zeros).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runnel_log::fuzzing::{
    FrameParse, decode_frame, encode_frame, encode_skip_frames, frame_with_body, reencode_index,
    reencode_published,
};

/// Decodes the frames at the start of `segment`; returns how many there were.
fn check_frames(segment: Bytes) -> usize {
    let mut rest = segment;
    let mut n_frames = 0;
    loop {
        match decode_frame(&rest) {
            FrameParse::Frame {
                frame_len,
                offset,
                record,
            } => {
                let (encoded, size) = encode_frame(offset, &record);
                assert_eq!(
                    size, frame_len,
                    "frame_size disagrees with the decoded length"
                );
                assert_eq!(
                    encoded,
                    rest[..frame_len],
                    "a frame does not re-encode to its bytes"
                );
                rest = rest.slice(frame_len..);
                n_frames += 1;
            }
            FrameParse::Skip {
                frame_len,
                first,
                last,
                end_offset,
            } => {
                assert_eq!(end_offset, last + 1);
                let encoded = encode_skip_frames(first, last, frame_len as u64);
                assert_eq!(encoded.len(), frame_len);
                // The body's fixed fields (first, last, key_len, padding_len) and the header
                // count; the padding in between may differ, and with it the checksum.
                assert_eq!(
                    encoded[..4],
                    rest[..4],
                    "a skip frame re-encodes to another length"
                );
                assert_eq!(
                    encoded[8..32],
                    rest[8..32],
                    "a skip frame re-encodes to other fields"
                );
                assert_eq!(encoded[frame_len - 4..], rest[frame_len - 4..frame_len]);
                rest = rest.slice(frame_len..);
                n_frames += 1;
            }
            FrameParse::Incomplete { frame_len } => {
                match frame_len {
                    None => assert!(rest.len() < 8, "a whole header read as incomplete"),
                    Some(frame_len) => assert!(frame_len > rest.len()),
                }
                return n_frames;
            }
            FrameParse::Invalid { .. } => return n_frames,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_frames(Bytes::copy_from_slice(data));
    let framed = Bytes::from(frame_with_body(data));
    let n_frames = check_frames(framed.clone());
    assert!(n_frames <= 1);
    if n_frames == 0 {
        assert!(
            matches!(decode_frame(&framed), FrameParse::Invalid { .. }),
            "a whole frame read as incomplete"
        );
    }

    match reencode_index(data) {
        Some(encoded) => assert_eq!(encoded, data, "an index does not re-encode to its bytes"),
        None => assert!(data.len() % 16 != 0, "an index of whole entries refused"),
    }
    if let Some(encoded) = reencode_published(data) {
        assert_eq!(
            encoded,
            data[..44],
            "a published file does not re-encode to its bytes"
        );
    }
});
