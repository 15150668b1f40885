//! The history of a run: every operation's invocation and completion, as
//! recorded by the workload clients and the nemesis, in the order they were
//! observed by the harness.
//!
//! On disk a history is JSON Lines: one [`Op`] per line, in `index` order.
//!
//! Conventions:
//! * a client operation is recorded as an `Invoke` followed (on the same
//!   `process`) by exactly one completion: `Ok` (it happened), `Fail` (it
//!   certainly did not happen) or `Info` (indeterminate: timeout, connection
//!   reset after the request was sent, ...);
//! * observations that are not requests (an event seen on a stream, a final
//!   read) are recorded as a single `Ok` op with no invocation;
//! * nemesis operations have `process == "nemesis"`, kind `Info`, and
//!   `f == "start-<name>"` / `"stop-<name>"`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Completion kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// The operation was started.
    Invoke,
    /// The operation definitely took effect (or the observation was made).
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// Indeterminate: it may or may not have taken effect. Also used for
    /// nemesis operations.
    Info,
}

/// One entry of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, assigned by the recorder, starting at 0.
    pub index: u64,
    /// Logical client ("create-3", "sse-agent-1", "nemesis", ...). A process
    /// has at most one operation in flight.
    pub process: String,
    /// Invoke, Ok, Fail or Info.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// Operation name ("create", "resolve", "read", "start-partition", ...).
    pub f: String,
    /// Operation-specific payload (arguments on invoke, results on completion).
    #[serde(default)]
    pub value: serde_json::Value,
    /// Nanoseconds since the start of the run.
    pub time_ns: u64,
    /// Node the operation was addressed to, if any ("n1", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Op {
    /// Convenience constructor for hand-made histories (index and time are
    /// set by the caller).
    pub fn new(
        process: impl Into<String>,
        kind: OpKind,
        f: impl Into<String>,
        value: serde_json::Value,
    ) -> Self {
        Op {
            index: 0,
            process: process.into(),
            kind,
            f: f.into(),
            value,
            time_ns: 0,
            node: None,
        }
    }

    /// Whether this is a nemesis op.
    pub fn is_nemesis(&self) -> bool {
        self.process == NEMESIS_PROCESS
    }
}

/// Process name used by nemesis operations.
pub const NEMESIS_PROCESS: &str = "nemesis";

/// `f` of the leadership monitor's observations: one node's `/health` view
/// (`{term, leader_id, role}`) whenever its term or leader changed.
pub const LEADERSHIP_F: &str = "leadership";

struct Inner {
    ops: Vec<Op>,
    out: Option<BufWriter<File>>,
}

