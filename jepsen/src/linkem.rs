//! A link emulator in user space, for kernels built without `sch_netem`: every packet a node
//! sends out of its `eth0` goes through an NFQUEUE to a thread of the harness (living in that
//! node's network namespace), which drops it with the given probability or holds it for the
//! delay plus normally distributed jitter before letting it go. Like netem with jitter, it
//! reorders packets whose delays cross.
//!
//! The iptables rule carries `--queue-bypass`, so if the harness dies the link just works.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::{Rng as _, SeedableRng as _};

use crate::net::{in_ns, ns_name};

/// The queue number inside each node's namespace (queues are per namespace).
const QUEUE: u16 = 7;
/// Packets the kernel may hold for us before it drops (fail-closed, like a full link).
const QUEUE_MAX_LEN: u32 = 65_536;
/// How often the thread looks for packets whose time has come when nothing arrives.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// What a link does to packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFault {
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub loss_pct: u32,
}

/// A running emulator on one node's link; dropping it without [`Impairment::stop`] leaves the
/// rule in place until the namespace is removed.
pub struct Impairment {
    node: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) delayed: Arc<AtomicU64>,
}

fn rule(add: bool) -> Vec<String> {
    let q = QUEUE.to_string();
    [
        if add { "-A" } else { "-D" },
        "OUTPUT",
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        q.as_str(),
        "--queue-bypass",
        "-w",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Impairment {
    /// Starts impairing node `node`'s outgoing traffic; returns once packets flow through it.
    pub fn start(node: usize, fault: LinkFault, seed: u64) -> anyhow::Result<Impairment> {
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let delayed = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, dropped, delayed) = (stop.clone(), dropped.clone(), delayed.clone());
            std::thread::Builder::new()
                .name(format!("linkem-n{node}"))
                .spawn(move || run(node, fault, seed, &stop, &dropped, &delayed, ready_tx))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let outcome = thread.join();
                bail!("the link emulator of n{node} died while starting: {outcome:?}");
            }
        }
        let args = rule(true);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut me = Impairment {
            node,
            stop,
            thread: Some(thread),
            dropped,
            delayed,
        };
        if let Err(e) = in_ns(node, "iptables", &args) {
            let _ = me.stop();
            return Err(e);
        }
        Ok(me)
    }

    /// Removes the rule, lets every held packet go, and ends the thread.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let args = rule(false);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let removed = in_ns(self.node, "iptables", &args);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(_) => bail!("the link emulator of n{} panicked", self.node),
            }
        }
        removed.map(|_| ())
    }
}

/// A packet held back until `due`; ordered by due time, then arrival.
struct Held {
    due: Instant,
    order: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// The delay of one packet: `delay ± jitter`, normally distributed (Box-Muller), never negative.
fn sample_delay(fault: LinkFault, rng: &mut impl rand::Rng) -> Duration {
    let jitter = if fault.jitter_ms == 0 {
        0.0
    } else {
        let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * fault.jitter_ms as f64
    };
    Duration::from_secs_f64(((fault.delay_ms as f64 + jitter) / 1000.0).max(0.0))
}

fn run(
    node: usize,
    fault: LinkFault,
    seed: u64,
    stop: &AtomicBool,
    dropped: &AtomicU64,
    delayed: &AtomicU64,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let opened = (|| -> anyhow::Result<nfq::Queue> {
        enter_namespace(node)?;
        let mut q = nfq::Queue::open().context("opening an NFQUEUE socket")?;
        q.bind(QUEUE).context("binding the NFQUEUE")?;
        // Headers only: the verdict does not change the packet, so its bytes need not travel.
        q.set_copy_range(QUEUE, 0)?;
        q.set_queue_max_len(QUEUE, QUEUE_MAX_LEN)?;
        q.set_nonblocking(true);
        Ok(q)
    })();
    let mut queue = match opened {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut order = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut idle = true;
        // Take whatever arrived.
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    idle = false;
                    if rng.gen_range(0..100) < fault.loss_pct && !stopping {
                        msg.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(msg)?;
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        msg.set_verdict(nfq::Verdict::Accept);
                        order += 1;
                        let due = Instant::now() + sample_delay(fault, &mut rng);
                        held.push(Reverse(Held { due, order, msg }));
                        delayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the NFQUEUE"),
            }
        }
        // Let go of what is due (everything, when stopping).
        let now = Instant::now();
        while let Some(Reverse(top)) = held.peek() {
            if !stopping && top.due > now {
                break;
            }
            let Reverse(h) = held.pop().expect("peeked");
            queue.verdict(h.msg)?;
            idle = false;
        }
        if stopping && held.is_empty() {
            let _ = queue.unbind(QUEUE);
            return Ok(());
        }
        if idle {
            std::thread::sleep(IDLE_POLL);
        }
    }
}

/// Moves the calling thread into node `node`'s network namespace (sockets it opens then
/// belong there).
fn enter_namespace(node: usize) -> anyhow::Result<()> {
    let path = format!("/run/netns/{}", ns_name(node));
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns into the node's namespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_center_on_the_delay_and_never_go_negative() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let fault = LinkFault {
            delay_ms: 100,
            jitter_ms: 20,
            loss_pct: 0,
        };
        let samples: Vec<f64> = (0..10_000)
            .map(|_| sample_delay(fault, &mut rng).as_secs_f64() * 1000.0)
            .collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 100.0).abs() < 1.0, "mean {mean}");
        let wide = LinkFault {
            delay_ms: 5,
            jitter_ms: 50,
            loss_pct: 0,
        };
        assert!((0..1000).all(|_| sample_delay(wide, &mut rng) >= Duration::ZERO));
    }
}
