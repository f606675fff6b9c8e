//! Event source mappings at work: a consumer per enabled mapping takes deliveries from its
//! queue, gathers them into batches (up to `BatchSize` messages, waiting up to
//! `MaximumBatchingWindowInSeconds` for them, and never more than [`MAX_BATCH_BODY`] bytes
//! of bodies), and runs the function with each batch as Lambda's SQS event, up to
//! `ScalingConfig.MaximumConcurrency` batches at once.
//!
//! A message is acknowledged only after the function has handled it: the whole batch when
//! the function succeeds, all but the failed items when it reports `batchItemFailures`. What
//! failed goes back to the queue (rejected, with requeue) after
//! [`RETURN_DELAY`], which stands in for SQS's visibility timeout; a queue with a delivery
//! limit (a quorum queue's `x-delivery-limit`) then dead-letters a message that keeps failing
//! to its dead-letter exchange, as the broker is configured. Deliveries in flight when the
//! connection drops, or when the agent dies, come back from the broker (at least once).
//!
//! A supervisor keeps one consumer per enabled mapping, as the store holds them: it looks
//! again whenever the API changes a mapping ([`Consumers::changed`]) and every few seconds
//! (a function deleted with its mappings).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use super::sqs::{self, Attribute, Failed};
use super::{backoff, queue_name, Broker, BrokerError};
use crate::agent::ids::{self, FunctionRef, Qualifier};
use crate::agent::invoke::Invoker;
use crate::agent::pool::InvokeRequest;
use crate::agent::store::mappings::Mapping;
use crate::agent::store::{lock, Store, StoreError};

/// Batches a mapping runs at once without `ScalingConfig.MaximumConcurrency` (Lambda starts
/// with five pollers).
pub const DEFAULT_CONCURRENCY: u32 = 5;
/// The most bytes of bodies in one batch: the SQS event around them must stay under the
/// 6 MB invoke payload limit.
pub const MAX_BATCH_BODY: usize = 4 * 1024 * 1024;
/// How long a failed message is held before it goes back to the queue.
pub const RETURN_DELAY: Duration = Duration::from_secs(1);
/// How often the supervisor looks at the store without being told.
const RECHECK: Duration = Duration::from_secs(5);

/// `LastProcessingResult` of a mapping.
pub const NO_RECORDS: &str = "No records processed";

struct Inner {
    store: Arc<Store>,
    broker: Arc<Broker>,
    invoker: Invoker,
    wake: Notify,
    /// `LastProcessingResult` by mapping.
    results: Mutex<HashMap<String, &'static str>>,
}

/// The mappings' consumers.
#[derive(Clone)]
pub struct Consumers {
    inner: Arc<Inner>,
}

impl Consumers {
    /// Starts the supervisor, which starts a consumer for every enabled mapping.
    pub fn start(store: Arc<Store>, broker: Arc<Broker>, invoker: Invoker) -> Consumers {
        let inner =
            Arc::new(Inner { store, broker, invoker, wake: Notify::new(), results: Mutex::new(HashMap::new()) });
        tokio::spawn(supervise(inner.clone()));
        Consumers { inner }
    }

    /// A mapping was created, changed or deleted.
    pub fn changed(&self) {
        self.inner.wake.notify_one();
    }

    /// A mapping's `LastProcessingResult`.
    pub fn last_result(&self, uuid: &str) -> &'static str {
        lock(&self.inner.results).get(uuid).copied().unwrap_or(NO_RECORDS)
    }
}

/// A running consumer: its mapping as it started, and how to stop it.
struct Running {
    mapping: Mapping,
    stop: watch::Sender<bool>,
}

