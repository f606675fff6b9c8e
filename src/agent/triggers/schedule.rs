//! Schedules (EventBridge Scheduler's CreateSchedule, GetSchedule, UpdateSchedule,
//! DeleteSchedule, ListSchedules, in the `default` group) and the timer that runs them.
//!
//! A schedule's target is a Lambda function (a version or alias by its ARN); a run queues the
//! target's `Input` as an asynchronous event of that function (so the function's own retry
//! rules and destinations apply), in the same transaction that moves the schedule to its next
//! run: a run is made once, crash or not. The next run is stored; after the agent was down, a
//! schedule whose run fell meanwhile runs once, late, when the agent is back (however many
//! runs it missed), then keeps its times. `FlexibleTimeWindow` `FLEXIBLE` delays each run by a
//! random part of its window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use super::expr::{self, Expr};
use crate::agent::ids::{self, FunctionRef};
use crate::agent::invoke::queue::{AsyncQueue, QueueError};
use crate::agent::store::queue::NewEvent;
use crate::agent::store::schedules::Schedule;
use crate::agent::store::{lock, Page, Store, StoreError};

/// The only schedule group.
pub const DEFAULT_GROUP: &str = "default";

/// Why a schedule request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A value the request got wrong (`ValidationException`).
    #[error("{0}")]
    Validation(String),
    /// No such schedule or group.
    #[error("{0}")]
    NotFound(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Our own failure.
    #[error("{0}")]
    Internal(String),
}

fn invalid(m: impl Into<String>) -> ScheduleError {
    ScheduleError::Validation(m.into())
}

/// A create or update, as decoded from the request (shapes checked by the API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleInput {
    /// `Name`.
    pub name: String,
    /// `GroupName`.
    pub group: Option<String>,
    /// `ScheduleExpression`.
    pub expression: String,
    /// `ScheduleExpressionTimezone`.
    pub timezone: Option<String>,
    /// `Target`.
    pub target: Value,
    /// `FlexibleTimeWindow`.
    pub flexible: Value,
    /// `State`.
    pub state: Option<String>,
    /// `StartDate`, Unix ms.
    pub start_ms: Option<u64>,
    /// `EndDate`, Unix ms.
    pub end_ms: Option<u64>,
    /// `Description`.
    pub description: Option<String>,
    /// `ActionAfterCompletion`.
    pub after_completion: Option<String>,
    /// `ClientToken`.
    pub client_token: Option<String>,
}

/// The group a request names: only `default` exists.
pub fn check_group(group: Option<&str>) -> Result<(), ScheduleError> {
    match group {
        None | Some(DEFAULT_GROUP) => Ok(()),
        Some(g) => Err(ScheduleError::NotFound(format!(
            "Schedule group {g} does not exist (this host has the default group only)."
        ))),
    }
}

/// The function a target's ARN names.
fn target_function(target: &Value) -> Result<FunctionRef, ScheduleError> {
    let arn = target["Arn"].as_str().ok_or_else(|| invalid("Target.Arn is required."))?;
    if !arn.starts_with("arn:aws:lambda:") {
        return Err(invalid(format!(
            "Target.Arn {arn}: this host's scheduler invokes Lambda functions only (a function, version or alias ARN)."
        )));
    }
    FunctionRef::parse(arn).map_err(|e| invalid(format!("Target.Arn {arn}: {e}")))
}

/// The flexible window in ms (0 when `OFF`).
fn window_ms(flexible: &Value) -> u64 {
    flexible["MaximumWindowInMinutes"].as_u64().filter(|_| flexible["Mode"] == "FLEXIBLE").unwrap_or(0) * 60_000
}

