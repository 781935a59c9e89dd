//! On-disk format of segment and index files.
//!
//! A segment file is a sequence of record frames, little-endian:
//!
//! ```text
//! frame := len:u32 crc:u32 body          len = byte length of body, crc = crc32c(body)
//! body  := offset:u64 timestamp:i64
//!          key_len:i32 key[key_len]      key_len = -1 for no key
//!          value_len:u32 value[value_len]
//!          header_count:u32 (name_len:u16 name value_len:u32 value)*
//! ```
//!
//! Every record carries its absolute offset, so a segment can be checked and its index
//! rebuilt from the segment alone.
//!
//! A *skip frame* stands where a repair (`runnel log repair --skip-range`) removed corrupt
//! records: a frame like the others (so it is checksummed and indexed), whose `key_len` is
//! -2 and whose timestamp slot holds the last offset it covers, the value being padding:
//!
//! ```text
//! skip body := first:u64 last:u64 key_len=-2:i32 padding_len:u32 padding[padding_len]
//!              header_count=0:u32
//! ```
//!
//! It covers offsets `first..=last` and fills exactly the bytes of the frames it replaced,
//! so every other frame keeps its position and offset. Readers step over it: the next
//! record they return has offset `last + 1`. An index file is a sequence of 16-byte entries
//! `(relative_offset:u32, position:u32, max_timestamp_before:i64)`: the record with offset
//! `base + relative_offset` starts at `position`, and every record of the segment before it
//! has a timestamp at most `max_timestamp_before`. Both columns grow monotonically, so one
//! binary search finds a position by offset and another by timestamp. A sealed segment's
//! index ends with a sentinel entry `(record_count, segment_size, max_timestamp)`.
//!
//! A partition's `published` file is what its writer last made durable, for readers in other
//! processes: `crc:u32 earliest:u64 active_base:u64 active_size:u64 next_offset:u64
//! max_timestamp:i64` (crc = crc32c of the rest), rewritten in place after each group commit.

use std::ops::Range;

use crate::{Header, ProduceRecord};

/// Bytes of the `len` and `crc` fields.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;
/// Fixed bytes of a body: offset, timestamp, key_len, value_len, header_count.
const BODY_FIXED_BYTES: usize = 8 + 8 + 4 + 4 + 4;
/// The largest body the log writes or believes when reading a length field.
pub(crate) const MAX_BODY_BYTES: usize = 64 << 20;
/// Bytes of one index entry.
pub(crate) const INDEX_ENTRY_BYTES: usize = 16;
/// The smallest frame: a header and a fixed body with no key, value or header.
pub(crate) const MIN_FRAME_BYTES: usize = FRAME_HEADER_BYTES + BODY_FIXED_BYTES;
/// The largest frame the log writes or believes.
pub(crate) const MAX_FRAME_BYTES: usize = FRAME_HEADER_BYTES + MAX_BODY_BYTES;
/// The `key_len` that marks a skip frame.
const SKIP_KEY_LEN: i32 = -2;

/// Returns the encoded frame size of `record`.
pub(crate) fn frame_size(record: &ProduceRecord) -> usize {
    FRAME_HEADER_BYTES
        + BODY_FIXED_BYTES
        + record.key.as_ref().map_or(0, |key| key.len())
        + record.value.len()
        + record
            .headers
            .iter()
            .map(|header| 2 + header.key.len() + 4 + header.value.len())
            .sum::<usize>()
}

