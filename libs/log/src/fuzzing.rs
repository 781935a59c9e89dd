//! Entry points into the embedded log's private parsers for the fuzz targets (`libs/fuzz`).
//!
//! Not part of the crate's API: hidden from its docs, and changed whenever the on-disk format
//! changes. Each function is a thin wrapper over what the log itself runs on bytes read from
//! disk (`embedded/format.rs`).

use bytes::Bytes;

use crate::ProduceRecord;
use crate::embedded::format::{self, Decoded, IndexEntry, Published};

/// What the segment reader makes of the bytes where a frame should start.
#[derive(Debug)]
pub enum FrameParse {
    /// A whole, valid frame.
    Frame {
        /// Bytes of the frame, header included.
        frame_len: usize,
        /// The record's offset.
        offset: u64,
        /// The record, as it was appended (with no partition).
        record: ProduceRecord,
    },
    /// A skip frame, where a repair removed records `first..=last`.
    Skip {
        /// Bytes of the frame, header included.
        frame_len: usize,
        /// The first offset it covers.
        first: u64,
        /// The last offset it covers.
        last: u64,
        /// The offset after it, as readers compute it.
        end_offset: u64,
    },
    /// The buffer ends inside the frame; its length once the header is there.
    Incomplete {
        /// The frame's whole length, when the header was read.
        frame_len: Option<usize>,
    },
    /// The bytes are not a valid frame.
    Invalid {
        /// Why.
        reason: String,
    },
}

/// Decodes the frame at the start of `buf`, as a segment reader does.
pub fn decode_frame(buf: &Bytes) -> FrameParse {
    match format::decode_frame(buf) {
        Decoded::Frame(frame) if frame.skipped_to.is_some() => FrameParse::Skip {
            frame_len: frame.frame_len,
            first: frame.offset,
            last: frame.skipped_to.unwrap_or(frame.offset),
            end_offset: frame.end_offset(),
        },
        Decoded::Frame(frame) => FrameParse::Frame {
            frame_len: frame.frame_len,
            offset: frame.offset,
            record: ProduceRecord {
                key: frame.key.clone().map(|range| buf.slice(range)),
                value: buf.slice(frame.value.clone()),
                timestamp: frame.timestamp,
                headers: format::headers_from(buf, &frame),
                partition: None,
            },
        },
        Decoded::Incomplete { frame_len } => FrameParse::Incomplete { frame_len },
        Decoded::Invalid { reason } => FrameParse::Invalid { reason },
    }
}

/// Encodes `record` at `offset` as the writer does, with its size as the writer computes it.
pub fn encode_frame(offset: u64, record: &ProduceRecord) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    format::encode_frame(&mut buf, offset, record);
    (buf, format::frame_size(record))
}

/// Encodes the skip frames a repair writes over `len` bytes for offsets `first..=last`.
pub fn encode_skip_frames(first: u64, last: u64, len: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    format::encode_skip_frames(&mut buf, first, last, len);
    buf
}

/// Puts the frame header (length and checksum) in front of `body`, so that the body parser
/// is reached whatever the body holds.
pub fn frame_with_body(body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(format::FRAME_HEADER_BYTES + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    buf.extend_from_slice(body);
    buf
}

/// Decodes an index file and encodes its entries again; `None` if it does not decode.
pub fn reencode_index(buf: &[u8]) -> Option<Vec<u8>> {
    let entries = IndexEntry::decode_all(buf)?;
    let mut encoded = Vec::with_capacity(entries.len() * format::INDEX_ENTRY_BYTES);
    for entry in &entries {
        entry.encode(&mut encoded);
    }
    Some(encoded)
}

/// Decodes a `published` file and encodes it again; `None` if it does not decode.
pub fn reencode_published(buf: &[u8]) -> Option<Vec<u8>> {
    Published::decode(buf).map(|published| published.encode().to_vec())
}
