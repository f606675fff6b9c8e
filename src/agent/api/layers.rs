//! Layers: PublishLayerVersion, GetLayerVersion, GetLayerVersionByArn, ListLayers,
//! ListLayerVersions, DeleteLayerVersion, and Ember's own layer zip.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, only_query, query_param, HttpResponse};
use super::error::ApiError;
use super::functions::decode_zip;
use super::{members, shapes, Req};
use crate::agent::functions::validate;
use crate::agent::store::NewLayerVersion;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ContentInput {
    zip_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PublishInput {
    description: Option<String>,
    content: Option<ContentInput>,
    compatible_runtimes: Option<Vec<String>>,
    license_info: Option<String>,
    compatible_architectures: Option<Vec<String>>,
}

fn version_number(s: &str) -> Result<u32, ApiError> {
    s.parse::<u32>().ok().filter(|v| *v >= 1).ok_or_else(|| {
        ApiError::from(validate::constraint(s, "versionNumber", "Member must have value greater than or equal to 1"))
    })
}

/// PublishLayerVersion (201).
pub async fn publish(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = validate::layer_name(&req.params[0])?;
    members::check(&req.body, members::PUBLISH_LAYER_VERSION, "PublishLayerVersion")?;
    let host = req.host().to_owned();
    let input: PublishInput = body::shape(req.body)?;
    let description = input.description.unwrap_or_default();
    validate::description(&description)?;
    let license = input.license_info.unwrap_or_default();
    validate::license(&license)?;
    let runtimes = input.compatible_runtimes.unwrap_or_default();
    let architectures = input.compatible_architectures.unwrap_or_default();
    validate::compatibility(&runtimes, &architectures)?;
    let zip = decode_zip(
        &input.content.and_then(|c| c.zip_file).ok_or_else(|| ApiError::invalid("Content.ZipFile is required."))?,
    )?;
    let layer = agent
        .control
        .publish_layer(&name, zip, NewLayerVersion { description, license, runtimes, architectures })
        .await?;
    Ok(body::json(StatusCode::CREATED, &shapes::layer_version(&layer, &host)))
}

/// GetLayerVersion.
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let layer = agent.control.layer(&validate::layer_name(&req.params[0])?, version_number(&req.params[1])?)?;
    Ok(body::json(StatusCode::OK, &shapes::layer_version(&layer, req.host())))
}

/// ListLayers, or with `?find=LayerVersion&Arn=...` GetLayerVersionByArn.
pub fn list_or_find(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    if query_param(req.query, "find").as_deref() == Some("LayerVersion") {
        only_query(req.query, &["find", "Arn"], "GetLayerVersionByArn")?;
        let arn = query_param(req.query, "Arn").ok_or_else(|| ApiError::invalid("Arn is required."))?;
        let layer = agent.control.layer_by_arn(&arn)?;
        return Ok(body::json(StatusCode::OK, &shapes::layer_version(&layer, req.host())));
    }
    only_query(req.query, &["CompatibleRuntime", "CompatibleArchitecture", "Marker", "MaxItems"], "ListLayers")?;
    let (runtime, arch, marker) = filters(req.query);
    let page =
        agent.control.list_layers(runtime.as_deref(), arch.as_deref(), marker.as_deref(), max_items(req.query)?)?;
    let layers: Vec<Value> = page.items.iter().map(|l| shapes::layer(l)).collect();
    let mut out = json!({ "Layers": layers });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}

fn filters(query: Option<&str>) -> (Option<String>, Option<String>, Option<String>) {
    (
        query_param(query, "CompatibleRuntime"),
        query_param(query, "CompatibleArchitecture"),
        query_param(query, "Marker"),
    )
}

/// ListLayerVersions, newest first.
pub fn list_versions(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = validate::layer_name(&req.params[0])?;
    let (runtime, arch, marker) = filters(req.query);
    let page = agent.control.list_layer_versions(
        &name,
        runtime.as_deref(),
        arch.as_deref(),
        marker.as_deref(),
        max_items(req.query)?,
    )?;
    let versions: Vec<Value> = page.items.iter().map(|l| shapes::layer_version_item(l)).collect();
    let mut out = json!({ "LayerVersions": versions });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}

/// DeleteLayerVersion (204; a version that does not exist is not an error, as on Lambda).
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = validate::layer_name(&req.params[0])?;
    agent.control.delete_layer(&name, version_number(&req.params[1])?).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// Ember's own: a layer version's zip.
pub async fn zip(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = validate::layer_name(&req.params[0])?;
    let zip = agent.control.layer_zip(&name, version_number(&req.params[1])?).await?;
    Ok(body::bytes("application/zip", zip))
}
