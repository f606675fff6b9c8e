//! Asynchronous invocations: the durable queue, its group-committing writer, and the
//! dispatcher that runs queued events under each function's concurrency.
//!
//! ```text
//!  Invoke (Event) ──accept──▶ writer ──one transaction per batch──▶ SQLite (async_events)
//!                                │ after the commit
//!                                ▼
//!                     dispatcher (per function: due events, in flight < its share)
//!                                │ spawns
//!                                ▼
//!   attempt: read the event + its config ─▶ resolve ─▶ pool ─▶ retry::decide ─▶ writer
//!            (reschedule, or finish: delete + queue the destination's record, one transaction)
//! ```
//!
//! Every write goes through one writer task that takes whatever has arrived while the last
//! batch committed and commits it in one transaction (one fsync): eight clients accepting at
//! once share commits instead of queueing for one fsync each. The caller hears back only after
//! the commit: an accepted event is on disk before the 202.
//!
//! The dispatcher keeps, per function, the queued events' rows and due times (never their
//! payloads, which are read from the store when an attempt starts) and starts an attempt for a
//! due event while the function has fewer attempts in flight than its share (its reserved
//! concurrency, or the unreserved concurrency). Synchronous invocations compete for the same
//! share in the pool; an attempt the pool throttles backs off (see [`retry`]).
//!
//! At start, every stored event is queued again; one whose attempt was in flight when the
//! agent died runs again (at least once).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

use super::destinations::{self, Destination};
use super::retry::{self, Condition, Next, Outcome, Policy};
use super::{Error as InvokeError, Invoker};
use crate::agent::ids::{self, FunctionRef, Qualifier};
use crate::agent::pool::{InvokeRequest, Pool, PoolError};
use crate::agent::store::outbox::OutMessage;
use crate::agent::store::queue::{EventConfig, LastResponse, NewEvent, QueueWrite, Queued, StoredEvent, Written};
use crate::agent::store::{lock, Store, StoreError};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// How long an event waits after the store failed to read or write it.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store failed.
    #[error("the event could not be stored: {0}")]
    Store(String),
}

type Reply = oneshot::Sender<Result<Written, String>>;

/// What the dispatcher holds for one function.
#[derive(Debug, Default)]
struct FunctionQueue {
    /// Queued events not in flight, by due time then acceptance.
    due: BTreeSet<(u64, i64)>,
    /// Attempts running.
    in_flight: u32,
}

#[derive(Debug, Default)]
struct State {
    functions: HashMap<String, FunctionQueue>,
}

impl State {
    fn add(&mut self, q: Queued) {
        self.functions.entry(q.function).or_default().due.insert((q.due_ms, q.seq));
    }

    /// An attempt of `function` is over; `again` is the event back in the queue.
    fn done(&mut self, function: &str, again: Option<Queued>) {
        if let Some(f) = self.functions.get_mut(function) {
            f.in_flight = f.in_flight.saturating_sub(1);
        }
        if let Some(q) = again {
            self.add(q);
        }
        if self.functions.get(function).is_some_and(|f| f.in_flight == 0 && f.due.is_empty()) {
            self.functions.remove(function);
        }
    }

    /// Takes the events due at `now` that their functions' shares (`share`) let start, and
    /// says when the next one that could start falls due.
    fn take_due(&mut self, now: u64, share: impl Fn(&str) -> u32) -> (Vec<(i64, String)>, Option<u64>) {
        let mut start = Vec::new();
        let mut next: Option<u64> = None;
        for (function, q) in &mut self.functions {
            // At least one at a time, so that a function with no share is still tried, throttled
            // and backed off until its events age out, as Lambda does.
            let cap = share(function).max(1);
            while q.in_flight < cap {
                match q.due.first().copied() {
                    Some((due, seq)) if due <= now => {
                        q.due.pop_first();
                        q.in_flight += 1;
                        start.push((seq, function.clone()));
                    }
                    Some((due, _)) => {
                        next = Some(next.map_or(due, |n| n.min(due)));
                        break;
                    }
                    None => break,
                }
            }
        }
        (start, next)
    }
}

