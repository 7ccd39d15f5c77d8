//! Kafka: the consumer-group source and the producers (`wtm generate --kafka`, dead letters).
//! The only file that touches rdkafka.
//!
//! One consumer per node, polled on its own thread for the group's callbacks. Each assigned
//! partition's records come on a queue of its own, split off the consumer's
//! (`split_partition_queue`), which that partition's owner polls directly through a
//! [`KafkaPartition`]: no copy through the consumer thread, no lock per record, and
//! librdkafka's own prefetch bounds (`queued.min.messages`, `queued.max.messages.kbytes`) hold
//! per partition. The group's rebalance callbacks run on the consumer thread:
//!
//! - **assign**: the new partitions are paused and a [`GroupEvent::Assigned`] goes out (the
//!   node starts their owners); right after the callback, before any seek, the consumer thread
//!   splits their queues off. Each owner restores its checkpoint and opens its partition at the
//!   checkpoint's offset, which is sought, and only then is the partition resumed. Records fetched before the seek are outdated by it
//!   (librdkafka drops them) and read again from the sought offset.
//! - **fallback**: a partition whose queue could not be split gets its records through the
//!   consumer's queue; the consumer thread sorts them into a queue of ours for the owner
//!   ([`assignments::Assignments`], which also pauses it when its owner falls behind).
//! - **revoke**: a [`GroupEvent::Revoked`] goes out and the callback waits for its answer: the
//!   owners have taken a final checkpoint, published it and stopped, so a partition is released
//!   only once its state is where the next owner reads it. When the assignment was *lost*
//!   (session timeout), another node may already own the partitions: the owners stop without
//!   writing anything.
//!
//! The callbacks only send typed events and wait; the bookkeeping (queues, generations, pause
//! and resume) is [`assignments::Assignments`], tested without a broker.
//!
//! Offsets are committed after each published snapshot: the owner hands the offset to a
//! committer thread (never blocking a handler), which commits synchronously and times it.

pub mod assignments;

use crate::{PartitionSource, Polled, RawRecords, SourceError, SourceFactory};
use assignments::{Assignments, Pushed, Taken};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    base_consumer::PartitionQueue, BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wtm_config::{librdkafka_key, SourceConfig, StartPosition};
use wtm_core::error::ErrorKind;
use wtm_core::time::now_ms;
use wtm_telemetry::{partition_label, KeyValue, Metrics};

/// How long an owner waits before looking at an empty queue again.
const EMPTY_WAIT_MS: i64 = 20;

/// How long a revoke waits for the node to confirm its owners' final checkpoints.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct KafkaSetupError(String);

impl KafkaSetupError {
    /// librdkafka refuses a client only for settings it cannot accept.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Permanent
    }
}

/// What the consumer group decided, for whoever runs the partitions' owners.
#[derive(Debug)]
pub enum GroupEvent {
    /// These partitions are this node's now: start their owners (each opens its partition
    /// through [`KafkaSources`], which seeks it and only then resumes it).
    Assigned(Vec<u32>),
    /// These partitions are taken away. Stop their owners — after a final checkpoint, unless
    /// `lost` (another node may own them already: write nothing) — then answer on `done`.
    /// The group waits for that answer before it hands the partitions over.
    Revoked {
        partitions: Vec<u32>,
        lost: bool,
        done: RevokeDone,
    },
}

/// The answer to a [`GroupEvent::Revoked`].
#[derive(Debug)]
pub struct RevokeDone(std::sync::mpsc::SyncSender<()>);

impl RevokeDone {
    pub fn done(self) {
        // The consumer thread may have stopped waiting (timeout): nothing to tell then.
        let _ = self.0.try_send(());
    }
}

/// Where group events go (an unbounded channel: a callback must never block on a full one).
pub type GroupEvents = tokio::sync::mpsc::UnboundedSender<GroupEvent>;

fn set_all(c: &mut ClientConfig, settings: &std::collections::BTreeMap<String, String>) {
    for (k, v) in settings {
        c.set(librdkafka_key(k), v);
    }
}

fn base_config(
    brokers: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    set_all(&mut c, settings);
    c
}

/// Offsets the owners asked to commit, newest per partition, for the committer thread.
#[derive(Default)]
struct Commits {
    pending: HashMap<u32, u64>,
    in_flight: bool,
    /// The consumer thread has ended: commit what is left, then stop.
    closing: bool,
}

