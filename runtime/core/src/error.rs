//! Whether a failure is worth retrying: every error that crosses a crate boundary says so, and
//! the supervisor gives up at once on a permanent one instead of spending its restart budget.

/// How a failure behaves if the same thing is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// May succeed later: a network or disk hiccup, a store that is down, an actor restarting.
    Transient,
    /// Fails the same way every time until an operator acts: an unreadable checkpoint format,
    /// denied credentials, a missing bucket, a bad setting.
    Permanent,
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Transient
    }
}