/// Checks a request's values and makes the schedule (its next run from `now`).
fn build(input: ScheduleInput, created_ms: u64, now: u64) -> Result<Schedule, ScheduleError> {
    check_group(input.group.as_deref())?;
    let name_ok = (1..=64).contains(&input.name.len())
        && input.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(invalid(format!("Name {}: 1 to 64 of [0-9a-zA-Z-_.]", input.name)));
    }
    if input.expression.len() > 256 {
        return Err(invalid("ScheduleExpression: at most 256 characters."));
    }
    let parsed = expr::parse(&input.expression).map_err(|e| invalid(e.to_string()))?;
    expr::time_zone(input.timezone.as_deref()).map_err(invalid)?;
    target_function(&input.target)?;
    if input.target["RoleArn"].as_str().is_none_or(str::is_empty) {
        return Err(invalid("Target.RoleArn is required."));
    }
    if let Some(i) = input.target.get("Input").filter(|i| !i.is_null()) {
        let text = i.as_str().ok_or_else(|| invalid("Target.Input must be a string."))?;
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| invalid(format!("Target.Input must be JSON for a Lambda target: {e}")))?;
    }
    let retry = &input.target["RetryPolicy"];
    if let Some(n) = retry.get("MaximumRetryAttempts").and_then(Value::as_i64) {
        if !(0..=185).contains(&n) {
            return Err(invalid("Target.RetryPolicy.MaximumRetryAttempts must be within 0-185."));
        }
    }
    if let Some(n) = retry.get("MaximumEventAgeInSeconds").and_then(Value::as_i64) {
        if !(60..=86_400).contains(&n) {
            return Err(invalid("Target.RetryPolicy.MaximumEventAgeInSeconds must be within 60-86400."));
        }
    }
    match (input.flexible["Mode"].as_str(), input.flexible.get("MaximumWindowInMinutes").and_then(Value::as_i64)) {
        (Some("OFF"), None) => {}
        (Some("FLEXIBLE"), Some(m)) if (1..=1440).contains(&m) => {}
        (Some("FLEXIBLE"), _) => {
            return Err(invalid("FlexibleTimeWindow.MaximumWindowInMinutes must be within 1-1440."))
        }
        (Some("OFF"), Some(_)) => {
            return Err(invalid("FlexibleTimeWindow.MaximumWindowInMinutes is only for Mode FLEXIBLE."))
        }
        _ => return Err(invalid("FlexibleTimeWindow.Mode must be OFF or FLEXIBLE.")),
    }
    let state = input.state.unwrap_or_else(|| "ENABLED".into());
    if !matches!(state.as_str(), "ENABLED" | "DISABLED") {
        return Err(invalid(format!("State {state}: ENABLED or DISABLED")));
    }
    let after_completion = input.after_completion.unwrap_or_else(|| "NONE".into());
    if !matches!(after_completion.as_str(), "NONE" | "DELETE") {
        return Err(invalid(format!("ActionAfterCompletion {after_completion}: NONE or DELETE")));
    }
    let description = input.description.unwrap_or_default();
    if description.len() > 512 {
        return Err(invalid("Description: at most 512 characters."));
    }
    if let (Some(s), Some(e)) = (input.start_ms, input.end_ms) {
        if e <= s {
            return Err(invalid("The EndDate must come after the StartDate."));
        }
    }
    if input.end_ms.is_some_and(|e| e <= now) {
        return Err(invalid("The EndDate must be in the future."));
    }
    let mut s = Schedule {
        name: input.name,
        group: DEFAULT_GROUP.into(),
        expression: input.expression,
        timezone: input.timezone,
        target: input.target,
        flexible: input.flexible,
        state,
        start_ms: input.start_ms,
        end_ms: input.end_ms,
        description,
        after_completion,
        client_token: input.client_token,
        created_ms,
        modified_ms: now,
        next_ms: None,
    };
    s.next_ms = next_run(&s, &parsed, now);
    Ok(s)
}

/// The first run of an enabled schedule after `after_ms` within its dates; `None` when it has
/// no more.
fn next_run(s: &Schedule, parsed: &Expr, after_ms: u64) -> Option<u64> {
    if s.state != "ENABLED" {
        return None;
    }
    let tz = expr::time_zone(s.timezone.as_deref()).ok()?;
    let anchor = s.start_ms.unwrap_or(s.created_ms);
    let after = match s.start_ms {
        Some(start) => after_ms.max(start.saturating_sub(1)),
        None => after_ms,
    };
    expr::next_after(parsed, tz, anchor, after).filter(|t| s.end_ms.is_none_or(|end| *t <= end))
}

/// The target's event for one run: its `Input` (or `{}`) to its function.
fn target_event(s: &Schedule) -> Option<NewEvent> {
    let r = target_function(&s.target).ok()?;
    let input = s.target["Input"].as_str().unwrap_or("{}");
    Some(NewEvent {
        request_id: ids::random_uuid(),
        function: r.name,
        qualifier: r.qualifier.map(|q| q.to_string()),
        payload: input.as_bytes().to_vec(),
        client_context: None,
        accepted_ms: ids::unix_ms(),
    })
}

