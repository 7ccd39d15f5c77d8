//! Where each host's whole windows are judged, as a plain state machine: the archiver's shell
//! feeds it shares, progress, views and handover answers, and performs the [`Action`]s it
//! returns (sends, asks, judgements).
//!
//! # Why a handover round
//!
//! Members learn of a membership change at slightly different moments, and messages between
//! them can be late or lost (ractor_cluster drops what is in flight on a reconnect, and a member
//! not yet in the process group is unreachable). A new home that judged a moved host as soon as
//! *it* saw the change could judge a window its previous home was judging at the same time. So
//! after every change of members, a node judges nothing until every other member has answered
//! its handover ask for the same members: an answer means that member has stopped judging the
//! asker's hosts and hands over, in the reply itself, which of their windows it judged and the
//! shares it kept for them. A member that never answers (wedged, or disagreeing about who is a
//! member) holds judging at most `max_hold`; that is counted and logged, as the one way left to
//! judge a window twice.

use super::whole::{WholeWindow, WholeWindows};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use wtm_core::agg::ClosedWindow;
use wtm_core::sketch::SketchError;
use wtm_messages::{ClusterView, Handover, HomeShares};

/// What the shell does for the state.
#[derive(Debug)]
pub enum Action {
    /// To one member's archiver (Some), or every other member's (None).
    Send {
        to: Option<String>,
        shares: HomeShares,
    },
    /// Ask member `to` for its handover under `members`.
    Ask { to: String, members: Vec<String> },
    /// To the detector.
    Judge(Box<WholeWindow>),
    /// Shares of windows judged already: not judged again (counted).
    Late(usize),
    /// Judging resumed without the handover of these members (`max_hold` passed).
    HoldTimedOut(Vec<String>),
}

/// Shares sent to a home in one message: well below the cluster's frame limit even for heavy
/// windows (~40 KB each).
pub const SHARES_PER_MESSAGE: usize = 256;
/// Judged logs in one handover answer (a host name and up to 64 starts each).
const LOGS_PER_ANSWER: usize = 2048;
/// Forwards between nodes whose views disagree before a share is kept where it is.
const MAX_HOPS: u8 = 2;
/// An ask not answered by then is asked again (a call times out well before).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// The handover round of the current members.
struct Round {
    members: Vec<String>,
    /// Whom to ask: every member and every peer this node hears (not itself). A peer it hears
    /// but that is no member here may have agreed on other members, and judge by them: until
    /// it agrees on these, this node judges nothing either.
    ask: BTreeSet<String>,
    since: Instant,
    /// Peers asked that answered settled, with nothing left to hand over.
    settled: BTreeSet<String>,
    /// Asks in flight, since when.
    asking: BTreeMap<String, Instant>,
    timed_out: bool,
}

pub struct HostHomes {
    whole: WholeWindows,
    /// The cluster as membership last saw it (None on a single node: every host is ours).
    view: Option<ClusterView>,
    /// A member of a cluster: until the first view comes, nothing is judged (nor is any host
    /// ours).
    clustered: bool,
    round: Option<Round>,
    max_hold: Duration,
    /// Shares of hosts homed elsewhere may wait here (kept after too many forwards, or from
    /// before the members changed): handed on once the round is done.
    strays: bool,
}

impl HostHomes {
    pub fn new(whole: WholeWindows, max_hold: Duration, clustered: bool) -> HostHomes {
        HostHomes {
            whole,
            view: None,
            clustered,
            round: None,
            max_hold,
            strays: false,
        }
    }

    pub fn view(&self) -> Option<&ClusterView> {
        self.view.as_ref()
    }

    /// Closed shares: those of hosts homed here wait to be judged whole; the others go to
    /// their home (`hops` forwards so far).
    pub fn shares(
        &mut self,
        shares: impl IntoIterator<Item = ClosedWindow>,
        hops: u8,
        now: Instant,
    ) -> Vec<Action> {
        let mut away: BTreeMap<String, Vec<ClosedWindow>> = BTreeMap::new();
        let mut late = 0;
        for w in shares {
            match &self.view {
                Some(v) if hops < MAX_HOPS && !v.is_home(&w.key.host) => {
                    away.entry(v.home_of(&w.key.host).to_owned())
                        .or_default()
                        .push(w);
                }
                view => {
                    if view.as_ref().is_some_and(|v| !v.is_home(&w.key.host)) {
                        // Kept after MAX_HOPS forwards: handed on at the next view.
                        self.strays = true;
                    }
                    if !self.whole.add(&w, now) {
                        late += 1;
                    }
                }
            }
        }
        let mut out = Vec::new();
        if late > 0 {
            out.push(Action::Late(late));
        }
        for (home, shares) in away {
            for chunk in shares.chunks(SHARES_PER_MESSAGE) {
                out.push(Action::Send {
                    to: Some(home.clone()),
                    shares: HomeShares::Windows {
                        shares: chunk.to_vec(),
                        hops: hops + 1,
                    },
                });
            }
        }
        out
    }

    /// Everything `partition` closes at `watermark_ms` is written here; `local` when this
    /// node's own owner says so (then every other member hears it too).
    pub fn progress(&mut self, partition: u32, watermark_ms: i64, local: bool) -> Vec<Action> {
        self.whole.progress(partition, watermark_ms);
        match (&self.view, local) {
            (Some(_), true) => vec![Action::Send {
                to: None,
                shares: HomeShares::Progress {
                    partition,
                    watermark_ms,
                },
            }],
            _ => Vec::new(),
        }
    }

