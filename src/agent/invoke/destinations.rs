//! Where an asynchronous event's outcome goes (`DestinationConfig`), and Lambda's invocation
//! record that goes there.
//!
//! A destination is a function (its record is queued as an asynchronous event of its own, in
//! the transaction that removes the original event) or a queue of the message broker (the
//! record goes to the broker's outbox in that transaction). Queue destinations need the agent
//! to have a broker (`--amqp-url`): without one they are refused when configured, never
//! accepted and dropped.

use serde_json::{json, Value};

use super::retry::Condition;
use crate::agent::ids::{self, FunctionRef, LATEST};
use crate::agent::store::queue::LastResponse;

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not an ARN Lambda takes as a destination.
    #[error("The destination ARN {0} is invalid: it must be the ARN of a Lambda function or an SQS queue.")]
    Invalid(String),
    /// A kind of destination this host does not deliver to.
    #[error("{0}")]
    Unsupported(String),
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A function (invoked asynchronously with the record).
    Function(FunctionRef),
    /// The broker's queue of this name.
    Queue(String),
}

/// Parses and checks a destination ARN; `broker`: whether this agent has a message broker.
pub fn parse(arn: &str, broker: bool) -> Result<Destination, DestinationError> {
    if let Some(queue) = crate::agent::broker::queue_name(arn) {
        if !broker {
            return Err(DestinationError::Unsupported(format!(
                "The destination {arn} is a queue: queue destinations need a message broker, which this agent was \
                 started without (ember serve --amqp-url)."
            )));
        }
        return Ok(Destination::Queue(queue.to_owned()));
    }
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", ..] => {
            FunctionRef::parse(arn).map(Destination::Function).map_err(|_| DestinationError::Invalid(arn.to_owned()))
        }
        ["arn", _, service @ ("sns" | "events" | "s3"), ..] => Err(DestinationError::Unsupported(format!(
            "The destination {arn} is an {service} resource, which this host does not deliver to; use a Lambda \
             function or a queue as the destination."
        ))),
        _ => Err(DestinationError::Invalid(arn.to_owned())),
    }
}

/// The ARN the record names the invoked function by: qualified, `$LATEST` for an unqualified
/// invoke.
pub fn record_arn(function: &str, qualifier: Option<&str>) -> String {
    ids::qualified_arn(function, qualifier.unwrap_or(LATEST))
}

/// A payload as JSON (it was checked to be JSON when accepted; a response may not be: then
/// it is a string).
fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Lambda's invocation record of an event's outcome. `last` is what the last attempt that ran
/// the function answered (none when no attempt ran: then there is no response context).
pub fn record(
    condition: Condition,
    request_id: &str,
    function_arn: &str,
    attempts: u32,
    request_payload: &[u8],
    last: Option<&LastResponse>,
) -> Vec<u8> {
    let mut record = json!({
        "version": "1.0",
        "timestamp": ids::timestamp(),
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition.as_str(),
            "approximateInvokeCount": attempts,
        },
        "requestPayload": as_json(request_payload),
    });
    if let Some(last) = last {
        let mut context = json!({ "statusCode": 200, "executedVersion": last.version });
        if let Some(e) = &last.function_error {
            context["functionError"] = json!(e);
        }
        record["responseContext"] = context;
        record["responsePayload"] = as_json(&last.payload);
    }
    serde_json::to_vec(&record).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ids::{Qualifier, Version};

    #[test]
    fn destinations_are_functions_or_queues() {
        let arn = "arn:aws:lambda:us-east-1:000000000000:function:collector";
        assert_eq!(
            parse(arn, false),
            Ok(Destination::Function(FunctionRef { name: "collector".into(), qualifier: None }))
        );
        assert_eq!(
            parse(&format!("{arn}:2"), false),
            Ok(Destination::Function(FunctionRef {
                name: "collector".into(),
                qualifier: Some(Qualifier::Version(Version::published(2)))
            }))
        );
        let queue = "arn:aws:sqs:us-east-1:000000000000:q";
        assert!(matches!(parse(queue, false), Err(DestinationError::Unsupported(_))));
        assert_eq!(parse(queue, true), Ok(Destination::Queue("q".into())));
        assert!(matches!(parse("arn:aws:sns:us-east-1:000000000000:t", true), Err(DestinationError::Unsupported(_))));
        for bad in ["collector", "arn:aws:lambda:eu-west-9:000000000000:function:c", "arn:aws:sqs:r:a:", ""] {
            assert!(matches!(parse(bad, true), Err(DestinationError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn the_record_is_lambda_s() {
        let last = LastResponse {
            payload: br#"{"errorMessage":"boom","errorType":"Exception"}"#.to_vec(),
            function_error: Some("Unhandled".into()),
            version: "$LATEST".into(),
        };
        let arn = record_arn("f", None);
        let r: Value =
            serde_json::from_slice(&record(Condition::RetriesExhausted, "req-1", &arn, 2, br#"{"n":1}"#, Some(&last)))
                .unwrap();
        assert_eq!(r["version"], "1.0");
        assert!(r["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            r["requestContext"],
            json!({
                "requestId": "req-1",
                "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 2
            })
        );
        assert_eq!(r["requestPayload"], json!({"n": 1}));
        assert_eq!(
            r["responseContext"],
            json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})
        );
        assert_eq!(r["responsePayload"]["errorMessage"], "boom");
        // A success has no functionError; an event that never ran has no response at all.
        let ok = LastResponse { payload: b"plain text".to_vec(), function_error: None, version: "3".into() };
        let r: Value = serde_json::from_slice(&record(
            Condition::Success,
            "r",
            &record_arn("f", Some("live")),
            1,
            b"{}",
            Some(&ok),
        ))
        .unwrap();
        assert_eq!(r["responseContext"], json!({"statusCode": 200, "executedVersion": "3"}));
        assert_eq!(r["responsePayload"], "plain text");
        assert!(r["requestContext"]["functionArn"].as_str().unwrap().ends_with(":f:live"));
        let r: Value = serde_json::from_slice(&record(Condition::EventAgeExceeded, "r", &arn, 0, b"{}", None)).unwrap();
        assert_eq!(r["requestContext"]["approximateInvokeCount"], 0);
        assert!(r.get("responseContext").is_none() && r.get("responsePayload").is_none());
    }
}
