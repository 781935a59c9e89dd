//! Window kinds, window assignment, and reading event times out of Arrow arrays.

use std::ops::RangeInclusive;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};

/// The event times (epoch milliseconds) the engine accepts: 0000-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999Z, the years RFC 3339 can write. An event outside is reported as
/// an error of that event, never counted. Inside it, with windows of at most
/// [`MAX_WINDOW_INTERVAL_MS`], no window arithmetic can overflow an `i64`.
pub const EVENT_TIME_RANGE_MS: RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

/// The longest window size, slide or session gap any job may ask for (about 1,000 years);
/// config sets a smaller bound (`limits.max-window-interval`).
pub const MAX_WINDOW_INTERVAL_MS: i64 = 1_000 * 366 * 86_400_000;

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
            WindowSpec::Hop { slide_ms, size_ms } => {
                usize::try_from(size_ms / slide_ms).unwrap_or(usize::MAX)
            }
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
    /// tumbling and hopping windows. Saturates at the ends of `i64` (the operator only
    /// passes times in [`EVENT_TIME_RANGE_MS`], where nothing saturates). The definition
    /// that [`WindowStarts`] computes with fewer divisions.
    #[cfg(test)]
    pub(crate) fn window_start(&self, timestamp: i64, nth: usize) -> i64 {
        match self {
            WindowSpec::Session { .. } => timestamp,
            _ => self.nth_start(floor_to(timestamp, self.slide_ms()), nth),
        }
    }

    /// The distance between window starts (sessions: the gap).
    fn slide_ms(&self) -> i64 {
        match self {
            WindowSpec::Tumble { size_ms } => *size_ms,
            WindowSpec::Hop { slide_ms, .. } => *slide_ms,
            WindowSpec::Session { gap_ms } => *gap_ms,
        }
    }

    /// The start of the `nth` window back from the one starting at `latest`.
    fn nth_start(&self, latest: i64, nth: usize) -> i64 {
        let back = i64::try_from(nth)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.slide_ms());
        latest.saturating_sub(back)
    }
}

/// [`WindowSpec::window_start`] over a run of event times, for tumbling and hopping windows:
/// consecutive events mostly fall in the same slide, so the last one is remembered rather
/// than divided out again.
pub(crate) struct WindowStarts {
    spec: WindowSpec,
    slide_ms: i64,
    /// The start of the slide `[floor, floor + slide_ms)` of the last time asked for.
    floor: Option<i64>,
}

impl WindowStarts {
    pub(crate) fn new(spec: WindowSpec) -> WindowStarts {
        WindowStarts {
            spec,
            slide_ms: spec.slide_ms(),
            floor: None,
        }
    }

    /// The start of the latest window holding `timestamp`.
    pub(crate) fn latest(&mut self, timestamp: i64) -> i64 {
        match self.floor {
            Some(floor)
                if timestamp
                    .checked_sub(floor)
                    .is_some_and(|into| (0..self.slide_ms).contains(&into)) =>
            {
                floor
            }
            _ => {
                let floor = floor_to(timestamp, self.slide_ms);
                self.floor = Some(floor);
                floor
            }
        }
    }

    /// The start of the `nth` window holding a time whose latest window starts at `latest`.
    pub(crate) fn nth(&self, latest: i64, nth: usize) -> i64 {
        self.spec.nth_start(latest, nth)
    }
}

/// Rounds `value` down to a multiple of `step` (also for negative values), saturating at
/// `i64::MIN` where the multiple is not representable. `step` is positive.
pub(crate) fn floor_to(value: i64, step: i64) -> i64 {
    debug_assert!(step > 0, "window steps are positive");
    value.div_euclid(step).saturating_mul(step)
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
    fn assignment_saturates_at_the_ends_of_i64() {
        let tumble = WindowSpec::Tumble { size_ms: 60_000 };
        assert_eq!(tumble.window_start(i64::MIN, 0), i64::MIN);
        assert_eq!(
            tumble.window_start(i64::MAX, 0),
            i64::MAX.div_euclid(60_000) * 60_000
        );
        let hop = WindowSpec::Hop {
            slide_ms: 1,
            size_ms: 1_000,
        };
        assert_eq!(hop.window_start(i64::MIN + 3, 999), i64::MIN);
        assert_eq!(hop.window_start(i64::MAX, 0), i64::MAX);
        assert_eq!(floor_to(i64::MIN, 7), i64::MIN);
        // The accepted range's ends floor without saturating.
        let (first, last) = (*EVENT_TIME_RANGE_MS.start(), *EVENT_TIME_RANGE_MS.end());
        let widest = WindowSpec::Hop {
            slide_ms: 1,
            size_ms: MAX_WINDOW_INTERVAL_MS,
        };
        assert_eq!(widest.window_start(first, 0), first);
        assert!(
            widest.window_start(first, usize::try_from(MAX_WINDOW_INTERVAL_MS).unwrap() - 1)
                > i64::MIN
        );
        assert!(last.saturating_add(MAX_WINDOW_INTERVAL_MS) < i64::MAX);
    }

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

    #[test]
    fn remembered_starts_equal_computed_ones_in_any_order() {
        let hop = WindowSpec::Hop {
            slide_ms: 10_000,
            size_ms: 30_000,
        };
        for spec in [WindowSpec::Tumble { size_ms: 60_000 }, hop] {
            let mut starts = WindowStarts::new(spec);
            let times = [
                5,
                9_999,
                10_000,
                -1,
                -10_000,
                -10_001,
                59_999,
                60_000,
                3,
                3,
                i64::MIN,
                0,
                i64::MAX,
                119_999,
            ];
            for time in times {
                let latest = starts.latest(time);
                for nth in 0..spec.windows_per_event() {
                    assert_eq!(
                        starts.nth(latest, nth),
                        spec.window_start(time, nth),
                        "{time}"
                    );
                }
            }
        }
    }
}
