//! The bookkeeping behind a Kafka node's partitions, with no broker in sight: which partitions
//! are assigned, which owner incarnation (generation) each belongs to, whether the partition
//! has been sought for it yet (only then may the owner read), and the records of a partition
//! whose queue could not be split off the consumer's (queued here, with pause and resume).
//! The consumer thread applies what it decides (seek, pause, resume); this is the decision.

use std::collections::{HashMap, VecDeque};
use wtm_core::records::RawRecords;

/// Records per queued chunk (an owner takes whole chunks).
pub const CHUNK: usize = 1024;
/// Queued records at which a partition is paused (its owner fell behind), and resumed again.
pub const PAUSE_AT: usize = 64 * 1024;
pub const RESUME_AT: usize = 8 * 1024;

/// One assigned partition's queue.
#[derive(Default, Debug)]
struct Slot {
    /// Bumped by every open: which owner incarnation the queue belongs to.
    generation: u64,
    /// The partition has been sought for `generation`: queued records are that owner's.
    ready: bool,
    chunks: VecDeque<RawRecords>,
    queued: usize,
    /// Paused because the owner fell behind (not the pause that waits for the seek).
    paused: bool,
    committed: Option<u64>,
}

/// What became of a fetched record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Not assigned here, or fetched before the owner's seek: it is read again from the
    /// sought offset.
    Dropped,
    Queued,
    /// Queued, and the queue just reached [`PAUSE_AT`]: pause the partition.
    QueuedPause,
}

/// What an owner's read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Not assigned, opened again by a newer owner, or not sought yet.
    NotReady,
    /// Records (maybe none) moved out; `resume` when the queue fell to [`RESUME_AT`] while
    /// paused: resume the partition.
    Took { records: usize, resume: bool },
}

/// Every partition assigned to this node.
#[derive(Default, Debug)]
pub struct Assignments {
    slots: HashMap<u32, Slot>,
    /// The last generation handed out, for any partition: an owner that outlived its revoke
    /// (it missed the revoke's deadline) must not match a later assignment's first owner,
    /// which a count per slot (starting again at 1) would give it.
    last_generation: u64,
}

impl Assignments {
    /// The group assigned `p` here: it waits, paused, for its owner's seek.
    pub fn assign(&mut self, p: u32) {
        self.slots.entry(p).or_default();
    }

    /// The group took `p` away: its queue goes.
    pub fn revoke(&mut self, p: u32) {
        self.slots.remove(&p);
    }

    pub fn is_assigned(&self, p: u32) -> bool {
        self.slots.contains_key(&p)
    }

    /// An owner opens `p`: a new generation, nothing queued, not readable until sought.
    /// None when `p` is not assigned here.
    pub fn open(&mut self, p: u32) -> Option<u64> {
        let slot = self.slots.get_mut(&p)?;
        self.last_generation += 1;
        slot.generation = self.last_generation;
        slot.ready = false;
        slot.chunks.clear();
        slot.queued = 0;
        Some(slot.generation)
    }

    /// Whether `generation` is still the newest owner of `p` (a seek for an older one is moot).
    pub fn is_current(&self, p: u32, generation: u64) -> bool {
        self.slots
            .get(&p)
            .is_some_and(|s| s.generation == generation)
    }

    /// The seek for `generation` succeeded: from now on fetched records are its owner's.
    /// False when the partition was revoked or opened again meanwhile.
    pub fn sought(&mut self, p: u32, generation: u64) -> bool {
        match self.slots.get_mut(&p) {
            Some(slot) if slot.generation == generation => {
                slot.ready = true;
                slot.chunks.clear();
                slot.queued = 0;
                slot.paused = false;
                true
            }
            _ => false,
        }
    }