struct Inner {
    store: Arc<Store>,
    invoker: Invoker,
    pool: Pool,
    writes: mpsc::UnboundedSender<(QueueWrite, Reply)>,
    state: Mutex<State>,
    wake: Notify,
    retry_delays: [Duration; 2],
    /// Tells the broker's publisher that the outbox has new messages.
    outbox: Arc<Notify>,
}

/// The asynchronous queue.
#[derive(Clone)]
pub struct AsyncQueue {
    inner: Arc<Inner>,
}

impl AsyncQueue {
    /// Starts the writer and the dispatcher over what `store` holds; `retry_delays` are the
    /// waits before the first and second retry of a function error; `outbox` is told when
    /// messages for the broker were stored.
    pub fn start(
        store: Arc<Store>,
        invoker: Invoker,
        pool: Pool,
        retry_delays: [Duration; 2],
        outbox: Arc<Notify>,
    ) -> Result<AsyncQueue, StoreError> {
        let (writes, rx) = mpsc::unbounded_channel();
        let mut state = State::default();
        let queued = store.queued()?;
        if !queued.is_empty() {
            eprintln!("ember: async: {} queued events resume", queued.len());
        }
        for q in queued {
            state.add(q);
        }
        let inner = Arc::new(Inner {
            store: store.clone(),
            invoker,
            pool,
            writes,
            state: Mutex::new(state),
            wake: Notify::new(),
            retry_delays,
            outbox,
        });
        std::thread::Builder::new()
            .name("ember-queue-writer".into())
            .spawn(move || write_batches(store, rx))
            .map_err(|source| StoreError::Io { what: "start the queue's writer thread".into(), source })?;
        tokio::spawn(dispatch(inner.clone()));
        Ok(AsyncQueue { inner })
    }

    /// Queues an event durably: it is committed when this returns.
    pub async fn accept(&self, event: NewEvent) -> Result<(), QueueError> {
        match self.inner.write(QueueWrite::Accept(event)).await {
            Ok(Written::Accepted(q)) => {
                self.inner.enqueue(q);
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(QueueError::Store(e)),
        }
    }

    /// Makes a schedule's run due at `due_ms` (if it still is): queues `event` and moves the
    /// schedule to `next_ms`, or deletes it, in one transaction. Returns whether an event was
    /// queued.
    pub async fn fire_schedule(
        &self,
        schedule: &str,
        due_ms: u64,
        event: Option<NewEvent>,
        next_ms: Option<u64>,
        delete: bool,
    ) -> Result<bool, QueueError> {
        let write = QueueWrite::Fire { schedule: schedule.to_owned(), due_ms, event, next_ms, delete };
        match self.inner.write(write).await {
            Ok(Written::Fired(queued)) => {
                let ran = queued.is_some();
                if let Some(q) = queued {
                    self.inner.enqueue(q);
                }
                Ok(ran)
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(QueueError::Store(e)),
        }
    }

    /// Events queued and in flight (for tests).
    pub fn backlog(&self) -> usize {
        lock(&self.inner.state).functions.values().map(|f| f.due.len() + f.in_flight as usize).sum()
    }
}

/// The writer answered a write with another write's result (a bug).
fn unexpected(w: &Written) -> QueueError {
    QueueError::Store(format!("unexpected write result {w:?}"))
}

impl Inner {
    /// A stored event joins the dispatcher's queue.
    fn enqueue(&self, q: Queued) {
        lock(&self.state).add(q);
        self.wake.notify_one();
    }

    async fn write(&self, w: QueueWrite) -> Result<Written, String> {
        let (reply, answer) = oneshot::channel();
        self.writes.send((w, reply)).map_err(|_| "the queue's writer has stopped".to_string())?;
        answer.await.map_err(|_| "the queue's writer has stopped".to_string())?
    }

    /// The attempt of `function` is over.
    fn done(&self, function: &str, again: Option<Queued>) {
        lock(&self.state).done(function, again);
        self.wake.notify_one();
    }
}

/// The writer, on a thread of its own: commits what arrived while the last batch committed, in
/// one transaction, and answers each write itself, so that the next batch starts as soon as
/// one commit is over (no hand-off through the runtime between commits).
fn write_batches(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<(QueueWrite, Reply)>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<QueueWrite>, Vec<Reply>) = batch.into_iter().unzip();
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match store.write_queue(&writes) {
            Ok(written) => written.into_iter().map(Ok).collect(),
            // One bad write must not fail the others: each on its own, then.
            Err(_) if writes.len() > 1 => writes
                .iter()
                .map(|w| store.write_queue(std::slice::from_ref(w)).map(|mut v| v.remove(0)).map_err(|e| e.to_string()))
                .collect(),
            Err(e) => vec![Err(e.to_string())],
        }))
        .unwrap_or_else(|_| vec![Err("the queue's writer panicked".to_string()); replies.len()]);
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }
}