/// A schedule's ARN.
pub fn schedule_arn(name: &str) -> String {
    format!("arn:aws:scheduler:{}:{}:schedule/{DEFAULT_GROUP}/{name}", ids::region(), ids::ACCOUNT_ID)
}

struct Inner {
    store: Arc<Store>,
    queue: AsyncQueue,
    /// Per schedule: when its next run fires (its time plus any flexible delay), and the run's
    /// own time.
    timers: Mutex<HashMap<String, (u64, u64)>>,
    wake: Notify,
}

/// The scheduler: the schedules' use cases and the timer that runs them.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Starts the timer over the stored schedules.
    pub fn start(store: Arc<Store>, queue: AsyncQueue) -> Result<Scheduler, StoreError> {
        let pending = store.pending_schedules()?;
        let scheduler = Scheduler {
            inner: Arc::new(Inner { store, queue, timers: Mutex::new(HashMap::new()), wake: Notify::new() }),
        };
        let now = ids::unix_ms();
        for (name, next) in pending {
            if next < now {
                eprintln!("ember: schedule {name}: a run fell while the agent was down; it runs now, once");
            }
            let window = scheduler.inner.store.schedule(&name).map(|s| window_ms(&s.flexible)).unwrap_or(0);
            scheduler.set_timer(&name, Some(next), window);
        }
        tokio::spawn(run(scheduler.inner.clone()));
        Ok(scheduler)
    }

    fn set_timer(&self, name: &str, next: Option<u64>, window_ms: u64) {
        set_timer(&self.inner, name, next, window_ms);
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, ScheduleError> + Send + 'static,
    ) -> Result<T, ScheduleError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| ScheduleError::Internal(format!("internal error: {e}")))?
    }

    /// CreateSchedule.
    pub async fn create(&self, input: ScheduleInput) -> Result<Schedule, ScheduleError> {
        let now = ids::unix_ms();
        let s = build(input, now, now)?;
        let stored = self.blocking(move |st| Ok(st.create_schedule(&s)?)).await?;
        self.set_timer(&stored.name, stored.next_ms, window_ms(&stored.flexible));
        Ok(stored)
    }

    /// UpdateSchedule: replaces everything but the creation date.
    pub async fn update(&self, input: ScheduleInput) -> Result<Schedule, ScheduleError> {
        let now = ids::unix_ms();
        let name = input.name.clone();
        check_group(input.group.as_deref())?;
        // Checked before the write, and again against the stored creation date inside it.
        build(input.clone(), now, now)?;
        let updated = self
            .blocking(move |st| {
                Ok(st.update_schedule(&name, |current| {
                    build(input, current.created_ms, now).map_err(|e| StoreError::Invalid(e.to_string()))
                })?)
            })
            .await?;
        self.set_timer(&updated.name, updated.next_ms, window_ms(&updated.flexible));
        Ok(updated)
    }

    /// GetSchedule.
    pub fn get(&self, name: &str, group: Option<&str>) -> Result<Schedule, ScheduleError> {
        check_group(group)?;
        Ok(self.inner.store.schedule(name)?)
    }

    /// DeleteSchedule.
    pub async fn delete(&self, name: &str, group: Option<&str>) -> Result<(), ScheduleError> {
        check_group(group)?;
        let n = name.to_owned();
        self.blocking(move |st| Ok(st.delete_schedule(&n)?)).await?;
        self.set_timer(name, None, 0);
        Ok(())
    }

    /// ListSchedules.
    pub fn list(
        &self,
        group: Option<&str>,
        prefix: Option<&str>,
        state: Option<&str>,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<Schedule>>, ScheduleError> {
        check_group(group)?;
        if let Some(s) = state.filter(|s| !matches!(*s, "ENABLED" | "DISABLED")) {
            return Err(invalid(format!("State {s}: ENABLED or DISABLED")));
        }
        Ok(self.inner.store.list_schedules(prefix, state, marker, max)?)
    }
}

/// Sets (or with `None` clears) a schedule's timer: its run's time plus a random part of its
/// flexible window.
fn set_timer(inner: &Inner, name: &str, next: Option<u64>, window_ms: u64) {
    let mut timers = lock(&inner.timers);
    match next {
        Some(due) => {
            let delay = if window_ms == 0 { 0 } else { (ids::random_fraction() * window_ms as f64) as u64 };
            timers.insert(name.to_owned(), (due + delay, due));
        }
        None => {
            timers.remove(name);
        }
    }
    drop(timers);
    inner.wake.notify_one();
}