struct Seek {
    attempts: u32,
    partition: u32,
    generation: u64,
    offset: Offset,
    not_before: Instant,
}

struct Shared {
    topic: String,
    slots: Mutex<Assignments>,
    /// Partitions assigned whose queues the consumer thread has yet to split off (a rebalance
    /// callback sees the consumer only by reference, and splitting needs its `Arc`).
    to_split: Mutex<Vec<u32>>,
    /// Each assigned partition's own queue, once split off. Dropped at revocation: a later
    /// assignment splits it anew.
    queues: Mutex<HashMap<u32, Arc<PartitionQueue<GroupContext>>>>,
    seeks: Mutex<Vec<Seek>>,
    stop: AtomicBool,
    commits: Mutex<Commits>,
    commits_changed: Condvar,
    events: GroupEvents,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the consumer: the data behind the lock stays consistent
    // (every critical section is a few field updates).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        let mut v: Vec<u32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        v.sort_unstable();
        v
    }

    fn request_commit(&self, partition: u32, offset: u64) {
        lock(&self.commits).pending.insert(partition, offset);
        self.commits_changed.notify_all();
    }

    /// Wait until the committer has sent what was asked of it (or `timeout` passed).
    fn wait_for_commits(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = lock(&self.commits);
        while !c.pending.is_empty() || c.in_flight {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            c = self
                .commits_changed
                .wait_timeout(c, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn tpl(&self, partitions: &[u32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p as i32);
        }
        tpl
    }
}

/// The consumer's callbacks: rebalances (commit results come from the committer thread).
struct GroupContext {
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = self.shared.partitions_of(tpl);
        if partitions.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        let kind = if lost { "lost" } else { "revoke" };
        Metrics::global()
            .rebalances
            .add(1, &[KeyValue::new("kind", kind)]);
        tracing::info!(
            ?partitions,
            lost,
            "partitions revoked; stopping their owners"
        );
        // Blocking here is the point: the group does not hand the partitions to another node
        // until the owners' final checkpoints are published.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sent = self.shared.events.send(GroupEvent::Revoked {
            partitions: partitions.clone(),
            lost,
            done: RevokeDone(tx),
        });
        if sent.is_err() || rx.recv_timeout(REVOKE_TIMEOUT).is_err() {
            tracing::warn!(
                ?partitions,
                "owners did not confirm their final checkpoint; the next owner replays from the last published snapshot"
            );
        }
        // The final snapshots' offsets go out before the partitions are released.
        if !lost && !self.shared.wait_for_commits(Duration::from_secs(10)) {
            tracing::warn!(?partitions, "final offset commits not confirmed in 10 s");
        }
        let mut slots = lock(&self.shared.slots);
        let mut queues = lock(&self.shared.queues);
        let mut to_split = lock(&self.shared.to_split);
        for p in &partitions {
            slots.revoke(*p);
            queues.remove(p);
            to_split.retain(|q| q != p);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.shared.partitions_of(tpl);
                if partitions.is_empty() {
                    return;
                }
                // Nothing is read until the owner has sought its checkpoint's offset.
                if let Err(e) = consumer.pause(&self.shared.tpl(&partitions)) {
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                }
                {
                    let mut slots = lock(&self.shared.slots);
                    for p in &partitions {
                        slots.assign(*p);
                    }
                }
                lock(&self.shared.to_split).extend_from_slice(&partitions);
                // Series that dashboards query exist from the assignment on, not from the
                // first failure.
                let m = Metrics::global();
                for p in &partitions {
                    let pl = [partition_label(*p)];
                    m.commit_errors.add(0, &pl);
                    m.paused.add(0, &pl);
                    m.dead_letters.add(0, &pl);
                }
                Metrics::global()
                    .rebalances
                    .add(1, &[KeyValue::new("kind", "assign")]);
                tracing::info!(?partitions, "partitions assigned; starting their owners");
                if self
                    .shared
                    .events
                    .send(GroupEvent::Assigned(partitions))
                    .is_err()
                {
                    tracing::error!("nobody to start the partitions' owners (node stopping)");
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

/// A Kafka topic as the partitions of a node, through one consumer-group member.
pub struct KafkaSources {
    consumer: Arc<GroupConsumer>,
    group: String,
    shared: Arc<Shared>,
    start_from: StartPosition,
    dead_letters: Option<Arc<KafkaSink>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl KafkaSources {
    /// Join the group (nothing is consumed until [`KafkaSources::start`]); its assignments and revocations go to `events`.
    pub fn connect(
        cfg: &SourceConfig,
        client_id: &str,
        events: GroupEvents,
    ) -> Result<Arc<KafkaSources>, KafkaSetupError> {
        let shared = Arc::new(Shared {
            topic: cfg.topic.clone(),
            slots: Mutex::new(Assignments::default()),
            to_split: Mutex::new(Vec::new()),
            queues: Mutex::new(HashMap::new()),
            seeks: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            commits: Mutex::new(Commits::default()),
            commits_changed: Condvar::new(),
            events,
        });
        let mut c = base_config(&cfg.brokers, &Default::default());
        c.set("group.id", &cfg.group)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Only used if a sought offset is out of range (deleted by retention).
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // librdkafka stops fetching a partition for this long whenever its prefetch queue
            // holds `queued.min.messages` records; one fetch of a compressed backlog does, and
            // the owners empty it in well under the default second, so they sat idle: 209k ->
            // ~400k events/s from a pre-filled topic (bench/RESULTS-kafka.md). That prefetch
            // bound (and `queued.max.messages.kbytes`) is what bounds memory per partition.
            .set("fetch.queue.backoff.ms", "10")
            // Each partition's queue is its own (`split_partition_queue`), so these bounds hold
            // per partition, not per consumer: librdkafka's defaults (100,000 records, 64 MiB)
            // took a 6-partition node from 499 to 850 MB RSS on a backlog; with these (about a
            // third and a quarter of them) it peaked at 528 MB, events/s within the noise of
            // the defaults' (bench/RESULTS-kafka.md).
            .set("queued.min.messages", "32768")
            .set("queued.max.messages.kbytes", "16384");
        set_all(&mut c, &cfg.kafka);
        let consumer: GroupConsumer = c
            .create_with_context(GroupContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| KafkaSetupError(format!("cannot create the consumer: {e}")))?;
        consumer
            .subscribe(&[&cfg.topic])
            .map_err(|e| KafkaSetupError(format!("cannot subscribe to {:?}: {e}", cfg.topic)))?;
        let dead_letters = match &cfg.dead_letter_topic {
            Some(t) => Some(Arc::new(KafkaSink::connect(
                &cfg.brokers,
                t,
                &cfg.kafka,
                &format!("{client_id}-dead-letters"),
            )?)),
            None => None,
        };
        Ok(Arc::new(KafkaSources {
            consumer: Arc::new(consumer),
            group: cfg.group.clone(),
            shared,
            start_from: cfg.start_from,
            dead_letters,
            threads: Mutex::new(Vec::new()),
        }))
    }

    /// The `client.id` of every member of this node's consumer group now (this node's too): a
    /// request to the group's coordinator. Blocking.
    pub fn group_client_ids(&self, timeout: Duration) -> Result<Vec<String>, KafkaSetupError> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), timeout)
            .map_err(|e| KafkaSetupError(format!("cannot list group {:?}: {e}", self.group)))?;
        Ok(list
            .groups()
            .iter()
            .flat_map(|g| g.members().iter().map(|m| m.client_id().to_owned()))
            .collect())
    }

    /// Start consuming on a thread of its own (the supervisor must be running: assignments
    /// start owners through it).
    pub fn start(&self) -> std::io::Result<()> {
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        let t = std::thread::Builder::new()
            .name("wtm-kafka-consumer".into())
            .spawn(move || consume(&consumer, &shared))?;
        lock(&self.threads).push(t);
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        let t = std::thread::Builder::new()
            .name("wtm-kafka-committer".into())
            .spawn(move || commit_loop(&consumer, &shared))?;
        lock(&self.threads).push(t);
        Ok(())
    }

    /// Leave the group in order: every owned partition is revoked (final checkpoints
    /// published, offsets committed) before this returns. Blocking.
    pub fn leave(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        // The consumer is closed; rdkafka's Drop would try to close it again and log a spurious
        // error. The process is about to exit: keep it alive instead.
        std::mem::forget(Arc::clone(&self.consumer));
        if let Some(d) = &self.dead_letters {
            let _ = d.flush(Duration::from_secs(10));
        }
    }

    fn open_at(
        &self,
        partition: u32,
        offset: Offset,
        next: u64,
    ) -> Result<Box<dyn PartitionSource>, SourceError> {
        // Revoked between the assignment and the owner's start: a supervisor retry finds it
        // gone from its own set and stops trying.
        let generation = lock(&self.shared.slots).open(partition).ok_or_else(|| {
            SourceError::transient(format!(
                "partition {partition} is not assigned to this node"
            ))
        })?;
        lock(&self.shared.seeks).push(Seek {
            attempts: 0,
            partition,
            generation,
            offset,
            not_before: Instant::now(),
        });
        Ok(Box::new(KafkaPartition {
            consumer: Arc::clone(&self.consumer),
            shared: Arc::clone(&self.shared),
            dead_letters: self.dead_letters.clone(),
            queue: None,
            errors: ErrorLog::default(),
            partition,
            generation,
            next,
        }))
    }
}

