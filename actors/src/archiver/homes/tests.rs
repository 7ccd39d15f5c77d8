//! A seeded simulation of host homes across members whose views change at different moments,
//! over a network that delays, reorders between pairs and fails calls: every (host, window) is
//! judged exactly once in the whole cluster, whatever the seed.

use super::*;
use wtm_core::agg::{WindowAgg, WindowKey};
use wtm_core::window::WindowSpec;

/// splitmix64: enough randomness for a simulation, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const SIZE_MS: i64 = 60_000;
const STEP: Duration = Duration::from_millis(100);
const HEARTBEAT_STEPS: u64 = 5;
const WINDOWS: i64 = 30;
const HOSTS: usize = 12;

fn spec() -> WindowSpec {
    WindowSpec {
        size_ms: SIZE_MS,
        out_of_orderness_ms: 0,
        allowed_lateness_ms: 0,
    }
}

enum Body {
    Shares(HomeShares),
    Ask {
        from: String,
        members: Vec<String>,
    },
    Answer {
        from: String,
        members: Vec<String>,
        answer: Option<Handover>,
    },
}

struct Msg {
    at: u64,
    seq: u64,
    to: String,
    body: Body,
}

struct Sim {
    rng: Rng,
    t0: Instant,
    nodes: BTreeMap<String, HostHomes>,
    /// When each node starts (d joins later); messages to a node not started are lost.
    starts: BTreeMap<String, u64>,
    /// Per node: (from step, members) — each adopts the joiner at its own moment, and some
    /// flap back for a while.
    views: BTreeMap<String, Vec<(u64, Vec<String>)>>,
    queue: Vec<Msg>,
    /// Per (from, to): the last delivery step, so each pair's messages stay in order (one
    /// session), while different pairs interleave freely.
    channels: BTreeMap<(String, String), u64>,
    seq: u64,
    judged: BTreeMap<(String, i64), usize>,
    judged_by: BTreeMap<String, usize>,
    timeouts: usize,
}

