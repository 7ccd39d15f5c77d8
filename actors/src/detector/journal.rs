//! The detector's checkpoint, kept as records in the node's checkpoint store: each host's mark
//! (how far it judged, its ongoing episodes), the raised anomalies and ended episodes the API
//! lists, and the alerts' outbox. A restarted detector takes them back, so it neither forgets an
//! ongoing episode nor raises or announces one again for a window it judged before.
//!
//! A judged window's changes are applied in one atomic batch before its announcements are
//! queued; the delivery thread makes the store durable before it tells a receiver anything and
//! removes an announcement from the outbox once every receiver has it. A window that raised and
//! ended nothing changes only its host's mark (and weekly profile): those changes wait, up to
//! [`DEFERRED_WINDOWS`] windows or until the detector's mailbox is empty, and go in with the
//! next batch. One write transaction per judged window was the detector's whole pace: in a
//! backfill of 20,000 sites it fell behind by hundreds of thousands of windows, each waiting in
//! its mailbox. A mark lost to a crash only makes the restarted detector judge those windows
//! again, as marks not yet durable (`Records` makes changes durable every 500 ms) always could.

use super::state::{HostMark, Observed};
use super::weekly::WeeklyProfile;
use serde::{Deserialize, Serialize};
use wtm_core::checkpoint::{decode, encode};
use wtm_messages::{Anomaly, Episode};
use wtm_storage::{CheckpointStoreError, RecordBatch, Records};

const MARK: u8 = b'h';
const ANOMALY: u8 = b'a';
const EPISODE: u8 = b'e';
const OUTBOX: u8 = b'o';
const WEEKLY: u8 = b'w';

/// An episode that opened (`firing`) or ended, as queued for the receivers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub episode: Episode,
    pub firing: bool,
    /// Its record in the outbox (None: not kept, no journal).
    #[serde(skip)]
    pub outbox_key: Option<Vec<u8>>,
}

/// What a checkpoint kept.
#[derive(Debug, Default)]
pub struct Restored {
    pub marks: Vec<(String, HostMark)>,
    pub weekly: Vec<(String, WeeklyProfile)>,
    /// Oldest first.
    pub anomalies: Vec<Anomaly>,
    /// Oldest end first.
    pub episodes: Vec<Episode>,
}

pub struct Journal {
    records: Records,
    next_seq: u64,
    /// Marks and weekly profiles not applied yet, of `deferred` judged windows.
    pending: RecordBatch,
    deferred: usize,
}

/// Judged windows whose marks may wait to be applied together.
pub const DEFERRED_WINDOWS: usize = 1024;

/// Times as bytes that sort as the numbers do (negative ones first).
fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// `tag`, then each part; names end with a 0 byte (never inside a host the parsers accept,
/// `wtm_core::limits::plausible_host`, nor a metric or kind name).
fn key(tag: u8, times: &[i64], names: &[&str]) -> Vec<u8> {
    let mut k = vec![tag];
    for t in times {
        k.extend_from_slice(&time_bytes(*t));
    }
    for n in names {
        k.extend_from_slice(n.as_bytes());
        k.push(0);
    }
    k
}

fn mark_key(host: &str) -> Vec<u8> {
    key(MARK, &[], &[host])
}

fn weekly_key(host: &str) -> Vec<u8> {
    key(WEEKLY, &[], &[host])
}

/// The host of a per-host record's key: the tag, the host and its 0 byte.
fn host_of(k: &[u8]) -> String {
    String::from_utf8_lossy(&k[1..k.len() - 1]).into_owned()
}

fn anomaly_key(a: &Anomaly) -> Vec<u8> {
    key(ANOMALY, &[a.window_start_ms], &[&a.host, &a.metric])
}

fn episode_key(e: &Episode) -> Vec<u8> {
    key(
        EPISODE,
        &[e.end_ms.unwrap_or(i64::MAX), e.start_ms],
        &[&e.host, &e.metric, &e.kind],
    )
}

fn outbox_key(seq: u64) -> Vec<u8> {
    let mut k = vec![OUTBOX];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn put<T: Serialize>(batch: &mut RecordBatch, k: Vec<u8>, v: &T) {
    // Plain data always encodes; a failure would be a bug, and the record is then only missing.
    if let Ok(bytes) = encode(v) {
        batch.puts.push((k, bytes));
    }
}

/// Every record under `tag` that decodes; one that does not (another build's) is skipped with
/// a warning and removed.
fn load<T: serde::de::DeserializeOwned>(
    records: &Records,
    tag: u8,
) -> Result<Vec<(Vec<u8>, T)>, CheckpointStoreError> {
    let mut out = Vec::new();
    let mut bad = RecordBatch::default();
    for (k, v) in records.scan(&[tag])? {
        match decode::<T>("detector record", &v) {
            Ok(t) => out.push((k, t)),
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable detector record is dropped");
                bad.removes.push(k);
            }
        }
    }
    if !bad.is_empty() {
        records.apply(bad)?;
    }
    Ok(out)
}

