//! Lambda's SQS event, made from a batch of broker deliveries, and what a function that
//! reports batch item failures answers (`{"batchItemFailures": [{"itemIdentifier": id}]}`).
//! Pure: the consumer ([`super::consume`]) brings the deliveries and acts on the answer.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine;
use md5::Digest;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// A message attribute (an AMQP header of the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `DataType` `String`.
    String(String),
    /// `DataType` `Number` (its text).
    Number(String),
    /// `DataType` `Binary`.
    Binary(Vec<u8>),
}

/// One delivery, as the event shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `messageId`: the message's `message_id` property, else one made at delivery.
    pub message_id: String,
    /// `receiptHandle`: names this delivery.
    pub receipt_handle: String,
    /// The body.
    pub body: Vec<u8>,
    /// `ApproximateReceiveCount`: this delivery's number.
    pub receive_count: u32,
    /// `SentTimestamp` (Unix ms).
    pub sent_ms: u64,
    /// `ApproximateFirstReceiveTimestamp` (Unix ms).
    pub first_receive_ms: u64,
    /// `SenderId`.
    pub sender: String,
    /// `messageAttributes`.
    pub attributes: BTreeMap<String, Attribute>,
}

/// The hex MD5 of a body (`md5OfBody`).
fn md5_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = md5::Md5::digest(bytes);
    let mut hex = String::with_capacity(2 * digest.len());
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// A record of the event, serialized straight from the message it shows (no JSON tree in
/// between: a batch holds up to 10,000 messages).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    message_id: &'a str,
    receipt_handle: &'a str,
    body: Cow<'a, str>,
    attributes: RecordAttributes<'a>,
    message_attributes: MessageAttributes<'a>,
    md5_of_body: String,
    event_source: &'static str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
    aws_region: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RecordAttributes<'a> {
    approximate_receive_count: String,
    sent_timestamp: String,
    sender_id: &'a str,
    approximate_first_receive_timestamp: String,
}

/// `messageAttributes`: each as `{"stringValue"|"binaryValue": ..., "stringListValues": [],
/// "binaryListValues": [], "dataType": ...}`.
struct MessageAttributes<'a>(&'a BTreeMap<String, Attribute>);

impl Serialize for MessageAttributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &AttributeValue(value))?;
        }
        map.end()
    }
}

struct AttributeValue<'a>(&'a Attribute);

impl Serialize for AttributeValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (data_type, key, value) = match self.0 {
            Attribute::String(s) => ("String", "stringValue", Cow::Borrowed(s.as_str())),
            Attribute::Number(n) => ("Number", "stringValue", Cow::Borrowed(n.as_str())),
            Attribute::Binary(b) => {
                ("Binary", "binaryValue", Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b)))
            }
        };
        let none: [(); 0] = [];
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry(key, &value)?;
        map.serialize_entry("stringListValues", &none)?;
        map.serialize_entry("binaryListValues", &none)?;
        map.serialize_entry("dataType", data_type)?;
        map.end()
    }
}

/// The event for `messages` from the queue `source_arn`.
pub fn event(messages: &[Message], source_arn: &str, region: &str) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Event<'a> {
        records: Vec<Record<'a>>,
    }
    let records = messages
        .iter()
        .map(|m| Record {
            message_id: &m.message_id,
            receipt_handle: &m.receipt_handle,
            body: String::from_utf8_lossy(&m.body),
            attributes: RecordAttributes {
                approximate_receive_count: m.receive_count.to_string(),
                sent_timestamp: m.sent_ms.to_string(),
                sender_id: &m.sender,
                approximate_first_receive_timestamp: m.first_receive_ms.to_string(),
            },
            message_attributes: MessageAttributes(&m.attributes),
            md5_of_body: md5_hex(&m.body),
            event_source: "aws:sqs",
            event_source_arn: source_arn,
            aws_region: region,
        })
        .collect();
    serde_json::to_vec(&Event { records }).expect("the event serializes")
}

/// Which messages of a batch failed, by a successful function's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// None: acknowledge the batch.
    None,
    /// These (indices into the batch) go back to the queue; the rest are acknowledged.
    Items(BTreeSet<usize>),
    /// The answer does not say which, as Lambda reads it: the whole batch goes back.
    All,
}