async fn supervise(inner: Arc<Inner>) {
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let store = inner.store.clone();
        match tokio::task::spawn_blocking(move || store.all_mappings()).await {
            Ok(Ok(all)) => {
                let wanted: HashMap<String, Mapping> =
                    all.into_iter().filter(|m| m.enabled).map(|m| (m.uuid.clone(), m)).collect();
                running.retain(|uuid, r| {
                    let keep = wanted.get(uuid) == Some(&r.mapping);
                    if !keep {
                        let _ = r.stop.send(true);
                    }
                    keep
                });
                for (uuid, m) in wanted {
                    if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(uuid) {
                        let (stop, stopped) = watch::channel(false);
                        tokio::spawn(consume(inner.clone(), m.clone(), stopped));
                        slot.insert(Running { mapping: m, stop });
                    }
                }
            }
            Ok(Err(e)) => eprintln!("ember: mappings: cannot read them: {e}"),
            Err(e) => eprintln!("ember: mappings: cannot read them: {e}"),
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// One mapping's consumer: sessions on the broker until it is stopped.
async fn consume(inner: Arc<Inner>, m: Mapping, mut stop: watch::Receiver<bool>) {
    let Some(queue) = queue_name(&m.source_arn).map(str::to_owned) else {
        eprintln!("ember: mapping {}: {} names no queue", m.uuid, m.source_arn);
        return;
    };
    let mut failing: Option<Duration> = None;
    loop {
        match session(&inner, &m, &queue, &mut stop, &mut failing).await {
            Ok(()) => return,
            Err(e) => {
                let wait = backoff(failing);
                failing = Some(wait);
                eprintln!("ember: mapping {} on queue {queue}: {e}; trying again in {wait:?}", m.uuid);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// What waiting for the next delivery gave.
enum Next {
    Delivery(Box<Delivery>),
    /// The batching window is over.
    Timeout,
    Stopped,
}

async fn next(
    consumer: &mut lapin::Consumer,
    stop: &mut watch::Receiver<bool>,
    deadline: Option<Instant>,
) -> Result<Next, BrokerError> {
    let delivery = async {
        match deadline {
            Some(at) => tokio::time::timeout_at(at, consumer.next()).await.ok(),
            None => Some(consumer.next().await),
        }
    };
    tokio::select! {
        biased;
        _ = stop.changed() => Ok(Next::Stopped),
        d = delivery => match d {
            None => Ok(Next::Timeout),
            Some(Some(Ok(d))) => Ok(Next::Delivery(Box::new(d))),
            Some(Some(Err(e))) => Err(e.into()),
            Some(None) => Err(BrokerError::Cancelled),
        },
    }
}

/// Consumes on one channel until it fails (an error) or the mapping is stopped.
async fn session(
    inner: &Arc<Inner>,
    m: &Mapping,
    queue: &str,
    stop: &mut watch::Receiver<bool>,
    failing: &mut Option<Duration>,
) -> Result<(), BrokerError> {
    let channel = inner.broker.channel().await?;
    let concurrency = m.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1);
    let prefetch = u16::try_from(m.batch_size.saturating_mul(concurrency)).unwrap_or(u16::MAX);
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("ember-{}", m.uuid);
    let mut consumer =
        channel.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    *failing = None;
    let permits = Arc::new(Semaphore::new(concurrency as usize));
    let window = Duration::from_secs(m.window_s.into());
    let batch_size = m.batch_size as usize;
    loop {
        let first = match next(&mut consumer, stop, None).await? {
            Next::Delivery(d) => *d,
            Next::Timeout => continue,
            Next::Stopped => break,
        };
        let deadline = Instant::now() + window;
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        while batch.len() < batch_size && bytes < MAX_BATCH_BODY {
            match next(&mut consumer, stop, Some(deadline)).await? {
                Next::Delivery(d) => {
                    bytes += d.data.len();
                    batch.push(*d);
                }
                Next::Timeout => break,
                // What was gathered goes back when the channel closes.
                Next::Stopped => return close(&channel, &permits, concurrency).await,
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        let (inner, m) = (inner.clone(), m.clone());
        tokio::spawn(async move {
            handle(&inner, &m, batch).await;
            drop(permit);
        });
    }
    close(&channel, &permits, concurrency).await
}

/// How long a stopped consumer waits for its batches in flight to be acknowledged.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Closes a channel once the batches in flight are over (or [`STOP_GRACE`] has passed): the
/// broker requeues what it had delivered and was not acknowledged.
async fn close(channel: &lapin::Channel, permits: &Semaphore, concurrency: u32) -> Result<(), BrokerError> {
    let _ = tokio::time::timeout(STOP_GRACE, permits.acquire_many(concurrency)).await;
    if let Err(e) = channel.close(200, "the mapping stopped".into()).await {
        eprintln!("ember: mappings: closing a channel: {e}");
    }
    Ok(())
}

/// The event's view of one delivery.
fn message(mapping: &str, d: &Delivery, now_ms: u64) -> sqs::Message {
    let p = &d.properties;
    let headers = p.headers().as_ref().map(FieldTable::inner);
    // A quorum queue counts earlier failed deliveries in `x-delivery-count`; other queues
    // only say whether this is a redelivery.
    let earlier = headers
        .and_then(|h| h.get("x-delivery-count"))
        .and_then(number)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(u32::from(d.redelivered));
    let attributes: BTreeMap<String, Attribute> = headers
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.as_str().starts_with("x-"))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), attribute(v)?)))
        .collect();
    let handle = format!("{mapping}:{}:{now_ms}", d.delivery_tag);
    sqs::Message {
        message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_else(ids::random_uuid),
        receipt_handle: base64::engine::general_purpose::STANDARD.encode(handle),
        body: d.data.clone(),
        receive_count: earlier.saturating_add(1),
        sent_ms: p.timestamp().map_or(now_ms, |s| s.saturating_mul(1000)),
        first_receive_ms: now_ms,
        sender: p
            .user_id()
            .as_ref()
            .or(p.app_id().as_ref())
            .map_or_else(|| ids::ACCOUNT_ID.to_owned(), |s| s.as_str().to_owned()),
        attributes,
    }
}

fn number(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// A header as a message attribute (tables, arrays and the like have no SQS counterpart).
fn attribute(v: &AMQPValue) -> Option<Attribute> {
    if let Some(n) = number(v) {
        return Some(Attribute::Number(n.to_string()));
    }
    Some(match v {
        AMQPValue::ShortString(s) => Attribute::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Attribute::String(text.to_owned()),
            Err(_) => Attribute::Binary(s.as_bytes().to_vec()),
        },
        AMQPValue::ByteArray(b) => Attribute::Binary(b.as_slice().to_vec()),
        AMQPValue::Boolean(b) => Attribute::String(b.to_string()),
        AMQPValue::Float(f) => Attribute::Number(f.to_string()),
        AMQPValue::Double(f) => Attribute::Number(f.to_string()),
        AMQPValue::Timestamp(t) => Attribute::Number(t.to_string()),
        _ => return None,
    })
}

/// Runs the function with one batch and acknowledges what it handled.
async fn handle(inner: &Inner, m: &Mapping, batch: Vec<Delivery>) {
    let now = ids::unix_ms();
    let messages: Vec<sqs::Message> = batch.iter().map(|d| message(&m.uuid, d, now)).collect();
    let payload = sqs::event(&messages, &m.source_arn, ids::region());
    let failed = match run(&inner.invoker, m, payload).await {
        Ok(out) if out.function_error.is_none() => {
            if m.report_failures {
                sqs::failed(&out.payload, &messages)
            } else {
                Failed::None
            }
        }
        Ok(_) => Failed::All,
        Err(why) => {
            eprintln!("ember: mapping {}: a batch of {} could not run: {why}", m.uuid, batch.len());
            Failed::All
        }
    };
    let result = if failed == Failed::None { "OK" } else { "PROBLEM: Function call failed" };
    lock(&inner.results).insert(m.uuid.clone(), result);
    let is_failed = |i: usize| match &failed {
        Failed::None => false,
        Failed::All => true,
        Failed::Items(items) => items.contains(&i),
    };
    let mut back = Vec::new();
    for (i, d) in batch.into_iter().enumerate() {
        if is_failed(i) {
            back.push(d);
        } else if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: the broker delivers it again.
            eprintln!("ember: mapping {}: an acknowledgement failed: {e}", m.uuid);
        }
    }
    if back.is_empty() {
        return;
    }
    tokio::time::sleep(RETURN_DELAY).await;
    for d in back {
        // A reject, which every RabbitMQ counts towards a quorum queue's delivery limit.
        if let Err(e) = d.acker.reject(BasicRejectOptions { requeue: true }).await {
            eprintln!("ember: mapping {}: returning a message failed: {e}", m.uuid);
        }
    }
}

/// One synchronous invocation of the mapping's function.
async fn run(
    invoker: &Invoker,
    m: &Mapping,
    payload: Vec<u8>,
) -> Result<crate::agent::pool::InvokeOutput, crate::agent::invoke::Error> {
    let qualifier = match m.qualifier.as_str() {
        "" => None,
        q => Some(
            Qualifier::parse(q).map_err(|e| crate::agent::invoke::Error::Store(StoreError::NotFound(e.to_string())))?,
        ),
    };
    let target = invoker.resolve(&FunctionRef { name: m.function.clone(), qualifier })?;
    let request = InvokeRequest {
        request_id: ids::random_uuid(),
        function: target.function,
        invoked_arn: target.invoked_arn,
        payload: Bytes::from(payload),
        client_context: None,
        want_tail: false,
    };
    invoker.invoke(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};
    use lapin::BasicProperties;

    fn delivery(redelivered: bool, properties: BasicProperties) -> Delivery {
        let mut d = Delivery::mock(7, "".into(), "q".into(), redelivered, b"hello".to_vec());
        d.properties = properties;
        d
    }

    #[test]
    fn a_delivery_becomes_an_sqs_record() {
        let mut headers = FieldTable::default();
        headers.insert("kind".into(), AMQPValue::LongString(LongString::from(b"greeting".to_vec())));
        headers.insert("n".into(), AMQPValue::LongInt(3));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert("nested".into(), AMQPValue::FieldTable(FieldTable::default()));
        let props = BasicProperties::default()
            .with_message_id(ShortString::from("m-1".to_string()))
            .with_timestamp(1_700_000_000)
            .with_app_id(ShortString::from("sender".to_string()))
            .with_headers(headers);
        let m = message("u", &delivery(true, props), 1_700_000_001_000);
        assert_eq!(m.message_id, "m-1");
        assert_eq!(m.body, b"hello");
        // A quorum queue's count of earlier deliveries wins over the redelivered flag.
        assert_eq!(m.receive_count, 3);
        assert_eq!(m.sent_ms, 1_700_000_000_000);
        assert_eq!(m.first_receive_ms, 1_700_000_001_000);
        assert_eq!(m.sender, "sender");
        assert_eq!(
            m.attributes,
            BTreeMap::from([
                ("kind".to_string(), Attribute::String("greeting".into())),
                ("n".to_string(), Attribute::Number("3".into())),
            ])
        );
        let handle = base64::engine::general_purpose::STANDARD.decode(&m.receipt_handle).unwrap();
        assert_eq!(handle, b"u:7:1700000001000");

        // Bare: an id made at delivery, the redelivered flag, the time of receipt.
        let bare = message("u", &delivery(true, BasicProperties::default()), 5_000);
        assert_eq!(bare.message_id.len(), 36);
        assert_eq!((bare.receive_count, bare.sent_ms, bare.sender.as_str()), (2, 5_000, ids::ACCOUNT_ID));
        assert!(bare.attributes.is_empty());
        assert_eq!(message("u", &delivery(false, BasicProperties::default()), 5_000).receive_count, 1);
    }
}
