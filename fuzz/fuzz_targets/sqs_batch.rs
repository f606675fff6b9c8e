//! A function's answer to an SQS batch (guest output) read as a `ReportBatchItemFailures`
//! response, and the SQS event built around arbitrary message bodies and ids. Neither may
//! panic; a failure named must be a message of the batch.
#![no_main]

use ember::agent::broker::sqs::{event, failed, Failed, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = usize::from(split).min(rest.len());
    let (ids, answer) = rest.split_at(cut);
    let messages: Vec<Message> = String::from_utf8_lossy(ids)
        .split(',')
        .map(|id| Message {
            message_id: id.to_owned(),
            receipt_handle: format!("rh-{id}"),
            body: id.as_bytes().to_vec(),
            receive_count: 1,
            sent_ms: 0,
            first_receive_ms: 0,
            sender: String::new(),
            attributes: Default::default(),
        })
        .collect();
    let e = event(&messages, "arn:aws:sqs:us-east-1:000000000000:q", "us-east-1");
    assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&e).is_ok());
    if let Failed::Items(items) = failed(answer, &messages) {
        assert!(items.iter().all(|&i| i < messages.len()));
    }
});
