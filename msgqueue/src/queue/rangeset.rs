//! A set of u64 offsets stored as disjoint half-open ranges.
//!
//! Acked offsets above the ack floor arrive mostly in contiguous runs, so recovery keeps them as ranges: memory
//! follows the number of gaps, not the number of acked messages.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges keyed by start.
#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Whether no offset is in the set.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds `[start, end)`, merging with overlapping or adjacent ranges.
    pub(crate) fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        while let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    /// Whether `offset` is in the set.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// Forgets everything below `floor`.
    pub(crate) fn remove_below(&mut self, floor: u64) {
        let below: Vec<u64> = self.ranges.range(..floor).map(|(&s, _)| s).collect();
        for start in below {
            if let Some(end) = self.ranges.remove(&start)
                && end > floor
            {
                self.ranges.insert(floor, end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let mut set = RangeSet::default();
        set.insert(5, 7);
        set.insert(1, 3);
        set.insert(3, 5);
        set.insert(10, 12);
        set.insert(6, 11);
        assert_eq!(set.ranges.len(), 1);
        assert!(set.contains(1) && set.contains(11) && !set.contains(12) && !set.contains(0));
    }

    #[test]
    fn remove_below_keeps_the_part_above_the_floor() {
        let mut set = RangeSet::default();
        set.insert(1, 4);
        set.insert(6, 10);
        set.remove_below(8);
        assert!(!set.contains(1) && !set.contains(7));
        assert!(set.contains(8) && set.contains(9));
    }
}
