//! Kafka's default partitioner: murmur2 of the key bytes, made positive, modulo partitions.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`), as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Returns the partition Kafka's default partitioner gives `key` among `partitions`.
///
/// # Panics
///
/// Panics if `partitions` is 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    // Kafka's `Utils.toPositive`: clear the sign bit rather than take the absolute value.
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// Places records: by key with murmur2, round robin when there is no key.
#[derive(Debug, Default)]
pub struct Partitioner {
    next_unkeyed: AtomicU32,
}

impl Partitioner {
    /// Returns the partition of a record with `key` among `partitions`.
    pub fn partition(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.next_unkeyed.fetch_add(1, Ordering::Relaxed) % partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn keyed_records_use_positive_murmur2_and_unkeyed_round_robin() {
        // toPositive(-973932308) = 1173551340; 1173551340 % 7 = 2.
        assert_eq!(partition_for_key(b"21", 7), 1_173_551_340 % 7);
        let partitioner = Partitioner::default();
        let spread: Vec<u32> = (0..6).map(|_| partitioner.partition(None, 3)).collect();
        assert_eq!(spread, vec![0, 1, 2, 0, 1, 2]);
    }
}
