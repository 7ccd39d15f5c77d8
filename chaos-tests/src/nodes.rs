//! The `wtm run` processes under test: their configuration, start, signals, restart, and what
//! the harness reads from them (the API, peak memory).

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings every node of a run shares.
pub struct Cluster {
    pub wtm: PathBuf,
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub s3_endpoint: String,
    pub bucket: String,
    pub cluster_ports: Vec<u16>,
}

pub struct Node {
    pub index: usize,
    pub dir: PathBuf,
    pub api_port: u16,
    /// The group id the node runs under (a partition fault drops what that group sends).
    pub gid: Option<u32>,
    child: Option<Child>,
    /// Highest peak RSS (VmHWM) seen over every run of this node, in KiB.
    pub peak_rss_kib: u64,
    pub starts: u32,
    /// The node is SIGSTOPped.
    pub frozen: bool,
    /// Down on purpose until a fault ends (its disk is full): not restarted meanwhile.
    pub held_down: bool,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Node {
    pub fn new(index: usize, dir: PathBuf, gid: Option<u32>) -> Node {
        Node {
            index,
            dir,
            api_port: free_port(),
            gid,
            child: None,
            peak_rss_kib: 0,
            starts: 0,
            frozen: false,
            held_down: false,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The node's configuration: Kafka source with a short session timeout (a zombie is one
    /// past it), the lake and snapshots on S3, fast checkpoints, a cluster with every peer.
    fn config(&self, c: &Cluster) -> String {
        let me = c.cluster_ports[self.index];
        let seeds: Vec<String> = c
            .cluster_ports
            .iter()
            .filter(|&&p| p != me)
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!(
            r#"[node]
data_dir = "{data}"
listen = "127.0.0.1:{api}"

[source]
kind = "kafka"
brokers = "{bootstrap}"
topic = "{topic}"
group = "{group}"
format = "json"

[source.kafka]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[window]
idle_timeout_s = 5

[checkpoint]
interval_ms = 500
snapshot_interval_ms = 2000

[lake]
url = "s3://{bucket}/lake"
endpoint = "{endpoint}"
path_style = true
region = "us-east-1"
raw_events = true
flush_interval_ms = 2000

[cluster]
listen = "127.0.0.1:{me}"
seeds = [{seeds}]
cookie = "chaos-cookie"
heartbeat_ms = 500
failure_after_ms = 3000
"#,
            data = self.data_dir().display(),
            api = self.api_port,
            bootstrap = c.bootstrap,
            topic = c.topic,
            group = c.group,
            bucket = c.bucket,
            endpoint = c.s3_endpoint,
            seeds = seeds.join(", "),
        )
    }

    pub fn start(&mut self, c: &Cluster) -> Result<()> {
        std::fs::create_dir_all(self.data_dir())?;
        let cfg = self.dir.join("wtm.toml");
        std::fs::write(&cfg, self.config(c))?;
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))?;
        let mut cmd = Command::new(&c.wtm);
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", crate::services::S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", crate::services::S3_SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(gid) = self.gid {
            use std::os::unix::process::CommandExt;
            cmd.gid(gid);
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("cannot start {}", c.wtm.display()))?,
        );
        self.frozen = false;
        Ok(())
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Still running (a frozen process is running)?
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        let Some(pid) = self.pid() else {
            bail!("node {} is not running", self.index)
        };
        kill(pid, sig)?;
        match sig {
            Signal::SIGSTOP => self.frozen = true,
            Signal::SIGCONT => self.frozen = false,
            _ => {}
        }
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.frozen = false;
    }

    /// Read the peak RSS of the running process into `peak_rss_kib`.
    pub fn sample_rss(&mut self) {
        let Some(pid) = self.pid() else { return };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// GET a JSON document from the node's API.
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent.get(&self.url(path)).call()?;
        let status = resp.status();
        let body = resp.body_mut().read_to_string()?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Wait until the node's API answers `/readyz`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                bail!(
                    "node {} exited during start-up (log: {})",
                    self.index,
                    self.log().display()
                );
            }
            if self.get("/v1/cluster").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("node {} not answering within {timeout:?}", self.index)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.signal(Signal::SIGCONT);
        }
        self.kill();
    }
}

/// Mount a small tmpfs at `dir` (the disk-full fault fills it). Needs root.
pub fn mount_tmpfs(dir: &Path, size_mb: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("cannot mount a tmpfs at {}", dir.display());
    }
    Ok(())
}

pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// Fill the file system holding `dir` (a file of all its free space, less a few KiB: the node
/// writes meanwhile, so the space is measured again for each try); remove the file to give the
/// space back.
pub fn fill(dir: &Path) -> Result<PathBuf> {
    let filler = dir.join("filler");
    for attempt in 1..=20u64 {
        let st = nix::sys::statvfs::statvfs(dir)?;
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        let size = free.saturating_sub(attempt * (64 << 10));
        if size == 0 {
            break;
        }
        let ok = Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(&filler)
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            return Ok(filler);
        }
        let _ = std::fs::remove_file(&filler);
    }
    bail!("cannot fill {}", dir.display())
}