impl SourceFactory for KafkaSources {
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, SourceError> {
        self.open_at(partition, Offset::Offset(offset as i64), offset)
    }

    fn open_new(&self, partition: u32) -> Result<Box<dyn PartitionSource>, SourceError> {
        let at = match self.start_from {
            StartPosition::Earliest => Offset::Beginning,
            StartPosition::Latest => Offset::End,
        };
        self.open_at(partition, at, 0)
    }
}

/// The consumer thread: splits new partitions' queues off, seeks the owners asked for, then polls
/// (the group's callbacks, and the records of any partition whose queue was not split off).
fn consume(consumer: &Arc<GroupConsumer>, shared: &Shared) {
    let mut errors = ErrorLog::default();
    while !shared.stop.load(Ordering::SeqCst) {
        // Splits before seeks: a partition is sought (and resumed) only once its records go to
        // its own queue.
        split_queues(consumer, shared);
        run_seeks(consumer, shared);
        match consumer.poll(Duration::from_millis(20)) {
            None => {}
            Some(Ok(m)) => {
                if let (Ok(p), Ok(o)) = (u32::try_from(m.partition()), u64::try_from(m.offset())) {
                    push(consumer, shared, p, o, m.payload().unwrap_or_default());
                }
            }
            Some(Err(e)) => {
                if let Some(text) = errors.news(&e) {
                    tracing::warn!(error = %text, "kafka consumer error (librdkafka retries)");
                }
            }
        }
    }
    // Closing revokes every partition through the rebalance callback (final checkpoints), then
    // leaves the group (LeaveGroup), so the other members get the partitions at once rather
    // than a session timeout later.
    tracing::info!("leaving the consumer group");
    match consumer.close_queue() {
        Ok(()) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !consumer.closed() && Instant::now() < deadline {
                consumer.poll(Duration::from_millis(50));
            }
        }
        Err(e) => tracing::warn!(error = %e, "consumer close failed"),
    }
    lock(&shared.commits).closing = true;
    shared.commits_changed.notify_all();
    tracing::info!("kafka consumer stopped");
}