/// Appends the frame of `record` at `offset` to `buf`.
///
/// The caller has checked `frame_size(record) - FRAME_HEADER_BYTES <= MAX_BODY_BYTES` and that
/// header names fit in a u16.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, offset: u64, record: &ProduceRecord) {
    let frame_start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let body_start = buf.len();
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&record.timestamp.to_le_bytes());
    match &record.key {
        Some(key) => {
            buf.extend_from_slice(&(key.len() as i32).to_le_bytes());
            buf.extend_from_slice(key);
        }
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    buf.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record.value);
    buf.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for header in &record.headers {
        buf.extend_from_slice(&(header.key.len() as u16).to_le_bytes());
        buf.extend_from_slice(header.key.as_bytes());
        buf.extend_from_slice(&(header.value.len() as u32).to_le_bytes());
        buf.extend_from_slice(&header.value);
    }
    let body_len = (buf.len() - body_start) as u32;
    let crc = crc32c::crc32c(&buf[body_start..]);
    buf[frame_start..frame_start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends skip frames that cover offsets `first..=last` and fill exactly `len` bytes.
///
/// One frame when `len` fits in one; otherwise as many as needed, each covering at least
/// one offset, the last covering the rest.
///
/// # Panics
///
/// If `first > last`, or `len` is too small or too large for the offsets: it must be at least
/// [`MIN_FRAME_BYTES`] and at most [`MAX_FRAME_BYTES`] per offset.
pub(crate) fn encode_skip_frames(buf: &mut Vec<u8>, first: u64, last: u64, len: u64) {
    assert!(first <= last, "a skip frame covers at least one offset");
    let n_frames = len.div_ceil(MAX_FRAME_BYTES as u64).max(1);
    assert!(
        n_frames <= last - first + 1 && len >= n_frames * MIN_FRAME_BYTES as u64,
        "{len} bytes cannot hold skip frames for offsets {first}..={last}"
    );
    let mut offset = first;
    let mut remaining = len;
    for frame_idx in 0..n_frames {
        let frames_left = n_frames - frame_idx;
        let frame_len = remaining.div_ceil(frames_left);
        let frame_last = if frames_left == 1 { last } else { offset };
        let padding_len = frame_len as usize - MIN_FRAME_BYTES;
        let frame_start = buf.len();
        buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        let body_start = buf.len();
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&frame_last.to_le_bytes());
        buf.extend_from_slice(&SKIP_KEY_LEN.to_le_bytes());
        buf.extend_from_slice(&(padding_len as u32).to_le_bytes());
        buf.resize(buf.len() + padding_len, 0);
        buf.extend_from_slice(&0u32.to_le_bytes());
        let body_len = (buf.len() - body_start) as u32;
        let crc = crc32c::crc32c(&buf[body_start..]);
        buf[frame_start..frame_start + 4].copy_from_slice(&body_len.to_le_bytes());
        buf[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
        remaining -= frame_len;
        offset = frame_last + 1;
    }
}

/// A decoded frame, as byte ranges into the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Total bytes of the frame, header included.
    pub(crate) frame_len: usize,
    pub(crate) offset: u64,
    /// For a skip frame, the last offset it covers (it holds no record); `None` for a record.
    pub(crate) skipped_to: Option<u64>,
    /// The record's timestamp; `i64::MIN` for a skip frame.
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Range<usize>>,
    pub(crate) value: Range<usize>,
    pub(crate) headers: Vec<(Range<usize>, Range<usize>)>,
}

/// The result of looking at bytes where a frame should start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole, valid frame.
    Frame(Frame),
    /// The buffer ends inside the frame; `frame_len` is known once the header is there.
    Incomplete { frame_len: Option<usize> },
    /// The bytes are not a valid frame.
    Invalid { reason: String },
}