    /// A record fetched from the broker.
    pub fn push(&mut self, p: u32, offset: u64, payload: &[u8]) -> Pushed {
        let Some(slot) = self.slots.get_mut(&p) else {
            return Pushed::Dropped;
        };
        if !slot.ready {
            return Pushed::Dropped;
        }
        if slot.chunks.back().is_none_or(|c| c.len() >= CHUNK) {
            slot.chunks.push_back(RawRecords::default());
        }
        if let Some(chunk) = slot.chunks.back_mut() {
            chunk.push(offset, payload);
        }
        slot.queued += 1;
        if slot.queued >= PAUSE_AT && !slot.paused {
            slot.paused = true;
            Pushed::QueuedPause
        } else {
            Pushed::Queued
        }
    }

    /// Move whole chunks of `p`'s queue into `out` until it holds `max` records, skipping
    /// offsets below `*next` (already read) and advancing `*next`.
    pub fn take(
        &mut self,
        p: u32,
        generation: u64,
        max: usize,
        next: &mut u64,
        out: &mut RawRecords,
    ) -> Taken {
        let Some(slot) = self.slots.get_mut(&p) else {
            return Taken::NotReady;
        };
        if slot.generation != generation || !slot.ready {
            return Taken::NotReady;
        }
        let before = out.len();
        while out.len() < max {
            let Some(chunk) = slot.chunks.pop_front() else {
                break;
            };
            slot.queued -= chunk.len();
            // The common case, a first chunk with nothing read again: it becomes the owner's
            // batch as it is, without copying its bytes.
            let fresh = chunk.records.first().is_some_and(|(o, _)| *o >= *next)
                && chunk.records.windows(2).all(|w| w[0].0 < w[1].0);
            if out.is_empty() && fresh && chunk.cut.is_empty() {
                *next = chunk.records.last().map_or(*next, |(o, _)| o + 1);
                *out = chunk;
                continue;
            }
            for (offset, bytes) in chunk.iter() {
                if offset >= *next {
                    out.push(offset, bytes);
                    *next = offset + 1;
                }
            }
        }
        let resume = slot.paused && slot.queued <= RESUME_AT;
        if resume {
            slot.paused = false;
        }
        Taken::Took {
            records: out.len() - before,
            resume,
        }
    }

    /// The broker confirmed `p`'s committed offset.
    pub fn set_committed(&mut self, p: u32, offset: u64) {
        if let Some(slot) = self.slots.get_mut(&p) {
            slot.committed = Some(offset);
        }
    }

