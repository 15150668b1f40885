//! A scenario's workflow as the intent carries it (issue 11, `docs/workflows-design.md`).
//!
//! The steps were validated and normalised at the edge (`scenarios.rs`): ids are unique,
//! `on_success`/`on_failure` name existing steps, every step is reachable from the first and
//! the graph has no cycle. Normalised means the edges are explicit: a bundle whose steps name
//! no edge runs in list order (each step's `on_success` is the next one), and an absent edge
//! ends the workflow (COMPLETED after a success, FAILED after a failure). Apply only walks it.
//!
//! The workflow lives inside the intent, so one record and one CAS token hold all of it and
//! `GET /v1/intents/{id}` shows it whole.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Timestamp;

/// Who or what does a step's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// Delivered to an agent (normalised address); its resume or resolve is the outcome.
    Agent { address: String },
    /// An inbox task for a person (normalised address); approve succeeds, reject fails.
    Human { address: String },
    /// Waits `seconds`, then succeeds.
    Delay { seconds: u64 },
    /// Waits `seconds` for an approval of the step; if none came, fails with `step_timeout`.
    Timeout { seconds: u64 },
    /// After `seconds`, reminds `to` (`intent.reminder_sent`) and succeeds.
    Reminder { seconds: u64, to: String },
    /// After `seconds`, escalates to `to` (`intent.escalated`) and succeeds.
    Escalation { seconds: u64, to: String },
    /// Records its message (the event reaches the sender's webhook subscriptions) and
    /// succeeds at once.
    Notification { message: Option<Value> },
    /// A `tool_id` step with no agent to run it: intentd executes no tools, so it succeeds
    /// at once (the apply answer warned about it).
    Tool { tool_id: String },
}

impl StepKind {
    /// The time the step waits for before its timer acts, for the timer kinds.
    pub fn timer_seconds(&self) -> Option<u64> {
        match self {
            StepKind::Delay { seconds }
            | StepKind::Timeout { seconds }
            | StepKind::Reminder { seconds, .. }
            | StepKind::Escalation { seconds, .. } => Some(*seconds),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Agent { .. } => "agent",
            StepKind::Human { .. } => "human",
            StepKind::Delay { .. } => "delay",
            StepKind::Timeout { .. } => "timeout",
            StepKind::Reminder { .. } => "reminder",
            StepKind::Escalation { .. } => "escalation",
            StepKind::Notification { .. } => "notification",
            StepKind::Tool { .. } => "tool",
        }
    }
}

/// Where a step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Active,
    Succeeded,
    Failed,
    /// The workflow ended (canceled, timed out, dead-lettered) while the step was active.
    Skipped,
}

/// One step: its validated spec and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStep {
    pub step_id: String,
    pub kind: StepKind,
    /// Seconds an attempt may stay active before it fails with `step_timeout`.
    #[serde(default)]
    pub step_deadline_seconds: Option<u64>,
    /// Attempts after the first one a failure may start (`retry.max_retries`).
    #[serde(default)]
    pub max_retries: u32,
    /// Seconds between a failed attempt and the next one (`retry.retry_delay_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_seconds: Option<u64>,
    /// The task a human step shows (`human_task`; a title is always there).
    #[serde(default)]
    pub human_task: Option<Value>,
    #[serde(default)]
    pub remind_after_seconds: Option<u64>,
    #[serde(default)]
    pub remind_interval_seconds: Option<u64>,
    #[serde(default)]
    pub max_reminders: Option<u32>,
    /// Normalised address a human step's reminders escalate to.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// The next step after a success; `None` completes the workflow.
    #[serde(default)]
    pub on_success: Option<String>,
    /// The next step after a failure; `None` fails the workflow.
    #[serde(default)]
    pub on_failure: Option<String>,
    pub state: StepState,
    /// 0 until the step first starts; each retry adds one.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// When the active attempt fails with `step_timeout`.
    #[serde(default)]
    pub deadline_at: Option<Timestamp>,
    /// When the timer of a built-in step acts.
    #[serde(default)]
    pub timer_at: Option<Timestamp>,
    /// When the attempt in `attempt` starts: set while a retry waits out its delay (the step
    /// is active, nothing of it runs yet), cleared by the tick that starts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// What the step ended with: the agent's result, the person's answer, or the error.
    #[serde(default)]
    pub outcome: Option<Value>,
}