/// Thread-safe history recorder. Cheap to clone (shared state).
///
/// Every recorded op gets the next index and the time since the recorder was
/// created, and is appended (and flushed) to the JSONL file if one was given.
#[derive(Clone)]
pub struct History {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Default for History {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl History {
    /// A recorder that keeps ops only in memory.
    pub fn in_memory() -> Self {
        History {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                ops: Vec::new(),
                out: None,
            })),
        }
    }

    /// A recorder that also writes every op as one JSON line to `path`
    /// (created or truncated).
    pub fn to_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let f = File::create(path)?;
        Ok(History {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                ops: Vec::new(),
                out: Some(BufWriter::new(f)),
            })),
        })
    }

    /// The instant time 0 refers to.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records an op: assigns index and time and returns the stored copy.
    pub fn record(
        &self,
        process: &str,
        kind: OpKind,
        f: &str,
        value: serde_json::Value,
        node: Option<&str>,
    ) -> Op {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Taking the time under the lock keeps time_ns monotone in index order.
        let op = Op {
            index: inner.ops.len() as u64,
            process: process.to_string(),
            kind,
            f: f.to_string(),
            value,
            time_ns: self.now_ns(),
            node: node.map(str::to_string),
        };
        if let Some(out) = inner.out.as_mut() {
            if let Ok(line) = serde_json::to_string(&op) {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        inner.ops.push(op.clone());
        op
    }

    /// Records an invocation.
    pub fn invoke(
        &self,
        process: &str,
        f: &str,
        value: serde_json::Value,
        node: Option<&str>,
    ) -> Op {
        self.record(process, OpKind::Invoke, f, value, node)
    }

    /// Records a successful completion (or an observation).
    pub fn ok(&self, process: &str, f: &str, value: serde_json::Value, node: Option<&str>) -> Op {
        self.record(process, OpKind::Ok, f, value, node)
    }

    /// Records a definite failure.
    pub fn fail(&self, process: &str, f: &str, value: serde_json::Value, node: Option<&str>) -> Op {
        self.record(process, OpKind::Fail, f, value, node)
    }

    /// Records an indeterminate completion.
    pub fn info(&self, process: &str, f: &str, value: serde_json::Value, node: Option<&str>) -> Op {
        self.record(process, OpKind::Info, f, value, node)
    }

    /// Records the start of a nemesis fault `name` (f = "start-<name>").
    pub fn nemesis_start(&self, name: &str, value: serde_json::Value) -> Op {
        self.record(
            NEMESIS_PROCESS,
            OpKind::Info,
            &format!("start-{name}"),
            value,
            None,
        )
    }

    /// Records the end of a nemesis fault `name` (f = "stop-<name>").
    pub fn nemesis_stop(&self, name: &str, value: serde_json::Value) -> Op {
        self.record(
            NEMESIS_PROCESS,
            OpKind::Info,
            &format!("stop-{name}"),
            value,
            None,
        )
    }

    /// A copy of all ops recorded so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ops
            .clone()
    }

    /// Number of ops recorded so far.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ops
            .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flushes the file writer, if any.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(out) = inner.out.as_mut() {
            out.flush()?;
        }
        Ok(())
    }
}

/// Writes ops as JSON Lines.
pub fn write_jsonl(path: impl AsRef<Path>, ops: &[Op]) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads a JSON Lines history. Blank lines are skipped; a truncated last
/// line (a run killed mid-write) is ignored.
pub fn read_jsonl(path: impl AsRef<Path>) -> anyhow::Result<Vec<Op>> {
    let r = BufReader::new(File::open(path)?);
    let lines: Vec<String> = r.lines().collect::<Result<_, _>>()?;
    let n = lines.len();
    let mut ops = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Op>(line) {
            Ok(op) => ops.push(op),
            Err(_) if i + 1 == n => break,
            Err(e) => anyhow::bail!("history line {}: {e}", i + 1),
        }
    }
    Ok(ops)
}

/// Fault windows `(name, start_ns, end_ns)` from the nemesis ops of a history.
/// A fault never stopped ends at the last op's time.
pub fn nemesis_windows(ops: &[Op]) -> Vec<(String, u64, u64)> {
    let end = ops.iter().map(|o| o.time_ns).max().unwrap_or(0);
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut out = Vec::new();
    for op in ops.iter().filter(|o| o.is_nemesis()) {
        if let Some(name) = op.f.strip_prefix("start-") {
            open.push((name.to_string(), op.time_ns));
        } else if let Some(name) = op.f.strip_prefix("stop-") {
            if let Some(pos) = open.iter().position(|(n, _)| n == name) {
                let (n, s) = open.remove(pos);
                out.push((n, s, op.time_ns));
            }
        }
    }
    for (n, s) in open {
        out.push((n, s, end));
    }
    out.sort_by_key(|w| w.1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let h = History::to_file(&p).unwrap();
        h.invoke("c1", "create", serde_json::json!({"key": "k"}), Some("n1"));
        h.nemesis_start("partition", serde_json::json!({}));
        h.ok("c1", "create", serde_json::json!({"id": "i"}), Some("n1"));
        h.nemesis_stop("partition", serde_json::json!({}));
        h.flush().unwrap();
        let ops = read_jsonl(&p).unwrap();
        assert_eq!(ops, h.snapshot());
        assert_eq!(ops[1].process, "nemesis");
        assert_eq!(ops[1].kind, OpKind::Info);
        assert!(ops.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        let w = nemesis_windows(&ops);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "partition");
    }
}
