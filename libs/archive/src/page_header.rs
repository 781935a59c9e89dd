//! Dictionary page headers, checked before the Parquet decoder trusts them.
//!
//! parquet 59's dictionary decoder makes its buffer `num_values` long (a `u32` of the page
//! header) before it checks that the page holds that many values, so a damaged header of a
//! few bytes asks for up to 34 GB (found by the `parquet_history` fuzz target:
//! `libs/fuzz/regressions/parquet_history/dictionary-page-of-1.4-billion-values.parquet`).
//! [`check_dictionary_pages`] reads the header of each column chunk's first page, where the
//! decoder finds the dictionary (Thrift compact protocol, a few dozen bytes, all chunks in
//! one ranged read), and refuses a dictionary page claiming more values than its bytes can
//! hold or than its column chunk has, and a first page whose header it cannot read.

use bytes::Bytes;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::basic::Type as PhysicalType;
use parquet::file::metadata::ParquetMetaData;

/// Bytes read at a dictionary page's offset: enough for its header (which holds no
/// statistics, so it is small).
const HEADER_READ_BYTES: u64 = 256;

/// How deep the Thrift structures nest before the header is taken as damaged.
const MAX_DEPTH: usize = 8;

/// A page header's fields that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageHeader {
    /// The page type (2: a dictionary page).
    pub(crate) page_type: i32,
    pub(crate) uncompressed_page_size: i32,
    /// For a dictionary page, how many values it claims.
    pub(crate) dictionary_values: Option<i32>,
}

/// The page type of a dictionary page.
const DICTIONARY_PAGE: i32 = 2;

