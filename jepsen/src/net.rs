//! Hosts as network namespaces: every node gets its own namespace (`ijn<i>`) with one veth
//! (`eth0` inside, `ijv<i>` outside) plugged into the bridge `ijbr0` in the root namespace.
//! The bridge owns 192.168.77.1/24 and node `i` owns 192.168.77.(10+i); the subnet exists only
//! on this bridge and inside these namespaces, and the root namespace's FORWARD chain drops
//! anything routed into or out of the bridge, so the nodes' ports are reachable only from the
//! root namespace (the clients) and from each other.
//!
//! Faults cut real links: partitions are `iptables` DROP rules in the receiving node's own
//! namespace (INPUT, by source address), and delay/loss sits on each node's `eth0` (a netem
//! qdisc, or the harness's NFQUEUE emulator where the kernel has no netem).
//!
//! Everything is created by [`Net::setup`] and removed by [`cleanup`], which is idempotent and
//! also removes what a crashed run left behind (it kills leftover processes in our namespaces).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::linkem::{Impairment, LinkFault};

pub const BRIDGE: &str = "ijbr0";
/// Tag on every rule this harness adds to the root namespace's iptables.
const RULE_TAG: &str = "intentd-jepsen";
/// Upper bound on node count (addresses .11 .. .(10+MAX_NODES), names ijn1..).
pub const MAX_NODES: usize = 9;

pub fn bridge_ip() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, 1)
}

/// Address of node `i` (1-based).
pub fn node_ip(i: usize) -> Ipv4Addr {
    assert!((1..=MAX_NODES).contains(&i), "node index {i} out of range");
    Ipv4Addr::new(192, 168, 77, 10 + i as u8)
}

/// Namespace of node `i` (1-based).
pub fn ns_name(i: usize) -> String {
    format!("ijn{i}")
}

fn veth_host(i: usize) -> String {
    format!("ijv{i}")
}

fn veth_peer(i: usize) -> String {
    format!("ijp{i}")
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, ignoring failure (for cleanup of things that may not exist).
fn cmd_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Runs `program args` inside node `i`'s namespace.
pub fn in_ns(i: usize, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let ns = ns_name(i);
    let mut full = vec!["netns", "exec", ns.as_str(), program];
    full.extend_from_slice(args);
    cmd("ip", &full)
}

/// The root-namespace FORWARD rules: bridged node-to-node traffic passes (it crosses
/// iptables when br_netfilter is loaded), nothing is routed into or out of the bridge.
fn forward_rules() -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]),
        s(&["!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"]),
        s(&["-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"]),
    ]
}

fn tagged(rule: &[String]) -> Vec<String> {
    let mut r = rule.to_vec();
    r.extend(["-m", "comment", "--comment", RULE_TAG].map(String::from));
    r
}

/// The hosts of one run.
pub struct Net {
    pub nodes: usize,
    /// Whether the kernel has `sch_netem`; without it links are impaired by [`Impairment`].
    kernel_netem: bool,
    impaired: std::sync::Mutex<std::collections::HashMap<usize, Impairment>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("nodes", &self.nodes)
            .field("kernel_netem", &self.kernel_netem)
            .finish()
    }
}

impl Net {
    /// Creates the bridge, the namespaces and their links, after removing any leftovers.
    pub fn setup(nodes: usize) -> anyhow::Result<Net> {
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("between 1 and {MAX_NODES} nodes are supported");
        }
        cleanup();
        let mut net = Net {
            nodes,
            kernel_netem: false,
            impaired: Default::default(),
        };
        let bridge_cidr = format!("{}/24", bridge_ip());
        cmd("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        cmd("ip", &["addr", "add", &bridge_cidr, "dev", BRIDGE])?;
        cmd("ip", &["link", "set", BRIDGE, "up"])?;
        for rule in forward_rules() {
            let mut args = vec!["-I".to_string(), "FORWARD".into(), "1".into()];
            args.extend(tagged(&rule));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cmd("iptables", &args)?;
        }
        for i in 1..=nodes {
            let ns = ns_name(i);
            let (host, peer) = (veth_host(i), veth_peer(i));
            cmd("ip", &["netns", "add", &ns])?;
            cmd(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
            )?;
            cmd("ip", &["link", "set", &peer, "netns", &ns])?;
            in_ns(i, "ip", &["link", "set", &peer, "name", "eth0"])?;
            let cidr = format!("{}/24", node_ip(i));
            in_ns(i, "ip", &["addr", "add", &cidr, "dev", "eth0"])?;
            in_ns(i, "ip", &["link", "set", "eth0", "up"])?;
            in_ns(i, "ip", &["link", "set", "lo", "up"])?;
            cmd("ip", &["link", "set", &host, "master", BRIDGE])?;
            cmd("ip", &["link", "set", &host, "up"])?;
        }
        net.kernel_netem = in_ns(1, "tc", &["qdisc", "add", "dev", "lo", "root", "netem"]).is_ok();
        if net.kernel_netem {
            in_ns(1, "tc", &["qdisc", "del", "dev", "lo", "root"])?;
        }
        Ok(net)
    }