fn members(ids: &str) -> Vec<String> {
    ids.chars().map(String::from).collect()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let join = 60 + rng.below(80);
        let mut views = BTreeMap::new();
        for id in ["a", "b", "c"] {
            let adopt = join + 2 + rng.below(25);
            let mut v = vec![(0, members("abc")), (adopt, members("abcd"))];
            if rng.chance(30) {
                // For a moment this node agrees only on itself (a joiner's first heartbeat
                // lists none of the others), while it still hears them all.
                let alone = join + rng.below(40);
                v.push((alone, vec![id.to_owned()]));
                v.push((alone + 2 + rng.below(5), members("abcd")));
            }
            if rng.chance(30) {
                // d is briefly declared down here, then back.
                let flap = adopt + 10 + rng.below(40);
                v.push((flap, members("abc")));
                v.push((flap + 5 + rng.below(30), members("abcd")));
            }
            v.sort();
            views.insert(id.to_owned(), v);
        }
        // The joiner first agrees only on the others (it is not listed yet), then on all four.
        views.insert(
            "d".into(),
            vec![
                (join, members("abc")),
                (join + 2 + rng.below(25), members("abcd")),
            ],
        );
        let nodes = ["a", "b", "c", "d"]
            .into_iter()
            .map(|id| {
                let whole = WholeWindows::new(spec(), Duration::from_secs(30));
                (
                    id.to_owned(),
                    HostHomes::new(whole, Duration::from_secs(30), true),
                )
            })
            .collect();
        let starts = [("a", 0), ("b", 0), ("c", 0), ("d", join)]
            .into_iter()
            .map(|(id, s)| (id.to_owned(), s))
            .collect();
        Sim {
            rng,
            t0: Instant::now(),
            nodes,
            starts,
            views,
            queue: Vec::new(),
            channels: BTreeMap::new(),
            seq: 0,
            judged: BTreeMap::new(),
            judged_by: BTreeMap::new(),
            timeouts: 0,
        }
    }

    fn now(&self, step: u64) -> Instant {
        self.t0 + STEP * step as u32
    }

    fn running(&self, id: &str, step: u64) -> bool {
        self.starts[id] <= step
    }

    fn post(&mut self, step: u64, from: &str, to: &str, body: Body) {
        let key = (from.to_owned(), to.to_owned());
        let earliest = step + 1 + self.rng.below(12);
        let at = earliest.max(self.channels.get(&key).copied().unwrap_or(0));
        self.channels.insert(key, at);
        self.seq += 1;
        self.queue.push(Msg {
            at,
            seq: self.seq,
            to: to.to_owned(),
            body,
        });
    }

    fn perform(&mut self, step: u64, id: &str, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, shares } => {
                    let targets: Vec<String> = match to {
                        Some(t) => vec![t],
                        None => self.nodes.keys().filter(|n| *n != id).cloned().collect(),
                    };
                    for t in targets {
                        self.post(step, id, &t, Body::Shares(shares.clone()));
                    }
                }
                Action::Ask { to, members } => self.post(
                    step,
                    id,
                    &to,
                    Body::Ask {
                        from: id.to_owned(),
                        members,
                    },
                ),
                Action::Judge(w) => {
                    *self.judged.entry((w.host, w.start_ms)).or_default() += 1;
                    *self.judged_by.entry(id.to_owned()).or_default() += 1;
                }
                Action::Late(_) => {}
                Action::HoldTimedOut(_) => self.timeouts += 1,
            }
        }
    }

    fn judge(&mut self, step: u64, id: &str) {
        let now = self.now(step);
        let actions = self.nodes.get_mut(id).unwrap().judge(now, &[]).unwrap();
        self.perform(step, id, actions);
    }

    fn deliver(&mut self, step: u64) {
        let mut due: Vec<Msg> = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].at <= step {
                due.push(self.queue.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.at, m.seq));
        let now = self.now(step);
        for m in due {
            if !self.running(&m.to, step) {
                continue; // no session yet: lost
            }
            let node = self.nodes.get_mut(&m.to).unwrap();
            let actions = match m.body {
                Body::Shares(HomeShares::Windows { shares, hops }) => {
                    node.shares(shares, hops, now)
                }
                Body::Shares(HomeShares::Progress {
                    partition,
                    watermark_ms,
                }) => node.progress(partition, watermark_ms, false),
                Body::Ask { from, members } => {
                    // The call can fail (timeout, session lost): the asker hears None.
                    let answer = (!self.rng.chance(20)).then(|| node.handover(&from, &members));
                    let me = m.to.clone();
                    self.post(
                        step,
                        &me,
                        &from,
                        Body::Answer {
                            from: me.clone(),
                            members,
                            answer,
                        },
                    );
                    Vec::new()
                }
                Body::Answer {
                    from,
                    members,
                    answer,
                } => node.handed_over(&from, &members, answer, now),
            };
            let to = m.to.clone();
            self.perform(step, &to, actions);
            self.judge(step, &to);
        }
    }

    fn run(&mut self) -> BTreeMap<(String, i64), usize> {
        // Partition p is owned by `owners[p]`; partition 5 moves from c to d once d runs, and
        // d replays the last window c published.
        let mut owners = ["a", "a", "b", "b", "c", "c"].map(String::from);
        let moved_at = self.starts["d"] + 20;
        let mut expected: BTreeMap<(String, i64), usize> = BTreeMap::new();
        let mut last_published: BTreeMap<u32, Vec<ClosedWindow>> = BTreeMap::new();
        let emit: Vec<Vec<u64>> = (0..6)
            .map(|_| {
                (0..WINDOWS)
                    .map(|k| k as u64 * 10 + self.rng.below(8))
                    .collect()
            })
            .collect();
        let end = WINDOWS as u64 * 10 + 1200;
        for step in 0..end {
            if step == moved_at {
                owners[5] = "d".into();
                if let Some(replay) = last_published.get(&5).cloned() {
                    let now = self.now(step);
                    let actions = self.nodes.get_mut("d").unwrap().shares(replay, 0, now);
                    self.perform(step, "d", actions);
                }
            }
            for p in 0..6u32 {
                for k in 0..WINDOWS {
                    if emit[p as usize][k as usize] != step {
                        continue;
                    }
                    let owner = owners[p as usize].clone();
                    let start = k * SIZE_MS;
                    let shares: Vec<ClosedWindow> = (0..HOSTS)
                        .filter(|_| self.rng.chance(70))
                        .map(|h| ClosedWindow {
                            key: WindowKey {
                                host: format!("site-{h}"),
                                start_ms: start,
                                partition: p,
                            },
                            end_ms: start + SIZE_MS,
                            agg: WindowAgg {
                                requests: 1,
                                ..Default::default()
                            },
                        })
                        .collect();
                    for s in &shares {
                        *expected.entry((s.key.host.clone(), start)).or_default() = 1;
                    }
                    last_published.insert(p, shares.clone());
                    let now = self.now(step);
                    let node = self.nodes.get_mut(&owner).unwrap();
                    let mut actions = node.shares(shares, 0, now);
                    actions.extend(node.progress(p, start + SIZE_MS, true));
                    self.perform(step, &owner, actions);
                    self.judge(step, &owner);
                }
            }
            self.deliver(step);
            for id in ["a", "b", "c", "d"] {
                if !self.running(id, step)
                    || !(step + id.len() as u64).is_multiple_of(HEARTBEAT_STEPS)
                {
                    continue;
                }
                let members = self.views[id]
                    .iter()
                    .rev()
                    .find(|(from, _)| *from <= step)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                let live = ["a", "b", "c", "d"]
                    .into_iter()
                    .filter(|p| *p != id && self.running(p, step))
                    .map(String::from)
                    .collect();
                let view = ClusterView {
                    me: id.to_owned(),
                    members,
                    live,
                    partitions: (0..6).collect(),
                };
                let now = self.now(step);
                let actions = self.nodes.get_mut(id).unwrap().new_view(view, now);
                self.perform(step, id, actions);
                self.judge(step, id);
            }
        }
        expected
    }
}

#[test]
fn every_window_is_judged_exactly_once_while_homes_move() {
    let mut moved_any = 0;
    for seed in 0..300 {
        let mut sim = Sim::new(seed);
        let expected = sim.run();
        assert!(!expected.is_empty());
        for (key, n) in &sim.judged {
            assert_eq!(*n, 1, "seed {seed}: {key:?} judged {n} times");
        }
        let missed: Vec<_> = expected
            .keys()
            .filter(|k| !sim.judged.contains_key(*k))
            .collect();
        assert!(missed.is_empty(), "seed {seed}: never judged: {missed:?}");
        assert_eq!(sim.timeouts, 0, "seed {seed}: a handover timed out");
        moved_any += sim.judged_by.get("d").copied().unwrap_or(0);
    }
    assert!(
        moved_any > 0,
        "the joiner judged nothing: homes never moved"
    );
}