/// Decodes the frame at the start of `buf`, verifying its checksum.
pub(crate) fn decode_frame(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME_HEADER_BYTES {
        return Decoded::Incomplete { frame_len: None };
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(BODY_FIXED_BYTES..=MAX_BODY_BYTES).contains(&body_len) {
        return Decoded::Invalid {
            reason: format!(
                "frame length {body_len} is outside [{BODY_FIXED_BYTES}, {MAX_BODY_BYTES}]"
            ),
        };
    }
    let frame_len = FRAME_HEADER_BYTES + body_len;
    if buf.len() < frame_len {
        return Decoded::Incomplete {
            frame_len: Some(frame_len),
        };
    }
    let stored_crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[FRAME_HEADER_BYTES..frame_len];
    let computed_crc = crc32c::crc32c(body);
    if stored_crc != computed_crc {
        return Decoded::Invalid {
            reason: format!(
                "checksum mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
            ),
        };
    }
    match parse_body(body, FRAME_HEADER_BYTES) {
        Ok(mut frame) => {
            frame.frame_len = frame_len;
            Decoded::Frame(frame)
        }
        Err(reason) => Decoded::Invalid { reason },
    }
}

impl Frame {
    /// The offset after the last one this frame covers.
    pub(crate) fn end_offset(&self) -> u64 {
        self.skipped_to.unwrap_or(self.offset) + 1
    }
}

/// Parses a checksummed body; ranges are shifted by `base` to index the enclosing buffer.
fn parse_body(body: &[u8], base: usize) -> Result<Frame, String> {
    let mut cursor = Cursor { buf: body, pos: 0 };
    let offset = u64::from_le_bytes(cursor.array()?);
    // Readers compute the offset after a frame (`Frame::end_offset`); u64::MAX has none.
    if offset == u64::MAX {
        return Err(format!("offset {offset} leaves no next offset"));
    }
    let timestamp = i64::from_le_bytes(cursor.array()?);
    let key_len = i32::from_le_bytes(cursor.array()?);
    let key = match key_len {
        -1 => None,
        SKIP_KEY_LEN => return parse_skip_body(&mut cursor, offset, timestamp as u64, base),
        len if len >= 0 => Some(cursor.range(len as usize)?),
        len => return Err(format!("negative key length {len}")),
    };
    let value_len = u32::from_le_bytes(cursor.array()?) as usize;
    let value = cursor.range(value_len)?;
    let header_count = u32::from_le_bytes(cursor.array()?) as usize;
    let mut headers = Vec::with_capacity(header_count.min(64));
    for _ in 0..header_count {
        let name_len = u16::from_le_bytes(cursor.array()?) as usize;
        let name = cursor.range(name_len)?;
        if std::str::from_utf8(&body[name.clone()]).is_err() {
            return Err("header name is not UTF-8".to_string());
        }
        let value_len = u32::from_le_bytes(cursor.array()?) as usize;
        let header_value = cursor.range(value_len)?;
        headers.push((shift(name, base), shift(header_value, base)));
    }
    if cursor.pos != body.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            body.len() - cursor.pos
        ));
    }
    Ok(Frame {
        frame_len: 0,
        offset,
        skipped_to: None,
        timestamp,
        key: key.map(|range| shift(range, base)),
        value: shift(value, base),
        headers,
    })
}

/// Parses the rest of a skip frame's body (after `key_len`).
fn parse_skip_body(
    cursor: &mut Cursor<'_>,
    first: u64,
    last: u64,
    base: usize,
) -> Result<Frame, String> {
    if last < first {
        return Err(format!(
            "skip frame ends at offset {last}, before its first offset {first}"
        ));
    }
    if last == u64::MAX {
        return Err(format!(
            "skip frame ends at offset {last}, which leaves no next offset"
        ));
    }
    let padding_len = u32::from_le_bytes(cursor.array()?) as usize;
    let padding = cursor.range(padding_len)?;
    let header_count = u32::from_le_bytes(cursor.array()?);
    if header_count != 0 || cursor.pos != cursor.buf.len() {
        return Err("skip frame with headers or trailing bytes".to_string());
    }
    Ok(Frame {
        frame_len: 0,
        offset: first,
        skipped_to: Some(last),
        timestamp: i64::MIN,
        key: None,
        value: shift(padding, base),
        headers: Vec::new(),
    })
}

fn shift(range: Range<usize>, by: usize) -> Range<usize> {
    range.start + by..range.end + by
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let range = self.range(N)?;
        Ok(self.buf[range].try_into().expect("range has length N"))
    }

    fn range(&mut self, len: usize) -> Result<Range<usize>, String> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| format!("field of {len} bytes runs past the end of the record"))?;
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }
}