/// The announcements waiting in the outbox, oldest first.
pub fn pending(records: &Records) -> Result<Vec<Announcement>, CheckpointStoreError> {
    Ok(load::<Announcement>(records, OUTBOX)?
        .into_iter()
        .map(|(k, mut a)| {
            a.outbox_key = Some(k);
            a
        })
        .collect())
}

/// The announcements of one judged window (none without `announce`): openings, then endings.
pub fn announcements(seen: &Observed, announce: bool) -> Vec<Announcement> {
    if !announce {
        return Vec::new();
    }
    let opened = seen.opened.iter().map(|e| (e, true));
    opened
        .chain(seen.ended.iter().map(|e| (e, false)))
        .map(|(e, firing)| Announcement {
            episode: e.clone(),
            firing,
            outbox_key: None,
        })
        .collect()
}

impl Journal {
    /// Open the journal and take back what it kept. Blocking.
    pub fn open(records: Records) -> Result<(Journal, Restored), CheckpointStoreError> {
        let marks = load::<HostMark>(&records, MARK)?
            .into_iter()
            .map(|(k, m)| (host_of(&k), m))
            .collect();
        let weekly = load::<WeeklyProfile>(&records, WEEKLY)?
            .into_iter()
            .filter(|(_, w)| w.is_valid())
            .map(|(k, w)| (host_of(&k), w))
            .collect();
        let anomalies = load::<Anomaly>(&records, ANOMALY)?;
        let episodes = load::<Episode>(&records, EPISODE)?;
        let next_seq = records
            .scan(&[OUTBOX])?
            .last()
            .and_then(|(k, _)| Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?) + 1))
            .unwrap_or(0);
        let restored = Restored {
            marks,
            weekly,
            anomalies: anomalies.into_iter().map(|(_, a)| a).collect(),
            episodes: episodes.into_iter().map(|(_, e)| e).collect(),
        };
        Ok((
            Journal {
                records,
                next_seq,
                pending: RecordBatch::default(),
                deferred: 0,
            },
            restored,
        ))
    }

    /// Keep what judging one window of `host` changed (and, with `announce`, its episodes'
    /// announcements in the outbox). Applied at once, with the changes waiting before it, when
    /// it raised or ended anything; else it waits (see the module's notes and [`Journal::flush`]).
    /// Returns the announcements to queue.
    pub fn record(
        &mut self,
        host: &str,
        seen: &Observed,
        announce: bool,
    ) -> Result<Vec<Announcement>, CheckpointStoreError> {
        let batch = &mut self.pending;
        if let Some(m) = &seen.mark {
            put(batch, mark_key(host), m);
        }
        if let Some(w) = &seen.weekly {
            put(batch, weekly_key(host), w);
        }
        for a in &seen.anomalies {
            put(batch, anomaly_key(a), a);
        }
        for e in &seen.ended {
            put(batch, episode_key(e), e);
        }
        batch
            .removes
            .extend(seen.evicted_anomalies.iter().map(anomaly_key));
        batch
            .removes
            .extend(seen.evicted_episodes.iter().map(episode_key));
        let mut out = announcements(seen, announce);
        for a in &mut out {
            let k = outbox_key(self.next_seq);
            self.next_seq += 1;
            put(batch, k.clone(), &*a);
            a.outbox_key = Some(k);
        }
        // Removes only come with anomalies raised: such a batch is applied now, so the puts a
        // deferred batch holds never meet a remove of the same key (apply puts, then removes).
        let urgent = !(seen.anomalies.is_empty()
            && seen.ended.is_empty()
            && seen.evicted_anomalies.is_empty()
            && seen.evicted_episodes.is_empty()
            && out.is_empty());
        self.deferred += 1;
        if urgent || self.deferred >= DEFERRED_WINDOWS {
            self.flush()?;
        }
        Ok(out)
    }

    /// Apply the changes waiting (the detector calls it when its mailbox is empty, and before
    /// it stops).
    pub fn flush(&mut self) -> Result<(), CheckpointStoreError> {
        self.deferred = 0;
        if self.pending.is_empty() {
            return Ok(());
        }
        self.records.apply(std::mem::take(&mut self.pending))
    }

    /// Forget the marks and weekly profiles of hosts judged elsewhere now.
    pub fn forget(&mut self, hosts: &[String]) -> Result<(), CheckpointStoreError> {
        // After the marks waiting, or one of them would bring a forgotten host back.
        self.flush()?;
        let removes = hosts
            .iter()
            .flat_map(|h| [mark_key(h), weekly_key(h)])
            .collect();
        self.records.apply(RecordBatch {
            puts: Vec::new(),
            removes,
        })
    }

    /// The records, for the alerts' delivery thread.
    pub fn records(&self) -> &Records {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::DetectorState;
    use wtm_config::DetectorConfig;
    use wtm_messages::WindowPoint;
    use wtm_storage::CheckpointStore;

    fn point(i: i64, requests: f64) -> WindowPoint {
        WindowPoint {
            start_ms: i * 60_000,
            requests,
            error_rate: 0.01,
            latency_p99_ms: 200.0,
        }
    }

    fn traffic(i: i64) -> f64 {
        // Quiet wobble, and a spike over windows 40..43.
        match i {
            40..43 => 5000.0,
            _ if i % 2 == 0 => 630.0,
            _ => 570.0,
        }
    }

    fn detector(dir: &std::path::Path) -> (DetectorState, Journal, Restored) {
        let store = CheckpointStore::open(dir).unwrap();
        let (journal, restored) = Journal::open(store.records("detector").unwrap()).unwrap();
        let cfg = DetectorConfig {
            model_history: 10_000,
            ..DetectorConfig::default()
        };
        (DetectorState::new(cfg, 60_000), journal, restored)
    }

    #[test]
    fn calm_windows_marks_wait_for_a_flush_or_a_full_batch() {
        let dir = tempfile::tempdir().unwrap();
        let marks = |dir: &std::path::Path| -> Vec<(String, i64)> {
            let (_, _, restored) = detector(dir);
            let mut m: Vec<_> = restored
                .marks
                .into_iter()
                .map(|(h, m)| (h, m.judged_through / 60_000))
                .collect();
            m.sort();
            m
        };
        {
            let (mut d, mut j, _) = detector(dir.path());
            for i in 0..10 {
                let seen = d.observe("h", point(i, 600.0));
                assert!(seen.mark.is_some() && j.record("h", &seen, true).unwrap().is_empty());
            }
            // Dropped unflushed (a crash): the restarted detector judges them again.
        }
        assert!(marks(dir.path()).is_empty());
        {
            let (mut d, mut j, _) = detector(dir.path());
            for i in 0..10 {
                let seen = d.observe("h", point(i, 600.0));
                j.record("h", &seen, true).unwrap();
            }
            j.flush().unwrap();
        }
        assert_eq!(marks(dir.path()), [("h".to_string(), 9)]);
        {
            // A full batch goes in without a flush; the windows after it wait.
            let (mut d, mut j, _) = detector(dir.path());
            let hosts = DEFERRED_WINDOWS + 5;
            for h in 0..hosts {
                let seen = d.observe(&format!("h{h:04}"), point(3, 600.0));
                j.record(&format!("h{h:04}"), &seen, true).unwrap();
            }
            // Forgetting a host applies what waits first, so the forgotten one stays gone.
            j.forget(&["h0000".to_string()]).unwrap();
        }
        let m = marks(dir.path());
        assert_eq!(m.len(), 1 + DEFERRED_WINDOWS + 5 - 1, "{:?}", &m[..3]);
        assert!(!m.iter().any(|(h, _)| h == "h0000"));
    }

    #[test]
    fn a_restarted_detector_raises_and_announces_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut told = Vec::new();
        {
            let (mut d, mut j, restored) = detector(dir.path());
            assert!(restored.marks.is_empty());
            // Judged up to window 41: the spike's episode is open when the node dies.
            for i in 0..42 {
                let seen = d.observe("h", point(i, traffic(i)));
                told.extend(j.record("h", &seen, true).unwrap());
            }
            j.records().flush().unwrap();
        }
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].firing);
        let start = told[0].episode.start_ms;
        assert_eq!(start, 40 * 60_000);

        let (mut d, mut j, restored) = detector(dir.path());
        assert_eq!(restored.marks.len(), 1);
        assert_eq!(restored.anomalies.len(), 2, "windows 40 and 41's spikes");
        let out = d.restore(restored);
        assert!(out.evicted_anomalies.is_empty());
        assert_eq!(
            d.episodes(None, i64::MIN).len(),
            1,
            "the open episode is back"
        );
        // The lake's history comes back as a seed: windows up to 44 were written before the
        // kill, so 42..44 are judged now (catching up); then the owner replays 30..49.
        let mut after = Vec::new();
        let caught_up = d.seed("h", (0..45).map(|i| point(i, traffic(i))).collect(), true);
        assert_eq!(caught_up.len(), 3, "windows 42, 43 and 44");
        for seen in &caught_up {
            after.extend(j.record("h", seen, true).unwrap());
        }
        for i in 30..50 {
            let seen = d.observe("h", point(i, traffic(i)));
            if i <= 44 {
                assert!(
                    seen.anomalies.is_empty() && seen.opened.is_empty(),
                    "window {i}"
                );
                assert!(seen.ended.is_empty() && seen.mark.is_none(), "window {i}");
            }
            after.extend(j.record("h", &seen, true).unwrap());
        }
        // The spike goes on at 42 in the same episode, which ends once: no second opening.
        assert_eq!(after.len(), 1, "{after:?}");
        assert!(!after[0].firing);
        assert_eq!(after[0].episode.start_ms, start);
        assert_eq!(after[0].episode.windows, 3);
        let listed = d.anomalies(None, i64::MIN);
        let starts: Vec<i64> = listed.iter().map(|a| a.window_start_ms / 60_000).collect();
        assert_eq!(starts, [40, 41, 42]);
        // Neither announcement was delivered (no thread here): both wait in the outbox, in order.
        let waiting = pending(j.records()).unwrap();
        let firing: Vec<bool> = waiting.iter().map(|a| a.firing).collect();
        assert_eq!(firing, [true, false]);
        assert!(waiting.iter().all(|a| a.episode.start_ms == start));
    }
}
