//! Membership as plain data: who has been heard from and when, who is alive, whom to dial next.
//! The actor feeds it heartbeats, dial results and the clock; tested without a network.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wtm_messages::{ClusterView, MemberStatus, PeerBeat};

/// This node, as it presents itself.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: String,
    pub cluster_addr: String,
    pub api_addr: String,
}

#[derive(Debug, Clone)]
struct Peer {
    beat: PeerBeat,
    heard: Instant,
    heard_ms: i64,
    alive: bool,
}

/// Redial state of one address.
#[derive(Debug, Clone, Default)]
struct Dial {
    failures: u32,
    next_at: Option<Instant>,
    in_flight: bool,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A member not alive before (new, or back from silence).
    Joined,
    Known,
    /// A peer presenting this node's own id from another address: refused.
    Impostor,
}

#[derive(Debug)]
pub struct Membership {
    me: Me,
    failure_after: Duration,
    peers: BTreeMap<String, Peer>,
    /// Every address worth dialling: seeds and addresses heard of.
    dial: BTreeMap<String, Dial>,
}

/// First wait after a failed dial; doubles to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Membership {
    pub fn new(me: Me, seeds: &[String], failure_after: Duration) -> Membership {
        let mut m = Membership {
            me,
            failure_after,
            peers: BTreeMap::new(),
            dial: BTreeMap::new(),
        };
        for s in seeds {
            m.learn(s);
        }
        m
    }

    /// Addresses found outside the cluster (the Kafka group): dialled like seeds.
    pub fn discovered(&mut self, addrs: &[String]) {
        for a in addrs {
            self.learn(a);
        }
    }

    fn learn(&mut self, addr: &str) {
        if addr != self.me.cluster_addr {
            self.dial.entry(addr.to_owned()).or_default();
        }
    }

    /// A peer's heartbeat arrived at `now` (`now_ms` on the wall clock).
    pub fn heard(&mut self, beat: PeerBeat, now: Instant, now_ms: i64) -> Heard {
        if beat.id == self.me.id {
            return Heard::Impostor;
        }
        self.learn(&beat.cluster_addr.clone());
        for p in beat.peers.clone() {
            self.learn(&p);
        }
        if let Some(d) = self.dial.get_mut(&beat.cluster_addr) {
            // Heard from: whatever dial problems it had are over.
            *d = Dial::default();
        }
        let was_alive = self.peers.get(&beat.id).is_some_and(|p| p.alive);
        self.peers.insert(
            beat.id.clone(),
            Peer {
                beat,
                heard: now,
                heard_ms: now_ms,
                alive: true,
            },
        );
        if was_alive {
            Heard::Known
        } else {
            Heard::Joined
        }
    }

    /// Peers silent for longer than the bound become down; returns their ids (each once).
    pub fn judge(&mut self, now: Instant) -> Vec<String> {
        let mut down = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if p.alive && now.saturating_duration_since(p.heard) > self.failure_after {
                p.alive = false;
                down.push(id.clone());
            }
        }
        down
    }

    /// Addresses to dial now: known, not this node, not advertised by a live member, not being
    /// dialled, and past their backoff. Marks them in flight.
    pub fn to_dial(&mut self, now: Instant) -> Vec<String> {
        let live: Vec<&str> = self
            .peers
            .values()
            .filter(|p| p.alive)
            .map(|p| p.beat.cluster_addr.as_str())
            .collect();
        let mut out = Vec::new();
        for (addr, d) in self.dial.iter_mut() {
            if d.in_flight || live.contains(&addr.as_str()) {
                continue;
            }
            if d.next_at.is_none_or(|t| now >= t) {
                d.in_flight = true;
                out.push(addr.clone());
            }
        }
        out
    }

    /// A dial finished. A connection that opened still has to be heard from: if no heartbeat
    /// comes within the failure bound (a wrong cookie, a frozen peer), the next dial backs off
    /// as after a failure.
    pub fn dialed(&mut self, addr: &str, connected: bool, now: Instant) {
        let after = self.failure_after;
        let Some(d) = self.dial.get_mut(addr) else {
            return;
        };
        d.in_flight = false;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << d.failures.min(5))
            .min(MAX_BACKOFF);
        d.failures += 1;
        d.next_at = Some(
            now + if connected {
                backoff.max(after)
            } else {
                backoff
            },
        );
    }

    /// Members alive, this node included.
    pub fn alive_count(&self) -> usize {
        1 + self.peers.values().filter(|p| p.alive).count()
    }

    pub fn down_count(&self) -> usize {
        self.peers.values().filter(|p| !p.alive).count()
    }

    /// Ids of the live peers (this node not included).
    pub fn live_ids(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| p.alive)
            .map(|p| p.beat.id.clone())
            .collect()
    }

    /// Cluster addresses of the live peers (for this node's heartbeats).
    pub fn live_addrs(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| p.alive)
            .map(|p| p.beat.cluster_addr.clone())
            .collect()
    }

    /// Every member, this node first, then peers by id.
    pub fn members(
        &self,
        my_partitions: Vec<u32>,
        my_home_hosts: u64,
        my_restarts: u64,
    ) -> Vec<MemberStatus> {
        let mut out = vec![MemberStatus {
            id: self.me.id.clone(),
            cluster_addr: self.me.cluster_addr.clone(),
            api_addr: self.me.api_addr.clone(),
            alive: true,
            this_node: true,
            last_heartbeat_ms: None,
            partitions: my_partitions,
            home_hosts: my_home_hosts,
            actor_restarts: my_restarts,
        }];
        out.extend(self.peers.values().map(|p| MemberStatus {
            id: p.beat.id.clone(),
            cluster_addr: p.beat.cluster_addr.clone(),
            api_addr: p.beat.api_addr.clone(),
            alive: p.alive,
            this_node: false,
            last_heartbeat_ms: Some(p.heard_ms),
            partitions: if p.alive {
                p.beat.partitions.clone()
            } else {
                Vec::new()
            },
            home_hosts: if p.alive { p.beat.home_hosts } else { 0 },
            actor_restarts: p.beat.actor_restarts,
        }));
        out
    }

    /// Down peers whose last known partitions nobody alive owns now (`mine` are this node's):
    /// an answer without them lacks those partitions, so it is partial until the consumer
    /// group has moved them (or the peer is back).
    pub fn uncovered_down(&self, mine: &[u32]) -> Vec<String> {
        let covered: std::collections::BTreeSet<u32> = self
            .peers
            .values()
            .filter(|p| p.alive)
            .flat_map(|p| p.beat.partitions.iter().copied())
            .chain(mine.iter().copied())
            .collect();
        self.peers
            .values()
            .filter(|p| !p.alive && p.beat.partitions.iter().any(|q| !covered.contains(q)))
            .map(|p| p.beat.id.clone())
            .collect()
    }

    pub fn me(&self) -> &Me {
        &self.me
    }

    /// Whose host is whose: the largest group, this node and the peers it hears, in which every
    /// two hear each other (each lists the other in its last heartbeat; this node hears every
    /// live peer). While one does not hear another, the one with the most such gaps leaves the
    /// group (the larger id of equals), so a joiner whose first heartbeats list few peers stays
    /// out instead of pushing the others out, and becomes a home on every node within about one
    /// heartbeat of each other once all hear it. Also every partition any member has owned (a
    /// down member's too: its partitions come back with their next owner, and a home waits for
    /// them).
    pub fn view(&self, mine: &[u32]) -> ClusterView {
        let my_peers = self.live_addrs();
        // (id, address, the addresses it hears)
        let mut group: Vec<(&str, &str, &[String])> = self
            .peers
            .values()
            .filter(|p| p.alive)
            .map(|p| {
                let b = &p.beat;
                (b.id.as_str(), b.cluster_addr.as_str(), b.peers.as_slice())
            })
            .chain([(
                self.me.id.as_str(),
                self.me.cluster_addr.as_str(),
                my_peers.as_slice(),
            )])
            .collect();
        let hears =
            |x: &(&str, &str, &[String]), y: &(&str, &str, &[String])| x.2.iter().any(|a| a == y.1);
        loop {
            let worst = group
                .iter()
                .map(|x| {
                    let gaps = group
                        .iter()
                        .filter(|y| y.0 != x.0 && !(hears(x, y) && hears(y, x)))
                        .count();
                    (gaps, x.0)
                })
                .max();
            match worst {
                Some((gaps, id)) if gaps > 0 => group.retain(|x| x.0 != id),
                _ => break,
            }
        }
        let mut members: Vec<String> = group.iter().map(|x| x.0.to_owned()).collect();
        members.sort();
        let partitions: std::collections::BTreeSet<u32> = self
            .peers
            .values()
            .flat_map(|p| p.beat.partitions.iter().copied())
            .chain(mine.iter().copied())
            .collect();
        ClusterView {
            me: self.me.id.clone(),
            members,
            live: self.live_ids(),
            partitions: partitions.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            id: "a".into(),
            cluster_addr: "10.0.0.1:7400".into(),
            api_addr: "10.0.0.1:8080".into(),
        }
    }

    fn beat(id: &str, addr: &str, peers: &[&str]) -> PeerBeat {
        PeerBeat {
            id: id.into(),
            cluster_addr: addr.into(),
            api_addr: "x:1".into(),
            sent_ms: 0,
            partitions: vec![1, 2],
            peers: peers.iter().map(|s| s.to_string()).collect(),
            home_hosts: 0,
            actor_restarts: 0,
        }
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[test]
    fn silence_past_the_bound_is_down_and_a_heartbeat_brings_it_back() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut m = Membership::new(me(), &[], BOUND);
        assert_eq!(
            m.heard(beat("b", "10.0.0.2:7400", &[]), s(0), 0),
            Heard::Joined
        );
        assert_eq!(
            m.heard(beat("b", "10.0.0.2:7400", &[]), s(1), 1),
            Heard::Known
        );
        assert!(m.judge(s(6)).is_empty(), "exactly the bound: still alive");
        assert_eq!(m.judge(s(7)), vec!["b".to_string()]);
        assert!(m.judge(s(8)).is_empty(), "reported once");
        let members = m.members(vec![0], 0, 0);
        assert_eq!(members.len(), 2);
        assert!(members[0].this_node && !members[1].alive && members[1].partitions.is_empty());
        assert_eq!(
            m.heard(beat("b", "10.0.0.2:7400", &[]), s(30), 30),
            Heard::Joined
        );
        assert_eq!(m.alive_count(), 2);
        assert_eq!(
            m.heard(beat("a", "10.9.9.9:1", &[]), s(30), 30),
            Heard::Impostor
        );
    }

    #[test]
    fn a_joiner_is_a_home_only_once_every_live_member_hears_it() {
        let mut m = Membership::new(me(), &[], Duration::from_secs(5));
        let (t, ms) = (Instant::now(), 0);
        // b hears a (this node); c has just joined: b does not list it yet, c lists a and b.
        m.heard(beat("b", "10.0.0.2:7400", &["10.0.0.1:7400"]), t, ms);
        m.heard(
            beat("c", "10.0.0.3:7400", &["10.0.0.1:7400", "10.0.0.2:7400"]),
            t,
            ms,
        );
        assert_eq!(m.view(&[]).members, ["a", "b"]);
        // b hears c now.
        m.heard(
            beat("b", "10.0.0.2:7400", &["10.0.0.1:7400", "10.0.0.3:7400"]),
            t,
            ms,
        );
        assert_eq!(m.view(&[]).members, ["a", "b", "c"]);
        // A peer that does not hear this node: one of the two leaves the group (the larger id
        // of equals), the same on every node that knows as much.
        m.heard(beat("c", "10.0.0.3:7400", &["10.0.0.2:7400"]), t, ms);
        assert_eq!(m.view(&[]).members, ["a", "b"]);
        // A joiner whose first heartbeat lists only this node does not push the others out.
        m.heard(
            beat("c", "10.0.0.3:7400", &["10.0.0.1:7400", "10.0.0.2:7400"]),
            t,
            ms,
        );
        m.heard(beat("d", "10.0.0.4:7400", &["10.0.0.1:7400"]), t, ms);
        let view = m.view(&[]);
        assert_eq!(
            (view.members, view.live),
            (
                vec!["a".into(), "b".into(), "c".into()],
                vec!["b".into(), "c".into(), "d".into()]
            )
        );
        // Alone: its own home.
        let alone = Membership::new(me(), &[], Duration::from_secs(5));
        assert_eq!(alone.view(&[3]).members, ["a"]);
    }

    #[test]
    fn a_down_peer_is_missing_until_its_partitions_have_a_new_owner() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut m = Membership::new(me(), &[], BOUND);
        let mut b = beat("b", "10.0.0.2:7400", &[]);
        b.partitions = vec![2, 3];
        m.heard(b, s(0), 0);
        let mut c = beat("c", "10.0.0.3:7400", &[]);
        c.partitions = vec![4];
        m.heard(c.clone(), s(0), 0);
        assert!(m.uncovered_down(&[0, 1]).is_empty(), "all alive");
        m.heard(c.clone(), s(6), 6);
        m.judge(s(6));
        assert_eq!(m.uncovered_down(&[0, 1]), vec!["b".to_string()]);
        // The group moved 2 here and 3 to c: b is no longer missing.
        c.partitions = vec![3, 4];
        m.heard(c, s(7), 7);
        assert!(m.uncovered_down(&[0, 1, 2]).is_empty());
    }

    #[test]
    fn dials_seeds_and_gossiped_peers_with_backoff_but_not_live_ones_or_itself() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let seeds = ["10.0.0.2:7400".to_string(), "10.0.0.1:7400".to_string()];
        let mut m = Membership::new(me(), &seeds, BOUND);
        assert_eq!(m.to_dial(s(0)), vec!["10.0.0.2:7400"], "not itself");
        assert!(m.to_dial(s(0)).is_empty(), "in flight");
        m.dialed("10.0.0.2:7400", false, s(0));
        assert!(m.to_dial(s(0)).is_empty(), "backing off");
        assert_eq!(m.to_dial(s(1)).len(), 1, "after 1 s");
        m.dialed("10.0.0.2:7400", false, s(1));
        assert!(m.to_dial(s(2)).is_empty(), "2 s now");
        assert_eq!(m.to_dial(s(3)).len(), 1);
        // Connected but never heard from (a wrong cookie): wait at least the failure bound.
        m.dialed("10.0.0.2:7400", true, s(3));
        assert!(m.to_dial(s(7)).is_empty());
        assert_eq!(m.to_dial(s(8)).len(), 1);
        m.dialed("10.0.0.2:7400", true, s(8));
        // Heard from: not dialled while alive; and the peers it knows are dialled in turn.
        m.heard(
            beat("b", "10.0.0.2:7400", &["10.0.0.3:7400", "10.0.0.1:7400"]),
            s(9),
            9,
        );
        assert_eq!(m.to_dial(s(20)), vec!["10.0.0.3:7400"]);
        m.judge(s(20));
        assert_eq!(
            m.to_dial(s(20)),
            vec!["10.0.0.2:7400"],
            "down again: redial at once"
        );
    }
}
