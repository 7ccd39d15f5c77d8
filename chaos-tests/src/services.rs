//! The real services a run needs, started and stopped by the project's own `scripts/` (a broker
//! restart or an S3 outage is the same script run again on the same data directory), and what
//! the harness asks the broker directly: the topic, its end offsets and the group's commits.

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// S3 credentials of the local S3 API (scripts/s3's defaults), also given to the nodes.
pub const S3_KEY: &str = "wtm";
pub const S3_SECRET: &str = "wtm-secret-key";

/// A service run by one of `scripts/`: `start --data-dir D [--port P]` prints `name=value`
/// lines; `stop --data-dir D` stops it by PID.
pub struct Service {
    script: PathBuf,
    dir: PathBuf,
    /// The `key=` line `start` prints (`bootstrap` / `endpoint`), and the port it holds.
    key: &'static str,
    pub address: String,
    port: Option<u16>,
    pub running: bool,
}

impl Service {
    pub fn kafka(root: &Path, dir: &Path) -> Service {
        Service::new(root.join("scripts/kafka"), dir, "bootstrap")
    }

    pub fn s3(root: &Path, dir: &Path) -> Service {
        Service::new(root.join("scripts/s3"), dir, "endpoint")
    }

    fn new(script: PathBuf, dir: &Path, key: &'static str) -> Service {
        Service {
            script,
            dir: dir.to_owned(),
            key,
            address: String::new(),
            port: None,
            running: false,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.script);
        cmd.args(["start", "--data-dir"]).arg(&self.dir);
        if let Some(p) = self.port {
            cmd.args(["--port", &p.to_string()]);
        }
        let out = cmd
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .output()
            .with_context(|| format!("cannot run {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "{} start failed: {}",
                self.script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{}=", self.key);
        self.address = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .with_context(|| format!("{} printed no {prefix}", self.script.display()))?
            .to_owned();
        self.port = self.address.rsplit(':').next().and_then(|p| p.parse().ok());
        self.running = true;
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        let status = Command::new(&self.script)
            .args(["stop", "--data-dir"])
            .arg(&self.dir)
            .status()
            .with_context(|| format!("cannot run {}", self.script.display()))?;
        if !status.success() {
            bail!("{} stop failed", self.script.display());
        }
        self.running = false;
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop();
        }
    }
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "5000");
    c
}

/// Create `topic` with `partitions` partitions.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: u32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let results = rt.block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for r in results {
        if let Err((name, e)) = r {
            bail!("cannot create topic {name}: {e}");
        }
    }
    Ok(())
}

/// Reads a topic's end offsets and a group's committed offsets, without joining the group.
pub struct OffsetsProbe {
    consumer: BaseConsumer,
    topic: String,
    partitions: u32,
}

impl OffsetsProbe {
    pub fn new(bootstrap: &str, topic: &str, group: &str, partitions: u32) -> Result<Self> {
        let consumer: BaseConsumer = config(bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(OffsetsProbe {
            consumer,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// End offset (the next offset to be written) of every partition.
    pub fn end_offsets(&self) -> Result<BTreeMap<u32, u64>> {
        (0..self.partitions)
            .map(|p| {
                let (_, high) = self.consumer.fetch_watermarks(
                    &self.topic,
                    p as i32,
                    Duration::from_secs(5),
                )?;
                Ok((p, high.max(0) as u64))
            })
            .collect()
    }

    /// The group's committed offset of every partition that has one.
    pub fn committed(&self) -> Result<BTreeMap<u32, u64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p as i32);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(5))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some((e.partition() as u32, o as u64)),
                _ => None,
            })
            .collect())
    }
}