/// The committer thread: synchronous commits, so each one's latency and outcome are known
/// (rdkafka delivers no result for an asynchronous manual commit), off the owners' handlers
/// and off the consumer thread (a commit waits while the broker is away).
fn commit_loop(consumer: &GroupConsumer, shared: &Shared) {
    let m = Metrics::global();
    loop {
        let batch = {
            let mut c = lock(&shared.commits);
            while c.pending.is_empty() && !c.closing {
                c = shared
                    .commits_changed
                    .wait_timeout(c, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if c.pending.is_empty() {
                return; // closing, nothing left
            }
            c.in_flight = true;
            std::mem::take(&mut c.pending)
        };
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &batch {
            if let Err(e) =
                tpl.add_partition_offset(&shared.topic, p as i32, Offset::Offset(o as i64))
            {
                // Only an offset librdkafka cannot represent fails here: say so, commit the rest.
                tracing::error!(partition = p, offset = o, error = %e, "offset not committable");
            }
        }
        let started = Instant::now();
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                m.commit_seconds
                    .record(started.elapsed().as_secs_f64(), &[]);
                let mut slots = lock(&shared.slots);
                for (p, o) in &batch {
                    slots.set_committed(*p, *o);
                }
            }
            Err(e) => {
                for p in batch.keys() {
                    m.commit_errors.add(1, &[partition_label(*p)]);
                }
                tracing::warn!(error = %e, partitions = ?batch.keys().collect::<Vec<_>>(), "offset commit failed; the next snapshot commits again");
            }
        }
        lock(&shared.commits).in_flight = false;
        shared.commits_changed.notify_all();
    }
}

/// A librdkafka error worth logging only when it is news: a broker outage repeats the same error
/// many times a second, so each is logged once per change, or every 10 s.
#[derive(Default)]
struct ErrorLog {
    last: Option<(String, Instant)>,
}

