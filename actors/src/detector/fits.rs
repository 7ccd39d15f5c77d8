//! Which model fits run now and which wait. A fit is CPU-bound (a few milliseconds); at tens of
//! thousands of sites every site's refit comes due each `refit_every` windows, and handing them
//! all to the blocking pool at once would queue thousands of jobs there, each holding a copy of
//! its site's series. So at most `slots` fits run; a site due meanwhile waits (once, however
//! often it comes due), and its job is built when its turn comes, from its newest windows.
//! Until then it is judged with its previous forecast, or the baseline alone once that ran out.

use std::collections::{HashSet, VecDeque};

pub struct FitQueue {
    slots: usize,
    running: usize,
    waiting: VecDeque<String>,
    queued: HashSet<String>,
}

impl FitQueue {
    pub fn new(slots: usize) -> FitQueue {
        FitQueue {
            slots: slots.max(1),
            running: 0,
            waiting: VecDeque::new(),
            queued: HashSet::new(),
        }
    }

    /// A fit of `host` is due: true when it may start now (it then runs until [`finished`]).
    ///
    /// [`finished`]: FitQueue::finished
    pub fn due(&mut self, host: &str) -> bool {
        if self.running < self.slots {
            self.running += 1;
            return true;
        }
        if self.queued.insert(host.to_owned()) {
            self.waiting.push_back(host.to_owned());
        }
        false
    }

    /// A fit finished (or one given a slot could not start: its host is gone): the next host
    /// whose fit starts now, if one waits.
    pub fn finished(&mut self) -> Option<String> {
        self.running = self.running.saturating_sub(1);
        let next = self.waiting.pop_front()?;
        self.queued.remove(&next);
        self.running += 1;
        Some(next)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_slots_run_and_a_host_waits_once() {
        let mut q = FitQueue::new(2);
        assert!(q.due("a"));
        assert!(q.due("b"));
        assert!(!q.due("c"));
        assert!(!q.due("d"));
        assert!(!q.due("c"), "c waits already");
        assert_eq!(q.waiting(), 2);
        assert_eq!(q.finished().as_deref(), Some("c"));
        assert!(!q.due("c"), "running again: it waits for its next turn");
        assert_eq!(q.finished().as_deref(), Some("d"));
        assert_eq!(q.finished().as_deref(), Some("c"));
        assert_eq!(q.finished(), None);
        assert_eq!(q.finished(), None);
        assert!(q.due("e") && q.due("f") && !q.due("g"));
    }
}
