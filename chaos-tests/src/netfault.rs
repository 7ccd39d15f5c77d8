//! Network partitions with nftables: every packet a node sends is dropped, matched by the group id
//! its process runs under (`meta skgid`), so one node is cut off from the broker, the S3 API
//! and its peers while everything else on the machine carries on. Needs root and `nft`.
//!
//! Why not network namespaces: the broker and the S3 API listen on 127.0.0.1, which a process
//! in another namespace cannot reach without re-plumbing every service; and why not a TCP
//! proxy: Kafka clients connect to the address the broker advertises, not to the proxy. The
//! node still receives what others send on connections it has (it cannot answer them): to the
//! others it is gone; to the broker it misses heartbeats and loses its session.

use anyhow::{bail, Context, Result};
use std::process::Command;

pub struct Nft {
    table: String,
}

fn nft(args: &str) -> Result<()> {
    let out = Command::new("nft")
        .args(args.split(' '))
        .output()
        .context("cannot run nft")?;
    if !out.status.success() {
        bail!("nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Nft {
    /// A table of this run's own (removed when dropped), if nftables can be used here.
    pub fn new() -> Result<Nft> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("network partitions need root");
        }
        let table = format!("wtm_chaos_{}", std::process::id());
        nft(&format!("add table inet {table}"))?;
        nft(&format!(
            "add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ))?;
        Ok(Nft { table })
    }

    /// Drop every packet sent by processes of group `gid`.
    pub fn isolate(&self, gid: u32) -> Result<()> {
        nft(&format!(
            "add rule inet {} out meta skgid {gid} drop",
            self.table
        ))
    }

    /// Let every packet through again.
    pub fn heal(&self) -> Result<()> {
        nft(&format!("flush chain inet {} out", self.table))
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {}", self.table));
    }
}