impl ErrorLog {
    fn news(&mut self, e: &KafkaError) -> Option<String> {
        let text = e.to_string();
        let repeat = matches!(&self.last, Some((t, at)) if *t == text && at.elapsed() < Duration::from_secs(10));
        if repeat {
            return None;
        }
        self.last = Some((text.clone(), Instant::now()));
        Some(text)
    }
}

/// Split newly assigned partitions' queues off the consumer's. A partition that cannot be split
/// (librdkafka does not know it yet) keeps coming through the consumer's queue: correct, only
/// slower.
fn split_queues(consumer: &Arc<GroupConsumer>, shared: &Shared) {
    let todo = std::mem::take(&mut *lock(&shared.to_split));
    for p in todo {
        if !lock(&shared.slots).is_assigned(p) {
            continue;
        }
        match consumer.split_partition_queue(&shared.topic, p as i32) {
            Some(q) => {
                lock(&shared.queues).insert(p, Arc::new(q));
            }
            None => tracing::warn!(
                partition = p,
                "cannot split the partition's queue off the consumer's; its records go through the consumer thread"
            ),
        }
    }
}

fn run_seeks(consumer: &GroupConsumer, shared: &Shared) {
    let due: Vec<Seek> = {
        let mut seeks = lock(&shared.seeks);
        if seeks.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later) = std::mem::take(&mut *seeks)
            .into_iter()
            .partition(|s| s.not_before <= now);
        *seeks = later;
        due
    };
    for mut s in due {
        let current = lock(&shared.slots).is_current(s.partition, s.generation);
        if !current {
            continue; // revoked, or opened again since
        }
        match consumer.seek(
            &shared.topic,
            s.partition as i32,
            s.offset,
            Duration::from_secs(10),
        ) {
            Ok(()) => {
                if !lock(&shared.slots).sought(s.partition, s.generation) {
                    continue; // revoked or opened again while seeking: that owner seeks anew
                }
                if let Err(e) = consumer.resume(&shared.tpl(&[s.partition])) {
                    tracing::warn!(partition = s.partition, error = %e, "resume failed");
                }
                tracing::info!(partition = s.partition, offset = ?s.offset, "partition sought; reading");
            }
            Err(e) => {
                // A just-assigned partition refuses seeks ("erroneous state") until its fetcher
                // has started; that takes a moment, so only a persistent failure is news.
                s.attempts += 1;
                if s.attempts >= 10 {
                    tracing::warn!(partition = s.partition, offset = ?s.offset, attempts = s.attempts, error = %e, "seek failed; retrying");
                } else {
                    tracing::debug!(partition = s.partition, offset = ?s.offset, error = %e, "seek not possible yet; retrying");
                }
                s.not_before =
                    Instant::now() + Duration::from_millis(100 * s.attempts.min(10) as u64);
                lock(&shared.seeks).push(s);
            }
        }
    }
}

fn push(consumer: &GroupConsumer, shared: &Shared, p: u32, offset: u64, payload: &[u8]) {
    if lock(&shared.slots).push(p, offset, payload) == Pushed::QueuedPause {
        Metrics::global().paused.add(1, &[partition_label(p)]);
        if let Err(e) = consumer.pause(&shared.tpl(&[p])) {
            tracing::warn!(partition = p, error = %e, "pause failed");
        }
    }
}

/// One assigned partition, as its owner reads it.
pub struct KafkaPartition {
    consumer: Arc<GroupConsumer>,
    shared: Arc<Shared>,
    dead_letters: Option<Arc<KafkaSink>>,
    /// The partition's own queue, looked up once it has been sought for this owner.
    queue: Option<Arc<PartitionQueue<GroupContext>>>,
    errors: ErrorLog,
    partition: u32,
    generation: u64,
    next: u64,
}

impl KafkaPartition {
    /// Move records from the partition's own queue into `out` (after what the fallback queue
    /// gave), up to `max`, skipping offsets already read. Called only once the partition has
    /// been sought for this owner: its queue then holds only records from the sought offset on
    /// (librdkafka drops the ones a seek outdated).
    fn read_own_queue(&mut self, max: usize, out: &mut RawRecords) {
        if self.queue.is_none() {
            self.queue = lock(&self.shared.queues).get(&self.partition).cloned();
        }
        let Some(queue) = &self.queue else {
            return;
        };
        while out.len() < max {
            match queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let Ok(offset) = u64::try_from(m.offset()) else {
                        continue;
                    };
                    if offset >= self.next {
                        out.push(offset, m.payload().unwrap_or_default());
                        self.next = offset + 1;
                    }
                }
                Some(Err(e)) => {
                    if let Some(text) = self.errors.news(&e) {
                        tracing::warn!(partition = self.partition, error = %text, "kafka partition error (librdkafka retries)");
                    }
                    break;
                }
            }
        }
    }
}

