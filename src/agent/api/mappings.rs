//! Event source mappings: CreateEventSourceMapping, GetEventSourceMapping,
//! ListEventSourceMappings, UpdateEventSourceMapping, DeleteEventSourceMapping
//! (`/2015-03-31/event-source-mappings/`), from a queue of the message broker to a function,
//! version or alias. The consumers ([`crate::agent::broker::consume`]) follow the store.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, Req};
use crate::agent::broker::{self, consume::Consumers};
use crate::agent::functions::validate;
use crate::agent::ids::{self, FunctionRef};
use crate::agent::limits;
use crate::agent::store::mappings::Mapping;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ScalingInput {
    maximum_concurrency: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct MappingInput {
    event_source_arn: Option<String>,
    function_name: Option<String>,
    enabled: Option<bool>,
    batch_size: Option<i64>,
    maximum_batching_window_in_seconds: Option<i64>,
    scaling_config: Option<ScalingInput>,
    function_response_types: Option<Vec<String>>,
}

/// The consumers, or why mappings cannot be made here.
fn consumers(agent: &Agent) -> Result<&Consumers, ApiError> {
    agent.consumers.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "Event source mappings need a message broker, which this agent was started without (ember serve \
             --amqp-url).",
        )
    })
}

/// The function (and qualifier, "" for none) `FunctionName` names, checked to exist.
fn target(agent: &Agent, name: &str) -> Result<(String, String), ApiError> {
    let r = FunctionRef::parse(name)?;
    agent.control.get(&r)?;
    Ok((r.name, r.qualifier.map(|q| q.to_string()).unwrap_or_default()))
}

/// The ARN a mapping's function is shown by.
fn function_arn(m: &Mapping) -> String {
    match m.qualifier.as_str() {
        "" => ids::function_arn(&m.function),
        q => ids::qualified_arn(&m.function, q),
    }
}

/// A mapping as Lambda shows it; `state` overrides the settled state (`Creating`, ...).
fn shape(m: &Mapping, consumers: Option<&Consumers>, state: Option<&str>) -> Value {
    let settled = if m.enabled { "Enabled" } else { "Disabled" };
    let mut out = json!({
        "UUID": m.uuid,
        "EventSourceMappingArn": format!("arn:aws:lambda:{}:{}:event-source-mapping:{}", ids::region(), ids::ACCOUNT_ID, m.uuid),
        "EventSourceArn": m.source_arn,
        "FunctionArn": function_arn(m),
        "BatchSize": m.batch_size,
        "MaximumBatchingWindowInSeconds": m.window_s,
        "LastModified": m.last_modified_ms as f64 / 1000.0,
        "LastProcessingResult": consumers.map_or(broker::consume::NO_RECORDS, |c| c.last_result(&m.uuid)),
        "State": state.unwrap_or(settled),
        "StateTransitionReason": "USER_INITIATED",
        "FunctionResponseTypes": if m.report_failures { vec!["ReportBatchItemFailures"] } else { vec![] },
    });
    if let Some(n) = m.max_concurrency {
        out["ScalingConfig"] = json!({ "MaximumConcurrency": n });
    }
    out
}

/// Applies the members an input sets to `m` (checked).
fn apply(agent: &Agent, m: &mut Mapping, input: MappingInput) -> Result<(), ApiError> {
    if let Some(name) = &input.function_name {
        (m.function, m.qualifier) = target(agent, name)?;
    }
    let size = input.batch_size.unwrap_or(m.batch_size.into());
    let window = input.maximum_batching_window_in_seconds.unwrap_or(m.window_s.into());
    (m.batch_size, m.window_s) = validate::batching(size, window)?;
    if let Some(enabled) = input.enabled {
        m.enabled = enabled;
    }
    if let Some(scaling) = input.scaling_config {
        m.max_concurrency = scaling.maximum_concurrency.map(validate::max_concurrency).transpose()?;
    }
    if let Some(types) = &input.function_response_types {
        m.report_failures = validate::response_types(types)?;
    }
    m.last_modified_ms = ids::unix_ms();
    Ok(())
}