    pub fn committed(&self, p: u32) -> Option<u64> {
        self.slots.get(&p).and_then(|s| s.committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(a: &mut Assignments, p: u32, generation: u64, next: &mut u64) -> (Taken, Vec<u64>) {
        let mut out = RawRecords::default();
        let t = a.take(p, generation, usize::MAX, next, &mut out);
        (t, out.iter().map(|(o, _)| o).collect())
    }

    #[test]
    fn records_before_the_seek_are_dropped_and_read_again_after_it() {
        let mut a = Assignments::default();
        assert_eq!(a.push(0, 1, b"x"), Pushed::Dropped, "not assigned");
        a.assign(0);
        let g = a.open(0).unwrap();
        assert_eq!(a.push(0, 5, b"early"), Pushed::Dropped, "not sought yet");
        let mut next = 0;
        assert_eq!(take_all(&mut a, 0, g, &mut next).0, Taken::NotReady);
        assert!(a.sought(0, g));
        for o in 5..8 {
            assert_eq!(a.push(0, o, b"r"), Pushed::Queued);
        }
        let (t, offsets) = take_all(&mut a, 0, g, &mut next);
        assert_eq!(
            t,
            Taken::Took {
                records: 3,
                resume: false
            }
        );
        assert_eq!(offsets, vec![5, 6, 7]);
        assert_eq!(next, 8);
        // A refetch of what was read already (the broker resends after a reconnect) is skipped.
        a.push(0, 7, b"r");
        a.push(0, 8, b"r");
        assert_eq!(take_all(&mut a, 0, g, &mut next).1, vec![8]);
    }

    #[test]
    fn a_refetch_inside_one_chunk_is_skipped_when_the_chunk_is_handed_over_whole() {
        let mut a = Assignments::default();
        a.assign(0);
        let g = a.open(0).unwrap();
        a.sought(0, g);
        for o in [0, 1, 2, 1, 2, 3] {
            a.push(0, o, format!("r{o}").as_bytes());
        }
        let mut next = 0;
        let mut out = RawRecords::default();
        a.take(0, g, usize::MAX, &mut next, &mut out);
        let got: Vec<_> = out.iter().map(|(o, b)| (o, b.to_vec())).collect();
        let want: Vec<_> = (0..4).map(|o| (o, format!("r{o}").into_bytes())).collect();
        assert_eq!(got, want);
        assert_eq!(next, 4);
        // Whole chunks, in order, after one already taken.
        for o in 4..(4 + 2 * CHUNK as u64) {
            a.push(0, o, b"r");
        }
        out.clear();
        a.take(0, g, usize::MAX, &mut next, &mut out);
        assert!(out.iter().map(|(o, _)| o).eq(4..4 + 2 * CHUNK as u64));
    }

    #[test]
    fn a_newer_owner_makes_the_older_ones_queue_and_seek_moot() {
        let mut a = Assignments::default();
        a.assign(3);
        let old = a.open(3).unwrap();
        let new = a.open(3).unwrap();
        assert!(new > old && !a.is_current(3, old) && a.is_current(3, new));
        assert!(
            !a.sought(3, old),
            "the old owner's seek does not make the queue ready"
        );
        assert_eq!(a.push(3, 0, b"r"), Pushed::Dropped);
        assert!(a.sought(3, new));
        a.push(3, 0, b"r");
        let mut next = 0;
        assert_eq!(take_all(&mut a, 3, old, &mut next).0, Taken::NotReady);
        assert_eq!(take_all(&mut a, 3, new, &mut next).1, vec![0]);
        assert_eq!(a.open(9), None, "not assigned here");
    }

    #[test]
    fn an_owner_that_outlived_its_revoke_does_not_read_the_next_assignment() {
        let mut a = Assignments::default();
        a.assign(4);
        let stale = a.open(4).unwrap();
        a.sought(4, stale);
        a.revoke(4);
        a.assign(4);
        let current = a.open(4).unwrap();
        assert_ne!(stale, current);
        assert!(a.sought(4, current));
        a.push(4, 0, b"r");
        let mut next = 0;
        assert_eq!(take_all(&mut a, 4, stale, &mut next).0, Taken::NotReady);
        assert_eq!(take_all(&mut a, 4, current, &mut next).1, vec![0]);
    }

    #[test]
    fn pauses_at_the_high_mark_and_resumes_at_the_low_one() {
        let mut a = Assignments::default();
        a.assign(1);
        let g = a.open(1).unwrap();
        a.sought(1, g);
        let pauses = (0..PAUSE_AT as u64 + 10)
            .filter(|&o| a.push(1, o, b"r") == Pushed::QueuedPause)
            .count();
        assert_eq!(pauses, 1, "paused once, at {PAUSE_AT}");
        let mut next = 0;
        let mut out = RawRecords::default();
        // Take chunks until the queue is at or below the low mark: only then resume.
        let mut resumed_with_left = None;
        while resumed_with_left.is_none() {
            out.clear();
            match a.take(1, g, CHUNK, &mut next, &mut out) {
                Taken::Took { resume: true, .. } => {
                    resumed_with_left = Some(PAUSE_AT + 10 - next as usize)
                }
                Taken::Took { records, .. } => assert!(records > 0),
                Taken::NotReady => unreachable!(),
            }
        }
        let left = resumed_with_left.unwrap();
        assert!(left <= RESUME_AT && left > RESUME_AT - CHUNK, "{left}");
    }

    #[test]
    fn revoke_forgets_the_queue_and_commits() {
        let mut a = Assignments::default();
        a.assign(2);
        a.set_committed(2, 40);
        assert_eq!(a.committed(2), Some(40));
        a.revoke(2);
        assert!(!a.is_assigned(2));
        assert_eq!(a.committed(2), None);
        a.set_committed(2, 50);
        assert_eq!(
            a.committed(2),
            None,
            "a late commit result does not resurrect it"
        );
    }
}
