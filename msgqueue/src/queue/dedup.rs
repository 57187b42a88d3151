//! Producer dedup marks: the highest seq stored per producer id, bounded, least recently seen forgotten first.
//! Kept by the logs (the segment log writes them into its segment-head snapshots), which answer
//! [`Log::is_duplicate`](super::storage::Log::is_duplicate) from them.

use std::collections::HashMap;

use super::{Producer, record};

/// A producer's dedup mark and when it was last seen (for LRU eviction).
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    seen: u64,
}

/// Bounded table of producer high-water marks.
#[derive(Debug)]
pub(crate) struct Producers {
    marks: HashMap<u64, Mark>,
    tick: u64,
    cap: usize,
}

impl Producers {
    pub(crate) fn new(cap: usize, recovered: Vec<(u64, u64)>) -> Self {
        let mut producers = Self {
            marks: HashMap::with_capacity(recovered.len().min(cap)),
            tick: 0,
            cap: cap.clamp(1, record::MAX_SNAPSHOT_PRODUCERS),
        };
        for (id, seq) in recovered {
            producers.record(Producer { id, seq });
        }
        producers
    }

    pub(crate) fn is_duplicate(&mut self, producer: Producer) -> bool {
        self.tick += 1;
        match self.marks.get_mut(&producer.id) {
            Some(mark) => {
                mark.seen = self.tick;
                producer.seq <= mark.seq
            }
            None => false,
        }
    }

    pub(crate) fn record(&mut self, producer: Producer) {
        self.tick += 1;
        let mark = self.marks.entry(producer.id).or_insert(Mark {
            seq: producer.seq,
            seen: self.tick,
        });
        mark.seq = mark.seq.max(producer.seq);
        mark.seen = self.tick;
        if self.marks.len() > self.cap
            && let Some((&oldest, _)) = self.marks.iter().min_by_key(|(_, m)| m.seen)
        {
            self.marks.remove(&oldest);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<(u64, u64)> {
        self.marks.iter().map(|(&id, m)| (id, m.seq)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_producer_is_forgotten_beyond_the_cap() {
        let mut producers = Producers::new(2, Vec::new());
        producers.record(Producer { id: 1, seq: 1 });
        producers.record(Producer { id: 2, seq: 1 });
        assert!(producers.is_duplicate(Producer { id: 1, seq: 1 }));
        producers.record(Producer { id: 3, seq: 1 });
        assert!(!producers.is_duplicate(Producer { id: 2, seq: 1 }));
        assert!(producers.is_duplicate(Producer { id: 1, seq: 1 }));
        assert!(producers.is_duplicate(Producer { id: 3, seq: 1 }));
    }
}