    /// Node `to` stops receiving anything from node `from` (one direction; call both ways
    /// for a symmetric cut). Client traffic from the bridge address is untouched.
    pub fn drop_from(&self, to: usize, from: usize) -> anyhow::Result<()> {
        let src = node_ip(from).to_string();
        in_ns(
            to,
            "iptables",
            &["-A", "INPUT", "-s", &src, "-j", "DROP", "-w"],
        )?;
        Ok(())
    }

    /// Cuts every link between the groups: each node receives only from nodes that share a
    /// group with it. `groups` maps node index -> the set of nodes it may hear from.
    pub fn partition(&self, grudge: &[(usize, Vec<usize>)]) -> anyhow::Result<()> {
        for (to, froms) in grudge {
            for from in froms {
                self.drop_from(*to, *from)?;
            }
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 1..=self.nodes {
            in_ns(i, "iptables", &["-F", "INPUT", "-w"])?;
        }
        Ok(())
    }

    /// Delays and drops what node `i` sends: with the kernel's netem qdisc when it has one,
    /// else with the harness's own NFQUEUE emulator. Returns which one is in use.
    pub fn impair(&self, i: usize, fault: LinkFault, seed: u64) -> anyhow::Result<&'static str> {
        self.clear_impairment(i);
        if self.kernel_netem {
            let mut spec = vec!["qdisc", "replace", "dev", "eth0", "root", "netem"];
            let delay = format!("{}ms", fault.delay_ms);
            let jitter = format!("{}ms", fault.jitter_ms);
            let loss = format!("{}%", fault.loss_pct);
            if fault.delay_ms > 0 || fault.jitter_ms > 0 {
                spec.extend(["delay", &delay, &jitter, "distribution", "normal"]);
            }
            if fault.loss_pct > 0 {
                spec.extend(["loss", &loss]);
            }
            in_ns(i, "tc", &spec)?;
            return Ok("tc-netem");
        }
        let impairment = Impairment::start(i, fault, seed)?;
        self.impaired
            .lock()
            .expect("impairments lock")
            .insert(i, impairment);
        Ok("nfqueue")
    }

    /// Ends node `i`'s impairment, if any; returns how many packets the user-space emulator
    /// dropped and delayed.
    pub fn clear_impairment(&self, i: usize) -> Option<(u64, u64)> {
        if self.kernel_netem {
            let _ = in_ns(i, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
            return None;
        }
        let mut held = self.impaired.lock().expect("impairments lock").remove(&i)?;
        if let Err(e) = held.stop() {
            tracing::warn!(node = i, error = %e, "stopping the link emulator");
        }
        Some((
            held.dropped.load(std::sync::atomic::Ordering::Relaxed),
            held.delayed.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    /// Heals partitions and removes every qdisc.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        for i in 1..=self.nodes {
            self.clear_impairment(i);
        }
        self.heal()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Our namespaces that exist now.
fn our_namespaces() -> Vec<String> {
    let list = cmd("ip", &["netns", "list"]).unwrap_or_default();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix("ijn")
                .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect()
}

/// Kills every process inside our namespaces.
pub fn kill_namespace_processes() {
    for ns in our_namespaces() {
        let pids = cmd("ip", &["netns", "pids", &ns]).unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid read from the namespace's process list.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Removes everything this harness may have created: processes in our namespaces, the
/// namespaces, veths, the bridge and the tagged root iptables rules. Idempotent.
pub fn cleanup() {
    kill_namespace_processes();
    for ns in our_namespaces() {
        // Give killed processes a moment to leave before the namespace goes.
        for _ in 0..20 {
            let pids = cmd("ip", &["netns", "pids", &ns]).unwrap_or_default();
            if pids.trim().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        cmd_quiet("ip", &["netns", "del", &ns]);
    }
    for i in 1..=MAX_NODES {
        if std::path::Path::new(&format!("/sys/class/net/{}", veth_host(i))).exists() {
            cmd_quiet("ip", &["link", "del", &veth_host(i)]);
        }
    }
    if std::path::Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
        cmd_quiet("ip", &["link", "del", BRIDGE]);
    }
    // Delete tagged rules until none is left (bounded: a rule may appear more than once).
    for rule in forward_rules() {
        let mut args = vec!["-D".to_string(), "FORWARD".into()];
        args.extend(tagged(&rule));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for _ in 0..16 {
            let ok = Command::new("iptables")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_in_the_private_subnet() {
        assert_eq!(node_ip(1).to_string(), "192.168.77.11");
        assert_eq!(node_ip(5).to_string(), "192.168.77.15");
        assert!(bridge_ip().is_private());
        assert_eq!(ns_name(3), "ijn3");
    }
}
