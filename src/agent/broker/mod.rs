//! The message broker: RabbitMQ over AMQP 0-9-1 (`ember serve --amqp-url`). Queues stand in
//! for SQS: the ARN `arn:aws:sqs:<region>:<account>:<name>` names the broker's durable queue
//! `<name>`, which the operator declares (with its dead-letter exchange, delivery limit and
//! type: the agent never declares or changes a queue).
//!
//! - [`outbox`] publishes what asynchronous invocations owe to queues (destination records,
//!   dead-letter messages): persistent messages with publisher confirms, kept in the store
//!   until the broker confirms them.
//! - [`consume`] runs the event source mappings: it consumes a queue, hands batches to the
//!   function as Lambda's SQS event ([`sqs`]), and acknowledges only what the function handled.
//!
//! One connection serves both; when it drops (the broker restarts, the network fails) every
//! user reconnects on its own with a backoff, and what was in flight is redone: unconfirmed
//! messages are published again, unacknowledged deliveries come back from the broker.

pub mod consume;
pub mod outbox;
pub mod sqs;

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Connecting, or an operation on a channel, failed.
    #[error("the message broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker cancelled a consumer (its queue was deleted, say).
    #[error("the broker cancelled the consumer")]
    Cancelled,
    /// The broker refused a message.
    #[error("the message broker refused a message for queue {0}")]
    Refused(String),
}

/// The longest wait between two attempts to reach the broker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The next wait after `previous` (none: the first).
pub fn backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(Duration::from_millis(250), |d| (d * 2).min(MAX_BACKOFF))
}

/// The connection to the broker, made on first use and again after it drops.
pub struct Broker {
    url: String,
    conn: tokio::sync::Mutex<Option<Connection>>,
}

impl Broker {
    /// A broker at `url` (`amqp://user:password@host:port/vhost`); nothing is connected yet.
    pub fn new(url: &str) -> Broker {
        Broker { url: url.to_owned(), conn: tokio::sync::Mutex::new(None) }
    }

    /// A new channel, on the current connection or on a new one.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.status().connected()) {
            match c.create_channel().await {
                Ok(channel) => return Ok(channel),
                Err(e) => eprintln!("ember: broker: the connection failed ({e}); connecting again"),
            }
        }
        *conn = None;
        let props = ConnectionProperties::default().with_connection_name("ember".into());
        let c = Connection::connect(&self.url, props).await?;
        let channel = c.create_channel().await?;
        *conn = Some(c);
        Ok(channel)
    }
}

/// The queue an SQS-style ARN names: `arn:aws:sqs:<region>:<account>:<name>`, the name made
/// of letters, digits, `-`, `_` and `.` (up to 80 characters, as SQS allows, plus the dots
/// RabbitMQ's names often have).
pub fn queue_name(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", "aws", "sqs", region, account, name]
            if !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && (1..=80).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            Some(name)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_arns_name_queues() {
        assert_eq!(queue_name("arn:aws:sqs:us-east-1:000000000000:orders"), Some("orders"));
        assert_eq!(queue_name("arn:aws:sqs:eu-west-1:123456789012:a.b-c_d"), Some("a.b-c_d"));
        for bad in [
            "arn:aws:sqs:us-east-1:000000000000:",
            "arn:aws:sqs:us-east-1:0:q",
            "arn:aws:sns:us-east-1:000000000000:q",
            "arn:aws:sqs:us-east-1:000000000000:q/x",
            "arn:aws:sqs::000000000000:q",
            "q",
        ] {
            assert_eq!(queue_name(bad), None, "{bad}");
        }
        assert_eq!(queue_name(&format!("arn:aws:sqs:r:000000000000:{}", "q".repeat(81))), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut d = None;
        let mut seen = vec![];
        for _ in 0..7 {
            let next = backoff(d);
            seen.push(next.as_millis());
            d = Some(next);
        }
        assert_eq!(seen, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }
}
