//! Publishes the outbox: every message the store holds for the broker goes out persistent
//! (delivery mode 2), mandatory, on a channel with publisher confirms, and its row is deleted
//! only once the broker has acknowledged it. A message the broker cannot route (its queue does
//! not exist) or refuses stays and is tried again after a pause; so is everything while the
//! broker is unreachable. At least once: a message confirmed just before a crash, whose row
//! was not yet deleted, is published again after the restart (its `message_id` is the same).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::Notify;

use super::{backoff, Broker, BrokerError};
use crate::agent::store::outbox::Pending;
use crate::agent::store::Store;

/// Messages read and published at once.
const BATCH: usize = 256;
/// How long a message that could not be delivered waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Starts the publisher; `wake` tells it that messages were added.
pub fn start(store: Arc<Store>, broker: Arc<Broker>, wake: Arc<Notify>) {
    tokio::spawn(run(store, broker, wake));
}

/// The properties of an outbox message.
fn properties(p: &Pending) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &p.message.headers {
        headers.insert(k.clone().into(), AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(p.message.message_id.clone().into())
        .with_headers(headers)
}

/// What publishing one batch came to.
struct Published {
    /// The rows the broker confirmed.
    confirmed: Vec<i64>,
    /// Whether some were not (to be tried again later).
    kept: bool,
}

/// Publishes `batch` and waits for the broker's confirms. An error means the channel is gone.
async fn publish(channel: &Channel, batch: &[Pending]) -> Result<Published, BrokerError> {
    let mut confirms = Vec::with_capacity(batch.len());
    for p in batch {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirm = channel
            .basic_publish("".into(), p.message.queue.clone().into(), options, &p.message.body, properties(p))
            .await?;
        confirms.push(confirm);
    }
    let mut out = Published { confirmed: Vec::with_capacity(batch.len()), kept: false };
    for (p, confirm) in batch.iter().zip(confirms) {
        match confirm.await? {
            Confirmation::Ack(None) => out.confirmed.push(p.seq),
            Confirmation::Ack(Some(_)) => {
                eprintln!(
                    "ember: broker: queue {} does not exist: message {} is kept and sent again later",
                    p.message.queue, p.message.message_id
                );
                out.kept = true;
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                eprintln!("ember: broker: {}; it is sent again later", BrokerError::Refused(p.message.queue.clone()));
                out.kept = true;
            }
        }
    }
    Ok(out)
}

async fn confirming_channel(broker: &Broker) -> Result<Channel, BrokerError> {
    let channel = broker.channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

async fn run(store: Arc<Store>, broker: Arc<Broker>, wake: Arc<Notify>) {
    let mut channel: Option<Channel> = None;
    let mut failing: Option<Duration> = None;
    // The last row tried in this pass over the outbox, and whether the pass left any behind.
    let (mut after, mut kept) = (0i64, false);
    loop {
        let s = store.clone();
        let batch = match tokio::task::spawn_blocking(move || s.outbox(after, BATCH)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                eprintln!("ember: broker: cannot read the outbox: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => {
                eprintln!("ember: broker: the outbox reader failed: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let Some(last) = batch.last().map(|p| p.seq) else {
            // The end of a pass: wait for new messages, or a while for those left behind.
            let pause = if kept { RETRY } else { Duration::from_secs(3600) };
            (after, kept) = (0, false);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            continue;
        };
        let ch = match channel.take() {
            Some(ch) if ch.status().connected() => ch,
            _ => match confirming_channel(&broker).await {
                Ok(ch) => ch,
                Err(e) => {
                    let wait = backoff(failing);
                    failing = Some(wait);
                    eprintln!("ember: broker: {e}; {} messages wait, trying again in {wait:?}", batch.len());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        match publish(&ch, &batch).await {
            Ok(published) => {
                failing = None;
                channel = Some(ch);
                kept |= published.kept;
                after = last;
                if !published.confirmed.is_empty() {
                    let s = store.clone();
                    let seqs = published.confirmed;
                    match tokio::task::spawn_blocking(move || s.outbox_done(&seqs)).await {
                        Ok(Ok(())) => {}
                        // They are sent again: at least once.
                        Ok(Err(e)) => eprintln!("ember: broker: cannot remove published messages: {e}"),
                        Err(e) => eprintln!("ember: broker: cannot remove published messages: {e}"),
                    }
                }
            }
            // The channel or connection is gone: this batch again, on a new one.
            Err(e) => {
                let wait = backoff(failing);
                failing = Some(wait);
                eprintln!("ember: broker: publishing failed ({e}); trying again in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