/// The dispatcher: starts due events as their functions' shares allow.
async fn dispatch(inner: Arc<Inner>) {
    loop {
        let now = ids::unix_ms();
        let (start, next) = lock(&inner.state).take_due(now, |f| inner.pool.share(f));
        for (seq, function) in start {
            tokio::spawn(attempt(inner.clone(), seq, function));
        }
        match next {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now));
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

/// What one run of the function gave.
enum Ran {
    /// It ran (or was throttled, or failed for want of an instance).
    Outcome(Outcome, Option<LastResponse>),
    /// Its function, version or alias is gone: the event goes too.
    Gone(String),
}

/// Runs one attempt of a queued event and records what follows.
async fn attempt(inner: Arc<Inner>, seq: i64, function: String) {
    let store = inner.store.clone();
    let loaded = tokio::task::spawn_blocking(move || store.queued_event(seq)).await;
    let (event, config) = match loaded {
        Ok(Ok(Some(found))) => found,
        // Deleted with its function, version or alias.
        Ok(Ok(None)) => return inner.done(&function, None),
        Ok(Err(e)) => return retry_later(&inner, seq, &function, &format!("cannot read it: {e}")),
        Err(e) => return retry_later(&inner, seq, &function, &format!("cannot read it: {e}")),
    };
    let config = config.unwrap_or_default();
    let policy = Policy::new(config.max_retries, config.max_age_s, inner.retry_delays);
    let (mut attempts, mut throttles, mut last) = (event.attempts, event.throttles, event.last.clone());
    let next = if policy.expired(event.event.accepted_ms, ids::unix_ms()) {
        Next::Finish(Condition::EventAgeExceeded)
    } else {
        match run(&inner.invoker, &event).await {
            Ran::Gone(why) => {
                eprintln!("ember: async: event {} dropped: {why}", event.event.request_id);
                let w = QueueWrite::Finish { seq, then: None, publish: Vec::new() };
                return match inner.write(w).await {
                    Ok(_) => inner.done(&function, None),
                    Err(e) => retry_later(&inner, seq, &function, &e),
                };
            }
            Ran::Outcome(outcome, response) => {
                match outcome {
                    Outcome::Success | Outcome::FunctionError => {
                        attempts += 1;
                        last = response;
                    }
                    Outcome::Throttled | Outcome::SystemError => throttles += 1,
                }
                retry::decide(&policy, event.event.accepted_ms, attempts, throttles, outcome, ids::unix_ms())
            }
        }
    };
    let (write, condition) = match next {
        Next::Retry { due_ms } => {
            (QueueWrite::Reschedule { seq, due_ms, attempts, throttles, last: last.clone() }, None)
        }
        Next::Finish(condition) => {
            let (then, mut publish) = destination_record(&event, &config, condition, attempts, last.as_ref());
            if condition != Condition::Success {
                publish.extend(dead_letter(&inner.invoker, &event, last.as_ref()));
            }
            (QueueWrite::Finish { seq, then, publish }, Some(condition))
        }
    };
    let due = match &write {
        QueueWrite::Reschedule { due_ms, .. } => Some(*due_ms),
        _ => None,
    };
    match inner.write(write).await {
        Ok(Written::Rescheduled(true)) => {
            inner.done(&function, due.map(|due_ms| Queued { seq, function: function.clone(), due_ms }))
        }
        Ok(Written::Finished(then, published)) => {
            if let Some(c) = condition.filter(|c| *c != Condition::Success) {
                eprintln!(
                    "ember: async: event {} of {}: {} after {attempts} attempts",
                    event.event.request_id,
                    function,
                    c.as_str()
                );
            }
            if published {
                inner.outbox.notify_one();
            }
            if let Some(q) = then {
                inner.enqueue(q);
            }
            inner.done(&function, None)
        }
        Ok(_) => inner.done(&function, None),
        Err(e) => retry_later(&inner, seq, &function, &e),
    }
}

/// The store failed around an attempt: the event stays queued and is tried again shortly
/// (what the store holds is still the truth).
fn retry_later(inner: &Inner, seq: i64, function: &str, why: &str) {
    eprintln!("ember: async: event {seq} of {function}: {why}; trying again in {STORE_RETRY:?}");
    let due_ms = ids::unix_ms() + STORE_RETRY.as_millis() as u64;
    inner.done(function, Some(Queued { seq, function: function.to_owned(), due_ms }));
}

/// Runs the function once with the event.
async fn run(invoker: &Invoker, event: &StoredEvent) -> Ran {
    let e = &event.event;
    let qualifier = match e.qualifier.as_deref().map(Qualifier::parse).transpose() {
        Ok(q) => q,
        Err(err) => return Ran::Gone(err.to_string()),
    };
    let target = match invoker.resolve(&FunctionRef { name: e.function.clone(), qualifier }) {
        Ok(t) => t,
        Err(InvokeError::Store(StoreError::NotFound(why))) => return Ran::Gone(why),
        // Not ready (SnapStart still preparing) or failed: the host's side, tried again later.
        Err(_) => return Ran::Outcome(Outcome::SystemError, None),
    };
    let request = InvokeRequest {
        request_id: e.request_id.clone(),
        function: target.function,
        invoked_arn: target.invoked_arn,
        payload: Bytes::from(e.payload.clone()),
        client_context: e.client_context.clone(),
        want_tail: false,
    };
    match invoker.invoke(request).await {
        Ok(out) => {
            let outcome = if out.function_error.is_some() { Outcome::FunctionError } else { Outcome::Success };
            let last = LastResponse {
                payload: out.payload,
                function_error: out.function_error.map(str::to_string),
                version: out.executed_version.to_string(),
            };
            Ran::Outcome(outcome, Some(last))
        }
        Err(InvokeError::Pool(PoolError::Throttled(_))) => Ran::Outcome(Outcome::Throttled, None),
        Err(_) => Ran::Outcome(Outcome::SystemError, None),
    }
}

/// The record for the destination of an event that ended with `condition`, if it has one:
/// an event for a function destination, or a message for a queue.
fn destination_record(
    event: &StoredEvent,
    config: &EventConfig,
    condition: Condition,
    attempts: u32,
    last: Option<&LastResponse>,
) -> (Option<NewEvent>, Vec<OutMessage>) {
    let arn = match condition {
        Condition::Success => config.on_success.as_deref(),
        Condition::RetriesExhausted | Condition::EventAgeExceeded => config.on_failure.as_deref(),
    };
    let Some(arn) = arn else { return (None, Vec::new()) };
    let e = &event.event;
    let record = || {
        destinations::record(
            condition,
            &e.request_id,
            &destinations::record_arn(&e.function, e.qualifier.as_deref()),
            attempts,
            &e.payload,
            last,
        )
    };
    // A queue destination was accepted only with a broker; an agent restarted without one
    // keeps its messages in the outbox for the next that has one.
    match destinations::parse(arn, true) {
        Ok(Destination::Function(r)) => {
            let event = NewEvent {
                request_id: ids::random_uuid(),
                function: r.name,
                qualifier: r.qualifier.map(|q| q.to_string()),
                payload: record(),
                client_context: None,
                accepted_ms: ids::unix_ms(),
            };
            (Some(event), Vec::new())
        }
        Ok(Destination::Queue(queue)) => {
            let m = OutMessage { queue, message_id: ids::random_uuid(), body: record(), headers: Default::default() };
            (None, vec![m])
        }
        // Checked when configured; a destination this agent cannot deliver to is said once.
        Err(why) => {
            eprintln!("ember: async: the destination of event {} is dropped: {why}", e.request_id);
            (None, Vec::new())
        }
    }
}

/// The most of an error message a dead-letter message carries, as on Lambda.
const DEAD_LETTER_MESSAGE_MAX: usize = 1024;

/// The message for the dead-letter queue of the version that ran `event` (none without
/// one): the original event, with `RequestID`, `ErrorCode` (the status of the last error:
/// 200 for a function error, 429 when it never ran) and `ErrorMessage`.
fn dead_letter(invoker: &Invoker, event: &StoredEvent, last: Option<&LastResponse>) -> Option<OutMessage> {
    let e = &event.event;
    let qualifier = e.qualifier.as_deref().map(Qualifier::parse).transpose().ok()?;
    let target = invoker.resolve(&FunctionRef { name: e.function.clone(), qualifier }).ok()?;
    let queue = match destinations::parse(target.function.dead_letter.as_deref()?, true) {
        Ok(Destination::Queue(queue)) => queue,
        _ => return None,
    };
    let (code, mut message) = match last {
        Some(l) => {
            let text = serde_json::from_slice::<serde_json::Value>(&l.payload)
                .ok()
                .and_then(|v| v.get("errorMessage").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&l.payload).into_owned());
            ("200", text)
        }
        None => ("429", "The event was never run: the function was throttled until the event was too old.".into()),
    };
    if message.len() > DEAD_LETTER_MESSAGE_MAX {
        let mut cut = DEAD_LETTER_MESSAGE_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let headers = [("RequestID", e.request_id.clone()), ("ErrorCode", code.to_owned()), ("ErrorMessage", message)];
    Some(OutMessage {
        queue,
        message_id: ids::random_uuid(),
        body: e.payload.clone(),
        headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::logs::Logs;
    use crate::agent::pool::tests::Fake;
    use crate::agent::pool::PoolConfig;
    use crate::agent::snapshots::Snapshots;
    use crate::agent::store::tests::{new_function, python_zip, temp_dir};
    use serde_json::{json, Value};

    struct Setup {
        store: Arc<Store>,
        pool: Pool,
        fake: Arc<Fake>,
        queue: Option<AsyncQueue>,
        dir: std::path::PathBuf,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const FAST: [Duration; 2] = [Duration::from_millis(10), Duration::from_millis(20)];

    /// Functions `f` and `collector` on a fake pool; the queue not started yet.
    fn setup(name: &str) -> Setup {
        let dir = temp_dir(name);
        let store = Arc::new(Store::open(&dir).unwrap());
        for f in ["f", "collector"] {
            store.create(new_function(f), &python_zip(f), false).unwrap();
        }
        let logs = Logs::open(&dir.join("logs")).unwrap();
        let snapshots = Snapshots::open(&dir.join("snapshots")).unwrap();
        let fake = Arc::new(Fake::default());
        let config = PoolConfig { max_instances: 4, max_boots: 2, idle_memory_kib: u64::MAX };
        let pool = Pool::new(config, logs, snapshots, fake.clone());
        Setup { store, pool, fake, queue: None, dir }
    }

    impl Setup {
        fn start(&mut self) -> AsyncQueue {
            let invoker = Invoker::new(self.store.clone(), self.pool.clone());
            let q = AsyncQueue::start(self.store.clone(), invoker, self.pool.clone(), FAST, Arc::new(Notify::new()))
                .unwrap();
            self.queue = Some(q.clone());
            q
        }

        fn configure(&self, max_retries: Option<u32>, max_age_s: Option<u32>) {
            let collector = ids::function_arn("collector");
            self.store
                .put_event_config(&EventConfig {
                    function: "f".into(),
                    qualifier: "$LATEST".into(),
                    max_retries,
                    max_age_s,
                    on_success: Some(format!("{collector}:$LATEST")),
                    on_failure: Some(collector),
                    last_modified_ms: 0,
                })
                .unwrap();
        }

        /// Waits until the collector has run `n` records; returns them.
        async fn records(&self, n: usize) -> Vec<Value> {
            for _ in 0..1000 {
                let got: Vec<Value> =
                    self.fake.ran().into_iter().filter(|(f, ..)| f == "collector").map(|(_, _, e)| e).collect();
                if got.len() >= n && self.queue.as_ref().unwrap().backlog() == 0 {
                    assert_eq!(got.len(), n, "{got:?}");
                    assert!(self.store.queued().unwrap().is_empty());
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the collector ran {:?}", self.fake.ran());
        }

        /// The request ids `f` ran, in order.
        fn f_ran(&self) -> Vec<String> {
            self.fake.ran().into_iter().filter(|(f, ..)| f == "f").map(|(_, id, _)| id).collect()
        }
    }

    fn event(id: &str, payload: Value, accepted_ms: u64) -> NewEvent {
        NewEvent {
            request_id: id.into(),
            function: "f".into(),
            qualifier: None,
            payload: serde_json::to_vec(&payload).unwrap(),
            client_context: None,
            accepted_ms,
        }
    }

    #[tokio::test]
    async fn a_failing_event_is_retried_with_its_id_then_reaches_on_failure() {
        let mut s = setup("queue-retries");
        s.configure(Some(1), None);
        let q = s.start();
        q.accept(event("ev-1", json!({"fail": true}), ids::unix_ms())).await.unwrap();
        let records = s.records(1).await;
        assert_eq!(s.f_ran(), ["ev-1", "ev-1"]);
        let r = &records[0];
        assert_eq!(r["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(r["requestContext"]["approximateInvokeCount"], 2);
        assert_eq!(r["requestContext"]["requestId"], "ev-1");
        assert_eq!(r["requestContext"]["functionArn"], ids::qualified_arn("f", "$LATEST"));
        assert_eq!(r["requestPayload"], json!({"fail": true}));
        assert_eq!(r["responseContext"]["functionError"], "Unhandled");
        assert_eq!(r["responsePayload"]["errorMessage"], "failed on purpose");
    }

    #[tokio::test]
    async fn a_success_reaches_on_success_with_the_response() {
        let mut s = setup("queue-success");
        s.configure(None, None);
        let q = s.start();
        q.accept(event("ev-ok", json!({"n": 7}), ids::unix_ms())).await.unwrap();
        let records = s.records(1).await;
        assert_eq!(s.f_ran(), ["ev-ok"]);
        assert_eq!(records[0]["requestContext"]["condition"], "Success");
        assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 1);
        assert_eq!(records[0]["responsePayload"], json!({"n": 7}));
        assert_eq!(records[0]["responseContext"], json!({"statusCode": 200, "executedVersion": "$LATEST"}));
    }

    #[tokio::test]
    async fn queue_destinations_and_the_dead_letter_queue_go_to_the_outbox() {
        let s = setup("queue-outbox");
        let queue = |name: &str| format!("arn:aws:sqs:us-east-1:000000000000:{name}");
        s.store
            .put_event_config(&EventConfig {
                function: "f".into(),
                qualifier: "$LATEST".into(),
                max_retries: Some(0),
                on_success: Some(queue("ok")),
                on_failure: Some(queue("failed")),
                ..Default::default()
            })
            .unwrap();
        let patch = crate::agent::store::ConfigPatch { dead_letter: Some(Some(queue("dlq"))), ..Default::default() };
        s.store.update_config("f", patch, None).unwrap();
        let outbox = Arc::new(Notify::new());
        let invoker = Invoker::new(s.store.clone(), s.pool.clone());
        let q = AsyncQueue::start(s.store.clone(), invoker, s.pool.clone(), FAST, outbox.clone()).unwrap();
        q.accept(event("good", json!({"n": 1}), ids::unix_ms())).await.unwrap();
        q.accept(event("bad", json!({"fail": true}), ids::unix_ms())).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while s.store.outbox_len().unwrap() < 3 {
                outbox.notified().await;
            }
        })
        .await
        .expect("three messages for the broker");
        let mut messages: Vec<_> = s.store.outbox(0, 10).unwrap().into_iter().map(|p| p.message).collect();
        messages.sort_by(|a, b| a.queue.cmp(&b.queue));
        let [dlq, failed, ok] = &messages[..] else { panic!("{messages:?}") };
        let record = |m: &OutMessage| serde_json::from_slice::<Value>(&m.body).unwrap();
        assert_eq!(record(ok)["requestContext"]["condition"], "Success");
        assert_eq!(record(ok)["responsePayload"], json!({"n": 1}));
        assert_eq!(record(failed)["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(record(failed)["requestContext"]["requestId"], "bad");
        // The dead letter is the event itself, with Lambda's attributes.
        assert_eq!(record(dlq), json!({"fail": true}));
        assert_eq!(dlq.headers["RequestID"], "bad");
        assert_eq!(dlq.headers["ErrorCode"], "200");
        assert_eq!(dlq.headers["ErrorMessage"], "failed on purpose");
        assert!(s.store.queued().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_event_past_its_age_never_runs() {
        let mut s = setup("queue-age");
        s.configure(None, Some(60));
        let q = s.start();
        q.accept(event("old", json!({}), ids::unix_ms() - 61_000)).await.unwrap();
        let records = s.records(1).await;
        assert!(s.f_ran().is_empty());
        assert_eq!(records[0]["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 0);
        assert!(records[0].get("responseContext").is_none());
    }

    #[tokio::test]
    async fn a_throttled_event_backs_off_until_it_ages_out() {
        let mut s = setup("queue-throttled");
        s.configure(None, Some(60));
        s.pool.set_reserved("f", Some(0));
        let q = s.start();
        // Accepted 59.3 s ago: throttled, backed off (cut at its expiry), then too old.
        q.accept(event("throttled", json!({}), ids::unix_ms() - 59_300)).await.unwrap();
        let records = s.records(1).await;
        assert!(s.f_ran().is_empty());
        assert_eq!(records[0]["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 0);
    }

    #[tokio::test]
    async fn queued_events_and_their_attempts_survive_a_restart() {
        let mut s = setup("queue-restart");
        s.configure(Some(1), None);
        // What an agent that died left: one event that failed once, one never tried.
        let now = ids::unix_ms();
        let written = s
            .store
            .write_queue(&[
                QueueWrite::Accept(event("tried", json!({"fail": true}), now)),
                QueueWrite::Accept(event("fresh", json!({"n": 1}), now)),
            ])
            .unwrap();
        let Written::Accepted(tried) = &written[0] else { panic!() };
        let last = LastResponse {
            payload: b"{}".to_vec(),
            function_error: Some("Unhandled".into()),
            version: "$LATEST".into(),
        };
        s.store
            .write_queue(&[QueueWrite::Reschedule {
                seq: tried.seq,
                due_ms: now,
                attempts: 1,
                throttles: 0,
                last: Some(last),
            }])
            .unwrap();
        s.start();
        let records = s.records(2).await;
        let mut ran = s.f_ran();
        ran.sort();
        assert_eq!(ran, ["fresh", "tried"], "the failed one has one retry left");
        let of = |id: &str| records.iter().find(|r| r["requestContext"]["requestId"] == id).unwrap().clone();
        assert_eq!(of("tried")["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(of("tried")["requestContext"]["approximateInvokeCount"], 2);
        assert_eq!(of("fresh")["requestContext"]["condition"], "Success");
    }

    #[tokio::test]
    async fn a_write_the_store_refuses_fails_alone() {
        let mut s = setup("queue-refused");
        rusqlite::Connection::open(s.dir.join("ember.db"))
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON async_events WHEN NEW.request_id = 'bad' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let q = s.start();
        let (bad, good) = tokio::join!(
            q.accept(event("bad", json!({}), ids::unix_ms())),
            q.accept(event("good", json!({}), ids::unix_ms()))
        );
        assert!(matches!(bad, Err(QueueError::Store(_))));
        good.unwrap();
        for _ in 0..500 {
            if q.backlog() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.f_ran(), ["good"]);
    }

    #[tokio::test]
    async fn many_clients_share_commits_and_every_event_runs_once() {
        let mut s = setup("queue-many");
        let q = s.start();
        let accepts = (0..200).map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.accept(event(&format!("e{i:03}"), json!({"i": i}), ids::unix_ms())).await })
        });
        for a in accepts.collect::<Vec<_>>() {
            a.await.unwrap().unwrap();
        }
        for _ in 0..1000 {
            if q.backlog() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut ran = s.f_ran();
        ran.sort();
        assert_eq!(ran, (0..200).map(|i| format!("e{i:03}")).collect::<Vec<_>>());
        assert!(s.store.queued().unwrap().is_empty());
    }

    fn q(seq: i64, function: &str, due_ms: u64) -> Queued {
        Queued { seq, function: function.into(), due_ms }
    }

    #[test]
    fn due_events_start_within_their_function_s_share_in_order() {
        let mut s = State::default();
        for (seq, due) in [(3, 10), (1, 10), (2, 5), (4, 50)] {
            s.add(q(seq, "f", due));
        }
        s.add(q(5, "g", 0));
        let share = |f: &str| if f == "f" { 2 } else { 0 };
        let (mut start, next) = s.take_due(20, share);
        start.sort();
        // f: two at once (its share), earliest due first; g: one, though its share is 0.
        assert_eq!(start, [(1, "f".to_string()), (2, "f".to_string()), (5, "g".to_string())]);
        // f is full: nothing of it wakes the dispatcher until one is done.
        assert_eq!(next, None);
        s.done("f", None);
        let (start, next) = s.take_due(20, share);
        assert_eq!(start, [(3, "f".to_string())]);
        assert_eq!(next, None);
        s.done("f", None);
        let (start, next) = s.take_due(20, share);
        assert!(start.is_empty());
        assert_eq!(next, Some(50));
        // A retried event goes back with its new time.
        s.done("g", Some(q(5, "g", 30)));
        let (start, next) = s.take_due(20, share);
        assert!(start.is_empty());
        assert_eq!(next, Some(30));
        let (start, _) = s.take_due(60, share);
        assert_eq!(start.len(), 2);
        s.done("f", None);
        s.done("f", None);
        s.done("g", None);
        assert!(s.functions.is_empty(), "{:?}", s.functions);
    }
}
