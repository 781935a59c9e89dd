//! Window kinds, window assignment, and reading event times out of Arrow arrays.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};

/// The window a job aggregates over. Times are epoch milliseconds; windows are `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size_ms`, aligned to the epoch.
    Tumble {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms` (a whole divisor of the size).
    Hop {
        /// Distance between window starts.
        slide_ms: i64,
        /// Window length.
        size_ms: i64,
    },
    /// Per key, events closer than `gap_ms` share a window `[first, last + gap)`.
    Session {
        /// Inactivity that closes a session.
        gap_ms: i64,
    },
}

impl WindowSpec {
    /// Returns how many windows each event belongs to (sessions: 1).
    pub fn windows_per_event(&self) -> usize {
        match self {
            WindowSpec::Tumble { .. } | WindowSpec::Session { .. } => 1,
            WindowSpec::Hop { slide_ms, size_ms } => (size_ms / slide_ms) as usize,
        }
    }

    /// Returns the window length (sessions: the gap, their minimum length).
    pub fn size_ms(&self) -> i64 {
        match self {
            WindowSpec::Tumble { size_ms } | WindowSpec::Hop { size_ms, .. } => *size_ms,
            WindowSpec::Session { gap_ms } => *gap_ms,
        }
    }

    /// Returns the start of the `nth` window (0 = the latest) holding `timestamp`, for
    /// tumbling and hopping windows.
    pub(crate) fn window_start(&self, timestamp: i64, nth: usize) -> i64 {
        match self {
            WindowSpec::Tumble { size_ms } => floor_to(timestamp, *size_ms),
            WindowSpec::Hop { slide_ms, .. } => {
                floor_to(timestamp, *slide_ms) - nth as i64 * slide_ms
            }
            WindowSpec::Session { .. } => timestamp,
        }
    }
}

/// Rounds `value` down to a multiple of `step` (also for negative values).
pub(crate) fn floor_to(value: i64, step: i64) -> i64 {
    value.div_euclid(step) * step
}

/// Reads an event time column as epoch milliseconds; `None` where the value is null.
///
/// Timestamps of any unit are converted (sub-millisecond parts are floored); int64 values
/// are taken as epoch milliseconds.
pub(crate) fn event_times_ms(column: &ArrayRef) -> Vec<Option<i64>> {
    fn collect<T: arrow::datatypes::ArrowPrimitiveType<Native = i64>>(
        column: &ArrayRef,
        to_ms: impl Fn(i64) -> i64,
    ) -> Vec<Option<i64>> {
        let array = column.as_primitive::<T>();
        (0..array.len())
            .map(|idx| array.is_valid(idx).then(|| to_ms(array.value(idx))))
            .collect()
    }
    match column.data_type() {
        DataType::Int64 => collect::<Int64Type>(column, |ms| ms),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            collect::<TimestampMillisecondType>(column, |ms| ms)
        }
        DataType::Timestamp(TimeUnit::Second, _) => {
            collect::<TimestampSecondType>(column, |s| s.saturating_mul(1000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            collect::<TimestampMicrosecondType>(column, |us| us.div_euclid(1000))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            collect::<TimestampNanosecondType>(column, |ns| ns.div_euclid(1_000_000))
        }
        // The plan checked the type; anything else has no event times.
        _ => vec![None; column.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_floors_including_negative_times() {
        let tumble = WindowSpec::Tumble { size_ms: 60_000 };
        assert_eq!(tumble.window_start(59_999, 0), 0);
        assert_eq!(tumble.window_start(60_000, 0), 60_000);
        assert_eq!(tumble.window_start(-1, 0), -60_000);
        let hop = WindowSpec::Hop {
            slide_ms: 10_000,
            size_ms: 60_000,
        };
        assert_eq!(hop.windows_per_event(), 6);
        let starts: Vec<i64> = (0..6).map(|nth| hop.window_start(65_000, nth)).collect();
        assert_eq!(starts, vec![60_000, 50_000, 40_000, 30_000, 20_000, 10_000]);
        for start in starts {
            assert!(start <= 65_000 && 65_000 < start + 60_000);
        }
    }
}
