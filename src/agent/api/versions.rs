//! Versions: PublishVersion and ListVersionsByFunction.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, shapes, Req};
use crate::agent::functions::validate;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PublishInput {
    code_sha256: Option<String>,
    description: Option<String>,
    revision_id: Option<String>,
}

/// PublishVersion (201): a new version of `$LATEST`, or the last one if nothing changed.
pub async fn publish(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("PublishVersion")?;
    members::check(&req.body, members::PUBLISH_VERSION, "PublishVersion")?;
    let input: PublishInput = body::shape(req.body)?;
    if let Some(d) = &input.description {
        validate::description(d)?;
    }
    let published = agent.control.publish(&name, input.code_sha256, input.revision_id, input.description).await?;
    let v = &published.config;
    Ok(body::json(StatusCode::CREATED, &shapes::configuration(v, &v.arn())))
}

/// ListVersionsByFunction: `$LATEST` first, then the published versions.
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("ListVersionsByFunction")?;
    let marker = query_param(req.query, "Marker");
    let page = agent.control.list_versions(&name, marker.as_deref(), max_items(req.query)?)?;
    // Each version shows its own qualified ARN here, $LATEST's included.
    let versions: Vec<Value> = page
        .items
        .iter()
        .map(|v| shapes::configuration(v, &crate::agent::ids::qualified_arn(&v.name, v.version)))
        .collect();
    let mut out = json!({ "Versions": versions });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}