impl PartitionSource for KafkaPartition {
    fn offset(&self) -> u64 {
        self.next
    }

    fn poll(&mut self, max: usize, out: &mut RawRecords) -> Polled {
        let taken = lock(&self.shared.slots).take(
            self.partition,
            self.generation,
            max,
            &mut self.next,
            out,
        );
        match taken {
            Taken::NotReady => return Polled::NotBefore(now_ms() + EMPTY_WAIT_MS),
            Taken::Took { resume: true, .. } => {
                if let Err(e) = self.consumer.resume(&self.shared.tpl(&[self.partition])) {
                    tracing::warn!(partition = self.partition, error = %e, "resume failed");
                }
            }
            Taken::Took { .. } => {}
        }
        self.read_own_queue(max, out);
        if out.records.is_empty() {
            Polled::NotBefore(now_ms() + EMPTY_WAIT_MS)
        } else {
            Polled::Ready
        }
    }

    fn lag(&mut self) -> Option<u64> {
        cached_high_watermark(&self.consumer, &self.shared.topic, self.partition)
            .map(|h| h.saturating_sub(self.next))
    }

    fn commit(&mut self, offset: u64) {
        self.shared.request_commit(self.partition, offset);
    }

    fn committed(&self) -> Option<u64> {
        lock(&self.shared.slots).committed(self.partition)
    }

    fn dead_letter(&mut self, offset: u64, reason: &str, record: &[u8]) {
        let Some(sink) = &self.dead_letters else {
            return;
        };
        let key = format!("{}:{offset}:{reason}", self.partition);
        match sink.send(key.as_bytes(), record) {
            Ok(()) => Metrics::global()
                .dead_letters
                .add(1, &[partition_label(self.partition)]),
            Err(e) => {
                tracing::warn!(partition = self.partition, offset, error = %e, "dead-letter produce failed")
            }
        }
    }
}

/// The partition's high watermark as librdkafka cached it from its last fetch response: no
/// network round trip (rdkafka 0.38 wraps only the fetching variant).
fn cached_high_watermark(consumer: &GroupConsumer, topic: &str, partition: u32) -> Option<u64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a NUL-terminated
    // string that outlives the call; the two out-pointers are valid i64s.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition as i32,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    u64::try_from(high).ok()
}

/// Delivery outcomes of a producer.
#[derive(Default)]
struct SinkContext {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            lock(&self.first_error).get_or_insert_with(|| e.to_string());
        }
    }
}

/// An idempotent producer into one topic (`wtm generate --kafka`, the dead-letter topic).
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    topic: String,
}

impl KafkaSink {
    pub fn connect(
        brokers: &str,
        topic: &str,
        settings: &std::collections::BTreeMap<String, String>,
        client_id: &str,
    ) -> Result<KafkaSink, KafkaSetupError> {
        let mut c = base_config(brokers, settings);
        c.set("client.id", client_id)
            .set("enable.idempotence", "true")
            // The Java client's partitioner, so every producer keys hosts to the same partition.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4");
        set_all(&mut c, settings);
        let producer = c
            .create_with_context(SinkContext::default())
            .map_err(|e| KafkaSetupError(format!("cannot create a producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Queue one record; waits while librdkafka's queue is full.
    pub fn send(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        loop {
            match self.producer.send(
                BaseRecord::<[u8], [u8]>::to(&self.topic)
                    .key(key)
                    .payload(payload),
            ) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("cannot produce to {:?}: {e}", self.topic)),
            }
        }
    }

    /// Wait for every queued record to be acknowledged; an error if any delivery failed.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        self.producer
            .flush(timeout)
            .map_err(|e| format!("records still unacknowledged after {timeout:?}: {e}"))?;
        let ctx = self.producer.context();
        match ctx.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(format!(
                "{n} records were not delivered to {:?}: {}",
                self.topic,
                lock(&ctx.first_error).clone().unwrap_or_default()
            )),
        }
    }
}