    /// Membership's latest view (every heartbeat). New members start a handover round; the
    /// asks of the current round go (again) to whoever has not answered.
    pub fn new_view(&mut self, view: ClusterView, now: Instant) -> Vec<Action> {
        let changed = self.view.as_ref().is_none_or(|o| o.members != view.members);
        let mut out = Vec::new();
        if changed {
            self.round = Some(Round {
                members: view.members.clone(),
                ask: (view.members.iter().chain(&view.live))
                    .filter(|m| **m != view.me)
                    .cloned()
                    .collect(),
                since: now,
                settled: BTreeSet::new(),
                asking: BTreeMap::new(),
                timed_out: false,
            });
            // Shares this node kept while it was a home (or on a view that lagged) wait for
            // the new homes to ask; whatever no ask took goes on once the round is done.
            self.strays = true;
        }
        self.view = Some(view);
        if !changed && self.strays && self.round_done() {
            // Shares kept here for hosts homed elsewhere (forwarded by nodes whose views
            // lagged, or left after a flap) go on to their homes.
            self.strays = false;
            let moved = match &self.view {
                Some(v) => self.whole.take_hosts(|h| !v.is_home(h), None).0,
                None => Vec::new(),
            };
            out.extend(self.shares(moved, 0, now));
        }
        out.extend(self.asks(now));
        out
    }

    /// Every other member of the current round handed over.
    fn round_done(&self) -> bool {
        self.missing().is_empty()
    }

    /// Peers of the current round that have not handed over yet.
    fn missing(&self) -> Vec<String> {
        match &self.round {
            Some(round) => round.ask.difference(&round.settled).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// Asks of the current round not answered yet (and not in flight).
    fn asks(&mut self, now: Instant) -> Vec<Action> {
        let Some(round) = self.round.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in &round.ask {
            if round.settled.contains(m) {
                continue;
            }
            if round
                .asking
                .get(m)
                .is_some_and(|t| now.saturating_duration_since(*t) < ASK_AGAIN_AFTER)
            {
                continue;
            }
            round.asking.insert(m.clone(), now);
            out.push(Action::Ask {
                to: m.clone(),
                members: round.members.clone(),
            });
        }
        out
    }

    /// Member `from` asks what this node holds of its hosts under `members`. Answered only
    /// when this node agrees on them: from then on it judges none of them (they are not
    /// homed here), so what it hands over is final.
    pub fn handover(&mut self, from: &str, members: &[String]) -> Handover {
        let Some(view) = self.view.as_ref().filter(|v| v.members == members) else {
            return Handover::default();
        };
        let theirs = |h: &str| view.home_of(h) == from;
        let (judged, more_logs) = self.whole.take_judged(theirs, LOGS_PER_ANSWER);
        let (shares, more_shares) = self.whole.take_hosts(theirs, Some(SHARES_PER_MESSAGE));
        Handover {
            settled: true,
            judged,
            shares,
            more: more_logs || more_shares,
        }
    }

    /// Member `from` answered this node's ask for `members` (None: no answer in time).
    pub fn handed_over(
        &mut self,
        from: &str,
        members: &[String],
        answer: Option<Handover>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(r) = self.round.as_mut().filter(|r| r.members == members) {
            r.asking.remove(from);
            if answer.as_ref().is_some_and(|a| a.settled && !a.more) {
                r.settled.insert(from.to_owned());
            }
        }
        let Some(answer) = answer else {
            return out;
        };
        // Whatever came is applied even if the members changed since: the member took it out
        // of its own state. Judged logs first, so their windows' shares are dropped.
        let dropped: usize = answer
            .judged
            .iter()
            .map(|(host, starts)| self.whole.judged_elsewhere(host, starts))
            .sum();
        if dropped > 0 {
            out.push(Action::Late(dropped));
        }
        out.extend(self.shares(answer.shares, 0, now));
        if answer.more {
            out.extend(self.asks(now));
        }
        out
    }

    /// Whole windows to judge now: none while the round waits for a member's handover
    /// (at most `max_hold`); else those every partition closed (or that waited too long).
    /// `owned` are this node's partitions, waited for on a single node.
    pub fn judge(&mut self, now: Instant, owned: &[u32]) -> Result<Vec<Action>, SketchError> {
        let mut out = Vec::new();
        if self.clustered && self.view.is_none() {
            return Ok(out);
        }
        let missing = self.missing();
        if let Some(round) = self.round.as_mut().filter(|_| !missing.is_empty()) {
            if now.saturating_duration_since(round.since) < self.max_hold {
                return Ok(out);
            }
            if !round.timed_out {
                round.timed_out = true;
                out.push(Action::HoldTimedOut(missing));
            }
        }
        if self.whole.waiting() == 0 {
            return Ok(out);
        }
        // A home waits for every partition in the cluster, a single node for its own.
        let view = self.view.as_ref();
        let partitions = view.map_or(owned, |v| &v.partitions);
        let ready = self
            .whole
            .ready(partitions, now, |h| view.is_none_or(|v| v.is_home(h)))?;
        out.extend(ready.into_iter().map(|w| Action::Judge(Box::new(w))));
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
