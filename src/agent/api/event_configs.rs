//! Event invoke configs: Put, Get, Update, Delete and ListFunctionEventInvokeConfig(s)
//! (`/2019-09-25/functions/{name}/event-invoke-config`, per `Qualifier`).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, Req};
use crate::agent::functions::event_configs::EventConfigInput;
use crate::agent::functions::validate;
use crate::agent::ids;
use crate::agent::store::queue::EventConfig;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DestinationInput {
    destination: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DestinationConfigInput {
    on_success: Option<DestinationInput>,
    on_failure: Option<DestinationInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConfigInput {
    maximum_retry_attempts: Option<i64>,
    maximum_event_age_in_seconds: Option<i64>,
    destination_config: Option<DestinationConfigInput>,
}

/// A destination as given: `Some(None)` for an empty one (none).
fn destination(d: Option<DestinationInput>, broker: bool) -> Result<Option<Option<String>>, ApiError> {
    let Some(d) = d else { return Ok(None) };
    match d.destination.filter(|arn| !arn.is_empty()) {
        Some(arn) => {
            validate::destination(&arn, broker)?;
            Ok(Some(Some(arn)))
        }
        None => Ok(Some(None)),
    }
}

fn input(req: Req<'_>, operation: &str, broker: bool) -> Result<EventConfigInput, ApiError> {
    members::check(&req.body, members::EVENT_INVOKE_CONFIG, operation)?;
    let input: ConfigInput = body::shape(req.body)?;
    let destinations = input.destination_config.unwrap_or_default();
    Ok(EventConfigInput {
        max_retries: input.maximum_retry_attempts.map(validate::max_retries).transpose()?,
        max_age_s: input.maximum_event_age_in_seconds.map(validate::max_event_age).transpose()?,
        on_success: destination(destinations.on_success, broker)?,
        on_failure: destination(destinations.on_failure, broker)?,
    })
}

/// A config as Lambda shows it.
fn shape(c: &EventConfig) -> Value {
    let dest = |d: &Option<String>| match d {
        Some(arn) => json!({ "Destination": arn }),
        None => json!({}),
    };
    let mut out = json!({
        "FunctionArn": ids::qualified_arn(&c.function, &c.qualifier),
        "LastModified": c.last_modified_ms as f64 / 1000.0,
        "DestinationConfig": { "OnSuccess": dest(&c.on_success), "OnFailure": dest(&c.on_failure) },
    });
    if let Some(n) = c.max_retries {
        out["MaximumRetryAttempts"] = json!(n);
    }
    if let Some(s) = c.max_age_s {
        out["MaximumEventAgeInSeconds"] = json!(s);
    }
    out
}

/// PutFunctionEventInvokeConfig.
pub async fn put(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    let input = input(req, "PutFunctionEventInvokeConfig", agent.consumers.is_some())?;
    let config = agent.control.put_event_config(&r, input).await?;
    Ok(body::json(StatusCode::OK, &shape(&config)))
}

/// UpdateFunctionEventInvokeConfig.
pub async fn update(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    let input = input(req, "UpdateFunctionEventInvokeConfig", agent.consumers.is_some())?;
    let config = agent.control.update_event_config(&r, input).await?;
    Ok(body::json(StatusCode::OK, &shape(&config)))
}

/// GetFunctionEventInvokeConfig.
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let config = agent.control.event_config(&req.function()?)?;
    Ok(body::json(StatusCode::OK, &shape(&config)))
}

/// DeleteFunctionEventInvokeConfig (204).
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    agent.control.delete_event_config(&req.function()?).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// ListFunctionEventInvokeConfigs.
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("ListFunctionEventInvokeConfigs")?;
    let marker = query_param(req.query, "Marker");
    let page = agent.control.list_event_configs(&function, marker.as_deref(), max_items(req.query)?)?;
    let configs: Vec<Value> = page.items.iter().map(|c| shape(c)).collect();
    let mut out = json!({ "FunctionEventInvokeConfigs": configs });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}