/// CreateEventSourceMapping (202, `Creating`).
pub async fn create(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    members::check(&req.body, members::CREATE_EVENT_SOURCE_MAPPING, "CreateEventSourceMapping")?;
    let mut input: MappingInput = body::shape(req.body)?;
    let source = input.event_source_arn.take().ok_or_else(|| ApiError::invalid("EventSourceArn is required."))?;
    if broker::queue_name(&source).is_none() {
        return Err(ApiError::invalid(format!(
            "Unrecognized event source {source}: this host maps queues only (arn:aws:sqs:<region>:<account>:<name>, \
             a queue of its message broker)."
        )));
    }
    let consumers = consumers(agent)?.clone();
    let name = input.function_name.clone().ok_or_else(|| ApiError::invalid("FunctionName is required."))?;
    let (function, qualifier) = target(agent, &name)?;
    let mut m = Mapping {
        uuid: ids::random_uuid(),
        function,
        qualifier,
        source_arn: source,
        batch_size: limits::ESM_DEFAULT_BATCH_SIZE,
        window_s: 0,
        enabled: true,
        max_concurrency: None,
        report_failures: false,
        last_modified_ms: 0,
    };
    input.function_name = None;
    apply(agent, &mut m, input)?;
    agent.control.create_mapping(m.clone()).await?;
    consumers.changed();
    Ok(body::json(StatusCode::ACCEPTED, &shape(&m, Some(&consumers), Some("Creating"))))
}

/// GetEventSourceMapping.
pub async fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let m = agent.control.mapping(&req.params[0]).await?;
    Ok(body::json(StatusCode::OK, &shape(&m, agent.consumers.as_ref(), None)))
}

/// ListEventSourceMappings (`EventSourceArn`, `FunctionName` filters).
pub async fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let source = query_param(req.query, "EventSourceArn");
    let function = match query_param(req.query, "FunctionName") {
        Some(name) => Some(FunctionRef::parse(&name)?),
        None => None,
    };
    let marker = query_param(req.query, "Marker");
    let max = max_items(req.query)?;
    let name = function.as_ref().map(|f| f.name.clone());
    let page = agent.control.list_mappings(name, source, marker, max).await?;
    let qualifier = function.and_then(|f| f.qualifier).map(|q| q.to_string());
    let items: Vec<Value> = page
        .items
        .iter()
        .filter(|m| qualifier.as_ref().is_none_or(|q| *q == m.qualifier))
        .map(|m| shape(m, agent.consumers.as_ref(), None))
        .collect();
    let mut out = json!({ "EventSourceMappings": items });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = json!(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}

/// UpdateEventSourceMapping (202: `Enabling`, `Disabling` or `Updating`).
pub async fn update(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    members::check(&req.body, members::UPDATE_EVENT_SOURCE_MAPPING, "UpdateEventSourceMapping")?;
    let input: MappingInput = body::shape(req.body)?;
    let current = agent.control.mapping(&req.params[0]).await?;
    let consumers = consumers(agent)?.clone();
    let mut changed = current.clone();
    apply(agent, &mut changed, input)?;
    let state = match (current.enabled, changed.enabled) {
        (false, true) => "Enabling",
        (true, false) => "Disabling",
        _ => "Updating",
    };
    let m = agent.control.update_mapping(changed).await?;
    consumers.changed();
    Ok(body::json(StatusCode::ACCEPTED, &shape(&m, Some(&consumers), Some(state))))
}

/// DeleteEventSourceMapping (202, `Deleting`).
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let m = agent.control.delete_mapping(&req.params[0]).await?;
    if let Some(c) = &agent.consumers {
        c.changed();
    }
    Ok(body::json(StatusCode::ACCEPTED, &shape(&m, agent.consumers.as_ref(), Some("Deleting"))))
}