/// Builds the header list of a decoded frame from the buffer it was decoded from.
pub(crate) fn headers_from(buf: &bytes::Bytes, frame: &Frame) -> Vec<Header> {
    frame
        .headers
        .iter()
        .map(|(name, value)| Header {
            key: String::from_utf8_lossy(&buf[name.clone()]).into_owned(),
            value: buf.slice(value.clone()),
        })
        .collect()
}

/// One entry of a segment index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
    pub(crate) max_timestamp_before: i64,
}

impl IndexEntry {
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.relative_offset.to_le_bytes());
        buf.extend_from_slice(&self.position.to_le_bytes());
        buf.extend_from_slice(&self.max_timestamp_before.to_le_bytes());
    }

    /// Decodes an index file; `None` if its length is not a whole number of entries.
    pub(crate) fn decode_all(buf: &[u8]) -> Option<Vec<IndexEntry>> {
        if !buf.len().is_multiple_of(INDEX_ENTRY_BYTES) {
            return None;
        }
        let entries = buf
            .chunks_exact(INDEX_ENTRY_BYTES)
            .map(|chunk| IndexEntry {
                relative_offset: u32::from_le_bytes(chunk[0..4].try_into().expect("4 bytes")),
                position: u32::from_le_bytes(chunk[4..8].try_into().expect("4 bytes")),
                max_timestamp_before: i64::from_le_bytes(chunk[8..16].try_into().expect("8 bytes")),
            })
            .collect();
        Some(entries)
    }
}

/// Bytes of a `published` file.
pub(crate) const PUBLISHED_BYTES: usize = 44;

/// A partition's durable state as its writer published it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// Base offset of the oldest segment.
    pub(crate) earliest: u64,
    /// Base offset of the segment being written.
    pub(crate) active_base: u64,
    /// Durable bytes of that segment.
    pub(crate) active_size: u64,
    /// The offset after the last durable record.
    pub(crate) next_offset: u64,
    /// The largest timestamp in the active segment (`i64::MIN` if none).
    pub(crate) max_timestamp: i64,
}