/// Checks the dictionary page of every column chunk; returns what is wrong with the first
/// bad one.
pub(crate) async fn check_dictionary_pages<R: AsyncFileReader>(
    reader: &mut R,
    metadata: &ParquetMetaData,
    file_len: u64,
) -> Result<(), String> {
    let mut chunks = Vec::new();
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        for (column, chunk) in row_group.columns().iter().enumerate() {
            // Where the decoder starts reading the chunk's pages.
            let (start, _) = chunk.byte_range();
            if start >= file_len {
                return Err(format!(
                    "row group {group} column {column}: its pages start at {start}, past the file's end ({file_len})"
                ));
            }
            let end = (start + HEADER_READ_BYTES).min(file_len);
            chunks.push((group, column, chunk, start..end));
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    let ranges = chunks.iter().map(|(.., range)| range.clone()).collect();
    let headers = reader
        .get_byte_ranges(ranges)
        .await
        .map_err(|error| format!("read the dictionary page headers: {error}"))?;
    for ((group, column, chunk, _), bytes) in chunks.iter().zip(headers) {
        let at = || format!("row group {group} column {column}");
        let Some(header) = parse_page_header(&bytes) else {
            // A dictionary page's header is short: one that does not read is damage. A data
            // page's may be longer than was read (its statistics); the decoder reads it.
            if chunk.dictionary_page_offset().is_some() {
                return Err(format!(
                    "{}: its dictionary page has no readable header",
                    at()
                ));
            }
            continue;
        };
        let Some(values) = header.dictionary_values else {
            if header.page_type == DICTIONARY_PAGE {
                return Err(format!(
                    "{}: a dictionary page header without its count",
                    at()
                ));
            }
            continue;
        };
        let size = i64::from(header.uncompressed_page_size);
        let values = i64::from(values);
        let descriptor = chunk.column_descr();
        // The fewest bytes a value takes in a PLAIN dictionary page.
        let holdable = match descriptor.physical_type() {
            PhysicalType::BOOLEAN => size.saturating_mul(8),
            PhysicalType::INT32 | PhysicalType::FLOAT => size / 4,
            PhysicalType::INT64 | PhysicalType::DOUBLE => size / 8,
            PhysicalType::INT96 => size / 12,
            // A length prefix of four bytes each.
            PhysicalType::BYTE_ARRAY => size / 4,
            PhysicalType::FIXED_LEN_BYTE_ARRAY => size / i64::from(descriptor.type_length().max(1)),
        };
        if size < 0 || values < 0 || values > holdable || values > chunk.num_values() {
            return Err(format!(
                "{}: its dictionary page claims {values} values in {size} bytes, for a column \
                 chunk of {} values",
                at(),
                chunk.num_values()
            ));
        }
    }
    Ok(())
}

/// The page header at the start of `bytes`, or `None` if it cannot be read there.
pub(crate) fn parse_page_header(bytes: &Bytes) -> Option<PageHeader> {
    let mut cursor = Cursor { bytes, at: 0 };
    let mut page_type = None;
    let mut uncompressed_page_size = None;
    let mut num_values = None;
    cursor.read_struct(0, &mut |cursor, field, kind| match (field, kind) {
        (1, TYPE_I32) => {
            page_type = Some(cursor.read_i32()?);
            Some(())
        }
        (2, TYPE_I32) => {
            uncompressed_page_size = Some(cursor.read_i32()?);
            Some(())
        }
        (7, TYPE_STRUCT) => cursor.read_struct(1, &mut |cursor, field, kind| match (field, kind) {
            (1, TYPE_I32) => {
                num_values = Some(cursor.read_i32()?);
                Some(())
            }
            _ => cursor.skip(kind, 2),
        }),
        _ => cursor.skip(kind, 1),
    })?;
    Some(PageHeader {
        page_type: page_type?,
        uncompressed_page_size: uncompressed_page_size?,
        dictionary_values: num_values,
    })
}

const TYPE_TRUE: u8 = 1;
const TYPE_FALSE: u8 = 2;
const TYPE_BYTE: u8 = 3;
const TYPE_I16: u8 = 4;
const TYPE_I32: u8 = 5;
const TYPE_I64: u8 = 6;
const TYPE_DOUBLE: u8 = 7;
const TYPE_BINARY: u8 = 8;
const TYPE_LIST: u8 = 9;
const TYPE_SET: u8 = 10;
const TYPE_MAP: u8 = 11;
const TYPE_STRUCT: u8 = 12;

/// A reader of the Thrift compact protocol, enough to find two fields and skip the rest.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let raw = self.varint()?;
        Some((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    /// An i32 as parquet's own reader takes it: the varint's low 32 bits, zigzag-decoded.
    fn read_i32(&mut self) -> Option<i32> {
        let raw = self.varint()? as u32;
        Some((raw >> 1) as i32 ^ -((raw & 1) as i32))
    }

    /// Reads a struct's fields, handing each `(field id, type)` to `field`, until its stop.
    fn read_struct(
        &mut self,
        depth: usize,
        field: &mut dyn FnMut(&mut Self, i16, u8) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut last_id: i16 = 0;
        loop {
            let header = self.byte()?;
            if header == 0 {
                return Some(());
            }
            let kind = header & 0x0f;
            let delta = header >> 4;
            let id = if delta == 0 {
                i16::try_from(self.zigzag()?).ok()?
            } else {
                last_id.checked_add(i16::from(delta))?
            };
            last_id = id;
            field(self, id, kind)?;
        }
    }

    /// Skips a value of type `kind`.
    fn skip(&mut self, kind: u8, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match kind {
            // A struct field's boolean is in its type.
            TYPE_TRUE | TYPE_FALSE => Some(()),
            TYPE_BYTE => self.byte().map(drop),
            TYPE_I16 | TYPE_I32 | TYPE_I64 => self.varint().map(drop),
            TYPE_DOUBLE => self.advance(8),
            TYPE_BINARY => {
                let len = usize::try_from(self.varint()?).ok()?;
                self.advance(len)
            }
            TYPE_LIST | TYPE_SET => {
                let header = self.byte()?;
                let size = match header >> 4 {
                    15 => usize::try_from(self.varint()?).ok()?,
                    size => usize::from(size),
                };
                self.check_elements(size)?;
                for _ in 0..size {
                    self.skip_element(header & 0x0f, depth + 1)?;
                }
                Some(())
            }
            TYPE_MAP => {
                let size = usize::try_from(self.varint()?).ok()?;
                if size == 0 {
                    return Some(());
                }
                let types = self.byte()?;
                self.check_elements(size)?;
                for _ in 0..size {
                    self.skip_element(types >> 4, depth + 1)?;
                    self.skip_element(types & 0x0f, depth + 1)?;
                }
                Some(())
            }
            TYPE_STRUCT => self.read_struct(depth + 1, &mut |cursor, _, kind| {
                cursor.skip(kind, depth + 1)
            }),
            _ => None,
        }
    }

    /// Skips an element of a list, set or map: there a boolean takes a byte of its own.
    fn skip_element(&mut self, kind: u8, depth: usize) -> Option<()> {
        if kind == TYPE_TRUE || kind == TYPE_FALSE {
            return self.byte().map(drop);
        }
        self.skip(kind, depth)
    }

    /// Refuses a collection that claims more elements than bytes are left: every element
    /// takes at least one, and a claimed size of billions must not be walked.
    fn check_elements(&self, size: usize) -> Option<()> {
        (size <= self.bytes.len().saturating_sub(self.at)).then_some(())
    }

    fn advance(&mut self, len: usize) -> Option<()> {
        let end = self.at.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        self.at = end;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page header whose first field is a map claiming 2^62 boolean pairs (what the fuzzer
    /// found: the skip walked them for minutes, as booleans took no bytes) is refused at once.
    #[test]
    fn a_collection_claiming_more_elements_than_bytes_is_refused_at_once() {
        let mut bytes = vec![0x1b]; // field 1, a map
        bytes.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]); // 2^62
        bytes.push(0x11); // boolean keys and values
        bytes.push(0x00);
        let started = std::time::Instant::now();
        assert!(parse_page_header(&Bytes::from(bytes)).is_none());
        let mut list = vec![0x19, 0xf1]; // field 1, a list of booleans with a varint size
        list.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // 2^32 - 1
        list.push(0x00);
        assert!(parse_page_header(&Bytes::from(list)).is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
