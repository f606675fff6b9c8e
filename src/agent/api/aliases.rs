//! Aliases: CreateAlias, GetAlias, ListAliases, UpdateAlias, DeleteAlias.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, shapes, Req};
use crate::agent::functions::validate;
use crate::agent::store::{AliasPatch, NewAlias};
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RoutingInput {
    additional_version_weights: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AliasInput {
    name: Option<String>,
    function_version: Option<String>,
    description: Option<String>,
    routing_config: Option<RoutingInput>,
    revision_id: Option<String>,
}

/// CreateAlias (201).
pub async fn create(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("CreateAlias")?;
    members::check(&req.body, members::CREATE_ALIAS, "CreateAlias")?;
    let input: AliasInput = body::shape(req.body)?;
    let name = input.name.ok_or_else(|| ApiError::invalid("Name is required."))?;
    validate::alias_name(&name)?;
    let version = validate::alias_version(
        &input.function_version.ok_or_else(|| ApiError::invalid("FunctionVersion is required."))?,
    )?;
    let description = input.description.unwrap_or_default();
    validate::description(&description)?;
    let weights = input.routing_config.and_then(|r| r.additional_version_weights).unwrap_or_default();
    let weights = validate::weights(version, &weights)?;
    let alias = agent.control.create_alias(&function, NewAlias { name, version, weights, description }).await?;
    Ok(body::json(StatusCode::CREATED, &shapes::alias(&alias)))
}

/// GetAlias.
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("GetAlias")?;
    let alias = agent.control.alias(&function, &req.params[1])?;
    Ok(body::json(StatusCode::OK, &shapes::alias(&alias)))
}

/// ListAliases (`FunctionVersion`: those routing to that version).
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("ListAliases")?;
    let version = query_param(req.query, "FunctionVersion").map(|v| validate::alias_version(&v)).transpose()?;
    let marker = query_param(req.query, "Marker");
    let page = agent.control.list_aliases(&function, version, marker.as_deref(), max_items(req.query)?)?;
    let aliases: Vec<Value> = page.items.iter().map(|a| shapes::alias(a)).collect();
    let mut out = json!({ "Aliases": aliases });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}

/// UpdateAlias.
pub async fn update(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("UpdateAlias")?;
    let name = req.params[1].clone();
    members::check(&req.body, members::UPDATE_ALIAS, "UpdateAlias")?;
    let input: AliasInput = body::shape(req.body)?;
    let current = agent.control.alias(&function, &name)?;
    if input.revision_id.as_ref().is_some_and(|r| *r != current.revision_id) {
        // Before the values are checked against an alias the caller has not seen.
        return Err(crate::agent::store::StoreError::RevisionMismatch.into());
    }
    let version = input.function_version.map(|v| validate::alias_version(&v)).transpose()?;
    if let Some(d) = &input.description {
        validate::description(d)?;
    }
    // Weights are checked against the version the alias will point to.
    let target = version.unwrap_or(current.version);
    let weights = match input.routing_config {
        Some(r) => Some(validate::weights(target, &r.additional_version_weights.unwrap_or_default())?),
        None if version.is_some() => {
            let kept: BTreeMap<String, f64> = current.weights.iter().map(|(v, w)| (v.to_string(), *w)).collect();
            Some(validate::weights(target, &kept)?)
        }
        None => None,
    };
    let patch = AliasPatch { version, weights, description: input.description };
    let alias = agent.control.update_alias(&function, &name, patch, input.revision_id).await?;
    Ok(body::json(StatusCode::OK, &shapes::alias(&alias)))
}

/// DeleteAlias (204).
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("DeleteAlias")?;
    agent.control.delete_alias(&function, &req.params[1]).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}