impl Published {
    pub(crate) fn encode(&self) -> [u8; PUBLISHED_BYTES] {
        let mut buf = [0u8; PUBLISHED_BYTES];
        buf[4..12].copy_from_slice(&self.earliest.to_le_bytes());
        buf[12..20].copy_from_slice(&self.active_base.to_le_bytes());
        buf[20..28].copy_from_slice(&self.active_size.to_le_bytes());
        buf[28..36].copy_from_slice(&self.next_offset.to_le_bytes());
        buf[36..44].copy_from_slice(&self.max_timestamp.to_le_bytes());
        let crc = crc32c::crc32c(&buf[4..]);
        buf[0..4].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a `published` file; `None` if it is short or its checksum does not match
    /// (a read that raced the writer's rewrite).
    pub(crate) fn decode(buf: &[u8]) -> Option<Published> {
        let buf: &[u8; PUBLISHED_BYTES] = buf.get(..PUBLISHED_BYTES)?.try_into().ok()?;
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        (crc == crc32c::crc32c(&buf[4..])).then(|| Published {
            earliest: u64_at(4),
            active_base: u64_at(12),
            active_size: u64_at(20),
            next_offset: u64_at(28),
            max_timestamp: u64_at(36) as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn record(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> ProduceRecord {
        ProduceRecord {
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            timestamp: 1_700_000_000_123,
            headers: headers
                .iter()
                .map(|(k, v)| Header {
                    key: k.to_string(),
                    value: Bytes::copy_from_slice(v),
                })
                .collect(),
            partition: None,
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, &record(Some(b"k"), b"value", &[("h", b"v")]));
        for idx in 0..buf.len() {
            let mut corrupted = buf.clone();
            corrupted[idx] ^= 0x01;
            assert!(
                !matches!(decode_frame(&corrupted), Decoded::Frame(_)),
                "flip at byte {idx} went unnoticed"
            );
        }
    }

    /// Found by the `log_format` fuzz target (`libs/fuzz/regressions/log_format/`): a frame
    /// covering offset u64::MAX overflowed `Frame::end_offset`.
    #[test]
    fn frames_at_the_last_offset_are_invalid() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, u64::MAX, &record(None, b"v", &[]));
        assert!(matches!(decode_frame(&buf), Decoded::Invalid { .. }));
        // A skip frame's body from offset 0 to u64::MAX, no padding, no headers.
        let mut body = Vec::new();
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        body.extend_from_slice(&SKIP_KEY_LEN.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        match decode_frame(&buf) {
            Decoded::Invalid { reason } => assert_eq!(
                reason,
                "skip frame ends at offset 18446744073709551615, which leaves no next offset"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_incomplete() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 0, &record(None, b"abcdef", &[]));
        for cut in 0..buf.len() {
            match decode_frame(&buf[..cut]) {
                Decoded::Incomplete { .. } => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn published_state_round_trips_and_detects_torn_reads() {
        let published = Published {
            earliest: 99,
            active_base: 1_000,
            active_size: 4_096,
            next_offset: 1_042,
            max_timestamp: -5,
        };
        let bytes = published.encode();
        assert_eq!(Published::decode(&bytes), Some(published));
        for idx in 0..bytes.len() {
            let mut torn = bytes;
            torn[idx] ^= 0x10;
            assert_eq!(Published::decode(&torn), None, "flip at byte {idx}");
        }
        assert_eq!(Published::decode(&bytes[..PUBLISHED_BYTES - 1]), None);
    }

    #[test]
    fn skip_frames_fill_their_bytes_exactly_and_decode() {
        for (first, last, len) in [
            (10u64, 10u64, MIN_FRAME_BYTES as u64),
            (10, 12, 123),
            (7, 7_000, 1 << 20),
        ] {
            let mut buf = vec![0xAA; 3];
            encode_skip_frames(&mut buf, first, last, len);
            assert_eq!(buf.len() as u64 - 3, len);
            let mut position = 3;
            let mut next = first;
            while position < buf.len() {
                let Decoded::Frame(frame) = decode_frame(&buf[position..]) else {
                    panic!("skip frame at {position} of ({first}, {last}, {len}) did not decode");
                };
                assert_eq!(frame.offset, next);
                assert_eq!(frame.timestamp, i64::MIN);
                next = frame.end_offset();
                position += frame.frame_len;
            }
            assert_eq!(next, last + 1);
        }
    }

    #[test]
    fn every_single_byte_flip_of_a_skip_frame_is_detected() {
        let mut buf = Vec::new();
        encode_skip_frames(&mut buf, 5, 9, 60);
        for idx in 0..buf.len() {
            let mut corrupted = buf.clone();
            corrupted[idx] ^= 0x01;
            assert!(
                !matches!(decode_frame(&corrupted), Decoded::Frame(_)),
                "flip at byte {idx} went unnoticed"
            );
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            offset in any::<u64>(),
            timestamp in any::<i64>(),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            value in proptest::collection::vec(any::<u8>(), 0..300),
            headers in proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..20)), 0..4),
        ) {
            let produce = ProduceRecord {
                key: key.clone().map(Bytes::from),
                value: Bytes::from(value.clone()),
                timestamp,
                headers: headers.iter().map(|(k, v)| Header { key: k.clone(), value: Bytes::from(v.clone()) }).collect(),
                partition: None,
            };
            let mut buf = vec![0xAA; 3];
            encode_frame(&mut buf, offset, &produce);
            prop_assert_eq!(buf.len() - 3, frame_size(&produce));
            let bytes = Bytes::from(buf).slice(3..);
            let Decoded::Frame(frame) = decode_frame(&bytes) else {
                return Err(TestCaseError::fail("valid frame did not decode"));
            };
            prop_assert_eq!(frame.frame_len, bytes.len());
            prop_assert_eq!(frame.offset, offset);
            prop_assert_eq!(frame.timestamp, timestamp);
            prop_assert_eq!(frame.key.clone().map(|r| bytes[r].to_vec()), key);
            prop_assert_eq!(bytes[frame.value.clone()].to_vec(), value);
            prop_assert_eq!(headers_from(&bytes, &frame), produce.headers);
        }
    }
}