/// The timer: runs what is due, sleeps until the next.
async fn run(inner: Arc<Inner>) {
    loop {
        let now = ids::unix_ms();
        let (due, next): (Vec<(String, u64)>, Option<u64>) = {
            let mut timers = lock(&inner.timers);
            let due: Vec<(String, u64)> =
                timers.iter().filter(|(_, (at, _))| *at <= now).map(|(n, (_, d))| (n.clone(), *d)).collect();
            for (name, _) in &due {
                timers.remove(name);
            }
            (due, timers.values().map(|(at, _)| *at).min())
        };
        for (name, due_ms) in due {
            fire(&inner, &name, due_ms).await;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))) => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

/// Makes the run of `name` due at `due_ms`, if it still is.
async fn fire(inner: &Arc<Inner>, name: &str, due_ms: u64) {
    let store = inner.store.clone();
    let n = name.to_owned();
    let s = match tokio::task::spawn_blocking(move || store.schedule(&n)).await {
        Ok(Ok(s)) => s,
        Ok(Err(StoreError::NotFound(_))) => return,
        Ok(Err(e)) => return retry_later(inner, name, due_ms, &e.to_string()),
        Err(e) => return retry_later(inner, name, due_ms, &e.to_string()),
    };
    if s.next_ms != Some(due_ms) {
        // Changed since: its update set the timer it needs.
        return;
    }
    let Ok(parsed) = expr::parse(&s.expression) else { return };
    let following = next_run(&s, &parsed, ids::unix_ms().max(due_ms));
    let delete = following.is_none() && s.after_completion == "DELETE";
    match inner.queue.fire_schedule(name, due_ms, target_event(&s), following, delete).await {
        Ok(_) => set_timer(inner, name, following, window_ms(&s.flexible)),
        Err(e) => retry_later(inner, name, due_ms, &e.to_string()),
    }
}

