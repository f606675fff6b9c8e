//! What happens to an asynchronous event after an attempt, as Lambda decides it: pure, so that
//! every path is unit-tested without a clock or a VM.
//!
//! - A function error is retried up to `MaximumRetryAttempts` (0-2, default 2) more times, the
//!   first about a minute later and the second about two (the waits are the policy's, so that
//!   tests can shorten them).
//! - A throttle or a system error (no instance could be had, the instance was lost) goes back
//!   to the queue with exponential backoff, 1 s doubling up to 5 min, without using up a retry.
//! - Nothing runs once the event is older than `MaximumEventAgeInSeconds` (60-21600, default
//!   21600): it ends as `EventAgeExceeded`. A wait never goes past that age: the event is due
//!   at its expiry, and ends then.

use std::time::Duration;

/// `MaximumRetryAttempts` when none is configured.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// `MaximumEventAgeInSeconds` when none is configured.
pub const DEFAULT_MAX_AGE_S: u32 = 21_600;
/// Lambda's waits before the first and the second retry of a function error.
pub const DEFAULT_RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];
/// The first backoff after a throttle or a system error.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How one event is retried: its qualifier's config over the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Retries after a function error.
    pub max_retries: u32,
    /// The event's maximum age, in ms.
    pub max_age_ms: u64,
    /// The waits before the first and second retry.
    pub retry_delays: [Duration; 2],
}

impl Policy {
    /// The policy of a config's values (`None`: Lambda's default) with the host's retry waits.
    pub fn new(max_retries: Option<u32>, max_age_s: Option<u32>, retry_delays: [Duration; 2]) -> Policy {
        Policy {
            max_retries: max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            max_age_ms: u64::from(max_age_s.unwrap_or(DEFAULT_MAX_AGE_S)) * 1000,
            retry_delays,
        }
    }

    /// When an event accepted at `accepted_ms` expires.
    pub fn expiry_ms(&self, accepted_ms: u64) -> u64 {
        accepted_ms.saturating_add(self.max_age_ms)
    }

    /// Whether an event accepted at `accepted_ms` may no longer run at `now_ms`.
    pub fn expired(&self, accepted_ms: u64, now_ms: u64) -> bool {
        now_ms >= self.expiry_ms(accepted_ms)
    }
}

/// How an attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The function returned.
    Success,
    /// The function raised, timed out or crashed.
    FunctionError,
    /// Over the function's concurrency.
    Throttled,
    /// The host could not run it (no instance, the instance lost around it).
    SystemError,
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The function succeeded.
    Success,
    /// Every retry of a function error was used.
    RetriesExhausted,
    /// The event grew older than its maximum age.
    EventAgeExceeded,
}

impl Condition {
    /// As the invocation record names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// What to do next with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time (Unix ms).
    Retry {
        /// When.
        due_ms: u64,
    },
    /// It is over.
    Finish(Condition),
}

/// The backoff after the `n`th throttle or system error (1-based): 1 s, 2 s, 4 s, ... 5 min.
pub fn backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    (BACKOFF_MIN * (1u32 << doublings)).min(BACKOFF_MAX)
}