impl WorkflowStep {
    /// A step as the edge validated it, not started yet.
    pub fn new(step_id: String, kind: StepKind) -> Self {
        WorkflowStep {
            step_id,
            kind,
            step_deadline_seconds: None,
            max_retries: 0,
            retry_delay_seconds: None,
            human_task: None,
            remind_after_seconds: None,
            remind_interval_seconds: None,
            max_reminders: None,
            escalate_to: None,
            on_success: None,
            on_failure: None,
            state: StepState::Pending,
            attempt: 0,
            started_at: None,
            finished_at: None,
            deadline_at: None,
            timer_at: None,
            retry_at: None,
            outcome: None,
        }
    }

    /// The earliest time the engine must tick this step, while it is active.
    pub fn due_at(&self) -> Option<Timestamp> {
        if self.state != StepState::Active {
            return None;
        }
        if self.retry_at.is_some() {
            return self.retry_at;
        }
        match (self.deadline_at, self.timer_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The workflow of an intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub steps: Vec<WorkflowStep>,
    /// The active step; `None` once the workflow ended.
    #[serde(default)]
    pub current: Option<String>,
}

impl Workflow {
    /// A workflow about to start at its first step.
    pub fn new(steps: Vec<WorkflowStep>) -> Self {
        Workflow {
            steps,
            current: None,
        }
    }

    pub fn step(&self, id: &str) -> Option<&WorkflowStep> {
        self.steps.iter().find(|s| s.step_id == id)
    }

    pub fn step_mut(&mut self, id: &str) -> Option<&mut WorkflowStep> {
        self.steps.iter_mut().find(|s| s.step_id == id)
    }

    /// The active step, if the workflow runs.
    pub fn active(&self) -> Option<&WorkflowStep> {
        self.current
            .as_deref()
            .and_then(|id| self.step(id))
            .filter(|s| s.state == StepState::Active)
    }

    /// The workflow's due time (the active step's).
    pub fn due_at(&self) -> Option<Timestamp> {
        self.active().and_then(WorkflowStep::due_at)
    }
}

/// Why a workflow's graph is refused at apply time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("workflow.steps needs at least one step")]
    Empty,
    #[error("workflow step id {0:?} is used twice")]
    DuplicateId(String),
    #[error("workflow step {from:?} names {edge} {to:?}, which is not a step of this workflow")]
    UnknownStep {
        from: String,
        edge: &'static str,
        to: String,
    },
    #[error("workflow step {0:?} cannot be reached from the first step")]
    Unreachable(String),
    #[error("workflow steps form a cycle: {}; use a step's retry policy to run it again", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Checks the graph of `steps` and makes its edges explicit: when no step names
/// `on_success` or `on_failure`, each step's `on_success` becomes the next one in the list.
pub fn normalise(steps: &mut [WorkflowStep]) -> Result<(), GraphError> {
    if steps.is_empty() {
        return Err(GraphError::Empty);
    }
    for (i, s) in steps.iter().enumerate() {
        if steps[..i].iter().any(|o| o.step_id == s.step_id) {
            return Err(GraphError::DuplicateId(s.step_id.clone()));
        }
    }
    if steps
        .iter()
        .all(|s| s.on_success.is_none() && s.on_failure.is_none())
    {
        let ids: Vec<String> = steps.iter().map(|s| s.step_id.clone()).collect();
        for (s, next) in steps.iter_mut().zip(ids.into_iter().skip(1)) {
            s.on_success = Some(next);
        }
    }
    let index = |id: &str| steps.iter().position(|s| s.step_id == id);
    let mut edges: Vec<Vec<usize>> = Vec::with_capacity(steps.len());
    for s in steps.iter() {
        let mut out = Vec::new();
        for (edge, to) in [("on_success", &s.on_success), ("on_failure", &s.on_failure)] {
            if let Some(to) = to {
                let j = index(to).ok_or_else(|| GraphError::UnknownStep {
                    from: s.step_id.clone(),
                    edge,
                    to: to.clone(),
                })?;
                out.push(j);
            }
        }
        edges.push(out);
    }
    // Depth-first from the first step: grey nodes are on the path, so an edge to one closes
    // a cycle; whatever stays white was never reached.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour = vec![Colour::White; steps.len()];
    let mut path: Vec<usize> = vec![0];
    let mut next_edge: Vec<usize> = vec![0];
    colour[0] = Colour::Grey;
    while let Some(&node) = path.last() {
        let k = next_edge
            .last_mut()
            .expect("one edge cursor per path entry");
        if let Some(&to) = edges[node].get(*k) {
            *k += 1;
            match colour[to] {
                Colour::Grey => {
                    let from = path.iter().position(|&n| n == to).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..]
                        .iter()
                        .map(|&n| steps[n].step_id.clone())
                        .collect();
                    cycle.push(steps[to].step_id.clone());
                    return Err(GraphError::Cycle(cycle));
                }
                Colour::White => {
                    colour[to] = Colour::Grey;
                    path.push(to);
                    next_edge.push(0);
                }
                Colour::Black => {}
            }
        } else {
            colour[node] = Colour::Black;
            path.pop();
            next_edge.pop();
        }
    }
    if let Some(i) = colour.iter().position(|c| *c == Colour::White) {
        return Err(GraphError::Unreachable(steps[i].step_id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(spec: &[(&str, Option<&str>, Option<&str>)]) -> Vec<WorkflowStep> {
        spec.iter()
            .map(|(id, ok, ko)| {
                let mut s = WorkflowStep::new(
                    id.to_string(),
                    StepKind::Tool {
                        tool_id: "t".into(),
                    },
                );
                s.on_success = ok.map(str::to_string);
                s.on_failure = ko.map(str::to_string);
                s
            })
            .collect()
    }

    #[test]
    fn without_edges_the_list_order_is_the_graph() {
        let mut s = steps(&[("a", None, None), ("b", None, None), ("c", None, None)]);
        normalise(&mut s).unwrap();
        let next: Vec<Option<&str>> = s.iter().map(|s| s.on_success.as_deref()).collect();
        assert_eq!(next, [Some("b"), Some("c"), None]);
        assert!(s.iter().all(|s| s.on_failure.is_none()));
    }

    #[test]
    fn a_graph_with_edges_keeps_them() {
        let mut s = steps(&[
            ("a", Some("c"), Some("b")),
            ("b", None, None),
            ("c", None, None),
        ]);
        normalise(&mut s).unwrap();
        assert_eq!(s[1].on_success, None);
        assert_eq!(s[0].on_success.as_deref(), Some("c"));
    }

    #[test]
    fn broken_graphs_are_refused_with_the_reason() {
        let cases: Vec<(Vec<WorkflowStep>, GraphError)> = vec![
            (Vec::new(), GraphError::Empty),
            (
                steps(&[("a", None, None), ("a", None, None)]),
                GraphError::DuplicateId("a".into()),
            ),
            (
                steps(&[("a", Some("x"), None)]),
                GraphError::UnknownStep {
                    from: "a".into(),
                    edge: "on_success",
                    to: "x".into(),
                },
            ),
            (
                steps(&[("a", None, Some("c")), ("b", None, None), ("c", None, None)]),
                GraphError::Unreachable("b".into()),
            ),
            (
                steps(&[
                    ("a", Some("b"), None),
                    ("b", Some("c"), None),
                    ("c", None, Some("b")),
                ]),
                GraphError::Cycle(vec!["b".into(), "c".into(), "b".into()]),
            ),
            (
                steps(&[("a", Some("a"), None)]),
                GraphError::Cycle(vec!["a".into(), "a".into()]),
            ),
        ];
        for (mut s, want) in cases {
            assert_eq!(normalise(&mut s), Err(want));
        }
    }

    #[test]
    fn a_diamond_is_not_a_cycle() {
        let mut s = steps(&[
            ("a", Some("b"), Some("c")),
            ("b", Some("d"), None),
            ("c", Some("d"), None),
            ("d", None, None),
        ]);
        assert_eq!(normalise(&mut s), Ok(()));
    }
}