/// A run that could not be made is tried again in a second (the store still says it is due).
fn retry_later(inner: &Inner, name: &str, due_ms: u64, why: &str) {
    eprintln!("ember: schedule {name}: its run could not be made ({why}); trying again in 1 s");
    lock(&inner.timers).insert(name.to_owned(), (ids::unix_ms() + 1000, due_ms));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(name: &str, expression: &str) -> ScheduleInput {
        ScheduleInput {
            name: name.into(),
            expression: expression.into(),
            target: json!({ "Arn": ids::function_arn("f"), "RoleArn": "arn:aws:iam::000000000000:role/r", "Input": "{\"k\":1}" }),
            flexible: json!({ "Mode": "OFF" }),
            ..ScheduleInput::default()
        }
    }

    #[test]
    fn requests_are_checked_and_the_first_run_follows_the_expression() {
        let now = 1_800_000_000_000;
        let s = build(input("every", "rate(5 minutes)"), now, now).unwrap();
        assert_eq!(s.next_ms, Some(now + 300_000));
        let later =
            build(ScheduleInput { start_ms: Some(now + 10_000), ..input("later", "rate(5 minutes)") }, now, now);
        assert_eq!(later.unwrap().next_ms, Some(now + 10_000));
        let off = build(ScheduleInput { state: Some("DISABLED".into()), ..input("off", "rate(1 minute)") }, now, now);
        assert_eq!(off.unwrap().next_ms, None);
        let ended = build(ScheduleInput { end_ms: Some(now + 60_000), ..input("short", "rate(5 minutes)") }, now, now);
        assert_eq!(ended.unwrap().next_ms, None, "its first run would fall after its end");
        let bad = |i: ScheduleInput| matches!(build(i, now, now), Err(ScheduleError::Validation(_)));
        assert!(bad(input("x", "rate(5 seconds)")));
        assert!(bad(input("bad name", "rate(1 minute)")));
        assert!(bad(ScheduleInput { timezone: Some("Nowhere/City".into()), ..input("x", "rate(1 minute)") }));
        assert!(bad(ScheduleInput {
            target: json!({ "Arn": "arn:aws:sqs:us-east-1:000000000000:q", "RoleArn": "r" }),
            ..input("x", "rate(1 minute)")
        }));
        assert!(bad(ScheduleInput {
            target: json!({ "Arn": ids::function_arn("f") }),
            ..input("x", "rate(1 minute)")
        }));
        assert!(bad(ScheduleInput {
            target: json!({ "Arn": ids::function_arn("f"), "RoleArn": "r", "Input": "not json" }),
            ..input("x", "rate(1 minute)")
        }));
        assert!(bad(ScheduleInput { flexible: json!({ "Mode": "FLEXIBLE" }), ..input("x", "rate(1 minute)") }));
        assert!(bad(ScheduleInput { after_completion: Some("KEEP".into()), ..input("x", "rate(1 minute)") }));
        assert!(bad(ScheduleInput { start_ms: Some(now + 10), end_ms: Some(now + 5), ..input("x", "rate(1 minute)") }));
        assert!(matches!(
            build(ScheduleInput { group: Some("other".into()), ..input("x", "rate(1 minute)") }, now, now),
            Err(ScheduleError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn runs_queue_their_input_once_and_a_missed_run_runs_once_late() {
        use crate::agent::invoke::Invoker;
        use crate::agent::pool::{tests::Fake, Pool, PoolConfig};
        use crate::agent::store::tests::{new_function, python_zip, temp_dir};
        let dir = temp_dir("scheduler");
        let store = Arc::new(Store::open(&dir).unwrap());
        store.create(new_function("f"), &python_zip("f"), false).unwrap();
        // What an agent that was down left: an hourly schedule whose run fell an hour ago.
        let now = ids::unix_ms();
        let mut missed = input("missed", "rate(1 hour)");
        missed.target["Input"] = json!("{\"run\":\"missed\"}");
        let mut missed = build(missed, now - 7_200_000, now - 7_200_000).unwrap();
        missed.next_ms = Some(now - 3_600_000);
        store.create_schedule(&missed).unwrap();
        let logs = crate::agent::logs::Logs::open(&dir.join("logs")).unwrap();
        let snapshots = crate::agent::snapshots::Snapshots::open(&dir.join("snapshots")).unwrap();
        let fake = Arc::new(Fake::default());
        let config = PoolConfig { max_instances: 4, max_boots: 2, idle_memory_kib: u64::MAX };
        let pool = Pool::new(config, logs, snapshots, fake.clone());
        let invoker = Invoker::new(store.clone(), pool.clone());
        let queue =
            AsyncQueue::start(store.clone(), invoker, pool, [Duration::from_millis(1); 2], Default::default()).unwrap();
        let scheduler = Scheduler::start(store.clone(), queue.clone()).unwrap();
        // A one-time run two seconds ahead, deleted after it; a disabled schedule.
        let at = chrono::DateTime::from_timestamp_millis(ids::unix_ms() as i64 + 2000).unwrap();
        let mut once = input("once", &format!("at({})", at.format("%Y-%m-%dT%H:%M:%S")));
        once.target["Input"] = json!("{\"run\":\"once\"}");
        once.after_completion = Some("DELETE".into());
        scheduler.create(once).await.unwrap();
        let off = ScheduleInput { state: Some("DISABLED".into()), ..input("off", "rate(1 minute)") };
        scheduler.create(off).await.unwrap();
        let mut runs = Vec::new();
        for _ in 0..800 {
            runs = fake.ran().into_iter().map(|(_, _, e)| e["run"].clone()).collect::<Vec<_>>();
            if runs.len() >= 2 && queue.backlog() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(runs, [json!("missed"), json!("once")]);
        assert!(matches!(store.schedule("once"), Err(StoreError::NotFound(_))));
        assert!(store.schedule("missed").unwrap().next_ms.unwrap() > now, "the missed runs are not made up");
        assert_eq!(store.schedule("off").unwrap().next_ms, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_s_event_is_the_target_s_input() {
        let now = 1_800_000_000_000;
        let mut i = input("alias", "rate(1 minute)");
        i.target["Arn"] = json!(ids::qualified_arn("f", "live"));
        let s = build(i, now, now).unwrap();
        let e = target_event(&s).unwrap();
        assert_eq!((e.function.as_str(), e.qualifier.as_deref()), ("f", Some("live")));
        assert_eq!(e.payload, br#"{"k":1}"#);
        assert_eq!(schedule_arn("alias"), "arn:aws:scheduler:us-east-1:000000000000:schedule/default/alias");
    }
}