/// Decides after an attempt at `now_ms` of an event accepted at `accepted_ms`; `attempts` is
/// how many attempts ran the function, this one included, and `throttles` how many did not
/// get to run it, this one included.
pub fn decide(p: &Policy, accepted_ms: u64, attempts: u32, throttles: u32, outcome: Outcome, now_ms: u64) -> Next {
    let expiry = p.expiry_ms(accepted_ms);
    let wait = |d: Duration| Next::Retry { due_ms: now_ms.saturating_add(d.as_millis() as u64).min(expiry) };
    match outcome {
        Outcome::Success => Next::Finish(Condition::Success),
        Outcome::FunctionError if attempts > p.max_retries => Next::Finish(Condition::RetriesExhausted),
        _ if p.expired(accepted_ms, now_ms) => Next::Finish(Condition::EventAgeExceeded),
        Outcome::FunctionError => wait(p.retry_delays[(attempts.max(1) as usize - 1).min(1)]),
        Outcome::Throttled | Outcome::SystemError => wait(backoff(throttles)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn policy(max_retries: Option<u32>, max_age_s: Option<u32>) -> Policy {
        Policy::new(max_retries, max_age_s, DEFAULT_RETRY_DELAYS)
    }

    #[test]
    fn function_errors_are_retried_a_minute_then_two_later() {
        let p = policy(None, None);
        assert_eq!(decide(&p, 0, 1, 0, Outcome::FunctionError, 5 * S), Next::Retry { due_ms: 65 * S });
        assert_eq!(decide(&p, 0, 2, 0, Outcome::FunctionError, 70 * S), Next::Retry { due_ms: 190 * S });
        assert_eq!(decide(&p, 0, 3, 0, Outcome::FunctionError, 200 * S), Next::Finish(Condition::RetriesExhausted));
        assert_eq!(decide(&p, 0, 3, 0, Outcome::Success, 200 * S), Next::Finish(Condition::Success));
    }

    #[test]
    fn the_retry_count_is_the_config_s() {
        let none = policy(Some(0), None);
        assert_eq!(decide(&none, 0, 1, 0, Outcome::FunctionError, S), Next::Finish(Condition::RetriesExhausted));
        let one = policy(Some(1), None);
        assert_eq!(decide(&one, 0, 1, 0, Outcome::FunctionError, S), Next::Retry { due_ms: 61 * S });
        assert_eq!(decide(&one, 0, 2, 0, Outcome::FunctionError, S), Next::Finish(Condition::RetriesExhausted));
        // Throttles before do not use up retries.
        assert_eq!(decide(&one, 0, 1, 7, Outcome::FunctionError, S), Next::Retry { due_ms: 61 * S });
    }

    #[test]
    fn shortened_waits_change_only_the_waits() {
        let p = Policy::new(Some(2), None, [Duration::from_secs(1), Duration::from_secs(2)]);
        assert_eq!(decide(&p, 0, 1, 0, Outcome::FunctionError, 0), Next::Retry { due_ms: S });
        assert_eq!(decide(&p, 0, 2, 0, Outcome::FunctionError, S), Next::Retry { due_ms: 3 * S });
        assert_eq!(decide(&p, 0, 3, 0, Outcome::FunctionError, 3 * S), Next::Finish(Condition::RetriesExhausted));
    }

    #[test]
    fn throttles_back_off_exponentially_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
        let p = policy(None, None);
        assert_eq!(decide(&p, 0, 0, 1, Outcome::Throttled, 10 * S), Next::Retry { due_ms: 11 * S });
        assert_eq!(decide(&p, 0, 0, 3, Outcome::SystemError, 10 * S), Next::Retry { due_ms: 14 * S });
    }

    #[test]
    fn no_wait_goes_past_the_maximum_age_and_an_old_event_ends() {
        let p = policy(Some(2), Some(60));
        // Throttled for a minute: the backoffs end at the expiry, then the event ends.
        let mut now = 0;
        let mut throttles = 0;
        let end = loop {
            throttles += 1;
            match decide(&p, 0, 0, throttles, Outcome::Throttled, now) {
                Next::Retry { due_ms } => {
                    assert!(due_ms <= 60 * S && due_ms > now);
                    now = due_ms;
                }
                Next::Finish(c) => break c,
            }
        };
        assert_eq!((end, now), (Condition::EventAgeExceeded, 60 * S));
        assert_eq!(throttles, 7, "1+2+4+8+16+32 s, then cut at 60 s");
        // A function error's retry wait is cut at the expiry too.
        assert_eq!(decide(&p, 0, 1, 0, Outcome::FunctionError, 30 * S), Next::Retry { due_ms: 60 * S });
        assert_eq!(decide(&p, 0, 2, 0, Outcome::FunctionError, 60 * S), Next::Finish(Condition::EventAgeExceeded));
        // Exhausted retries say so even when old.
        assert_eq!(decide(&p, 0, 3, 0, Outcome::FunctionError, 90 * S), Next::Finish(Condition::RetriesExhausted));
        assert!(p.expired(0, 60 * S) && !p.expired(0, 60 * S - 1));
    }
}