/// Reads a `ReportBatchItemFailures` answer as Lambda does: no answer, `null`, `{}`, or an
/// empty or null `batchItemFailures` is a success; each item's `itemIdentifier` must be the
/// `messageId` of a message of the batch, else (or if the answer is not JSON) the whole batch
/// failed.
pub fn failed(response: &[u8], messages: &[Message]) -> Failed {
    let trimmed = response.trim_ascii();
    if trimmed.is_empty() {
        return Failed::None;
    }
    let Ok(answer) = serde_json::from_slice::<Value>(trimmed) else { return Failed::All };
    let items = match answer.get("batchItemFailures") {
        None | Some(Value::Null) => return Failed::None,
        Some(Value::Array(items)) => items,
        Some(_) => return Failed::All,
    };
    // The batch's indices by message id, once: a function's answer may name ids by the
    // hundred thousand, and a batch holds up to 10,000 messages.
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        by_id.entry(m.message_id.as_str()).or_default().push(i);
    }
    let mut failed = BTreeSet::new();
    for item in items {
        let Some(id) = item.get("itemIdentifier").and_then(Value::as_str).filter(|id| !id.is_empty()) else {
            return Failed::All;
        };
        match by_id.get(id) {
            Some(indices) => failed.extend(indices),
            None => return Failed::All,
        }
    }
    if failed.is_empty() {
        Failed::None
    } else {
        Failed::Items(failed)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(id: &str, body: &str) -> Message {
        Message {
            message_id: id.into(),
            receipt_handle: format!("rh-{id}"),
            body: body.as_bytes().to_vec(),
            receive_count: 1,
            sent_ms: 1_700_000_000_000,
            first_receive_ms: 1_700_000_000_500,
            sender: "ember".into(),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn the_event_is_lambda_s_sqs_event() {
        let mut m = message("m1", "hello");
        m.receive_count = 2;
        m.attributes.insert("kind".into(), Attribute::String("greeting".into()));
        m.attributes.insert("n".into(), Attribute::Number("7".into()));
        m.attributes.insert("raw".into(), Attribute::Binary(vec![0, 1]));
        let arn = "arn:aws:sqs:us-east-1:000000000000:q";
        let e: Value = serde_json::from_slice(&event(&[m, message("m2", "{\"a\":1}")], arn, "us-east-1")).unwrap();
        let r = &e["Records"][0];
        assert_eq!(r["messageId"], "m1");
        assert_eq!(r["receiptHandle"], "rh-m1");
        assert_eq!(r["body"], "hello");
        assert_eq!(r["md5OfBody"], "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(r["eventSource"], "aws:sqs");
        assert_eq!(r["eventSourceARN"], arn);
        assert_eq!(r["awsRegion"], "us-east-1");
        assert_eq!(
            r["attributes"],
            json!({"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000000", "SenderId": "ember",
                   "ApproximateFirstReceiveTimestamp": "1700000000500"})
        );
        assert_eq!(
            r["messageAttributes"]["kind"],
            json!({"stringValue": "greeting", "stringListValues": [], "binaryListValues": [], "dataType": "String"})
        );
        assert_eq!(r["messageAttributes"]["n"]["dataType"], "Number");
        assert_eq!(r["messageAttributes"]["raw"]["binaryValue"], "AAE=");
        assert_eq!(e["Records"][1]["body"], "{\"a\":1}");
    }

    #[test]
    fn batch_item_failures_are_read_as_lambda_reads_them() {
        let batch = [message("a", "1"), message("b", "2"), message("c", "3")];
        for ok in ["", "null", "{}", "\"done\"", r#"{"batchItemFailures": []}"#, r#"{"batchItemFailures": null}"#] {
            assert_eq!(failed(ok.as_bytes(), &batch), Failed::None, "{ok}");
        }
        assert_eq!(
            failed(br#"{"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]}"#, &batch),
            Failed::Items(BTreeSet::from([1, 2]))
        );
        for bad in [
            "not json",
            r#"{"batchItemFailures": "b"}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": ""}]}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": null}]}"#,
            r#"{"batchItemFailures": [{"id": "b"}]}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": "zzz"}]}"#,
        ] {
            assert_eq!(failed(bad.as_bytes(), &batch), Failed::All, "{bad}");
        }
        // Messages that share an id (a broker may redeliver one) fail together.
        let twice = [message("a", "1"), message("a", "2"), message("b", "3")];
        assert_eq!(
            failed(br#"{"batchItemFailures": [{"itemIdentifier": "a"}]}"#, &twice),
            Failed::Items(BTreeSet::from([0, 1]))
        );
    }

    #[test]
    fn a_full_batch_s_answer_naming_every_message_is_read() {
        let batch: Vec<Message> = (0..10_000).map(|i| message(&format!("m{i}"), "x")).collect();
        let items: Vec<Value> = (0..10_000).rev().map(|i| json!({ "itemIdentifier": format!("m{i}") })).collect();
        let answer = serde_json::to_vec(&json!({ "batchItemFailures": items })).unwrap();
        assert_eq!(failed(&answer, &batch), Failed::Items((0..10_000).collect()));
    }
}
