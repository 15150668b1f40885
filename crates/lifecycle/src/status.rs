use serde::{Deserialize, Serialize};
use std::fmt;

/// The lifecycle status of an intent (AXP lifecycle spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Created,
    Submitted,
    Delivered,
    Acknowledged,
    InProgress,
    Waiting,
    Completed,
    Failed,
    Canceled,
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Created,
        Status::Submitted,
        Status::Delivered,
        Status::Acknowledged,
        Status::InProgress,
        Status::Waiting,
        Status::Completed,
        Status::Failed,
        Status::Canceled,
        Status::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Canceled | Status::TimedOut
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "CREATED",
            Status::Submitted => "SUBMITTED",
            Status::Delivered => "DELIVERED",
            Status::Acknowledged => "ACKNOWLEDGED",
            Status::InProgress => "IN_PROGRESS",
            Status::Waiting => "WAITING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Canceled => "CANCELED",
            Status::TimedOut => "TIMED_OUT",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The transition table of the AXP lifecycle spec. Any non-terminal status may also move
    /// to TIMED_OUT when its deadline passes. `DELIVERED -> DELIVERED` is a redelivery.
    pub fn can_transition_to(self, to: Status) -> bool {
        use Status::*;
        if self.is_terminal() {
            return false;
        }
        if to == TimedOut {
            return true;
        }
        match self {
            Created => to == Submitted,
            Submitted => matches!(to, Delivered | InProgress | Waiting | Failed | Canceled),
            Delivered => matches!(
                to,
                Acknowledged | InProgress | Waiting | Failed | Canceled | Delivered
            ),
            Acknowledged => matches!(to, InProgress | Waiting | Failed | Canceled),
            InProgress => matches!(to, Waiting | Completed | Failed | Canceled),
            Waiting => matches!(to, InProgress | Completed | Failed | Canceled),
            Completed | Failed | Canceled | TimedOut => false,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a WAITING intent waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WaitingReason {
    WaitingForHuman,
    WaitingForTool,
    WaitingForAgent,
    WaitingForTime,
}

impl WaitingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitingReason::WaitingForHuman => "WAITING_FOR_HUMAN",
            WaitingReason::WaitingForTool => "WAITING_FOR_TOOL",
            WaitingReason::WaitingForAgent => "WAITING_FOR_AGENT",
            WaitingReason::WaitingForTime => "WAITING_FOR_TIME",
        }
    }

    pub fn parse(s: &str) -> Option<WaitingReason> {
        [
            WaitingReason::WaitingForHuman,
            WaitingReason::WaitingForTool,
            WaitingReason::WaitingForAgent,
            WaitingReason::WaitingForTime,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}
