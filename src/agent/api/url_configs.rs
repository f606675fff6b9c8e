//! Function URL configs: CreateFunctionUrlConfig, GetFunctionUrlConfig, UpdateFunctionUrlConfig,
//! DeleteFunctionUrlConfig, ListFunctionUrlConfigs (`/2021-10-31/functions/{name}/url`).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, Req};
use crate::agent::functions::urls::{function_url, url_function_arn, UrlInput};
use crate::agent::functions::validate;
use crate::agent::store::urls::UrlConfig;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CorsInput {
    allow_credentials: Option<bool>,
    allow_headers: Option<Vec<String>>,
    allow_methods: Option<Vec<String>>,
    allow_origins: Option<Vec<String>>,
    expose_headers: Option<Vec<String>>,
    max_age: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UrlConfigInput {
    auth_type: Option<String>,
    cors: Option<Value>,
    invoke_mode: Option<String>,
}

/// Checks a `Cors` object; returns it as stored (null for an empty one).
fn cors(value: Value) -> Result<Value, ApiError> {
    if value.is_null() {
        return Ok(value);
    }
    let c: CorsInput = body::shape(value.clone())?;
    if let Some(age) = c.max_age {
        validate::cors_max_age(age)?;
    }
    for (field, list) in [
        ("AllowHeaders", &c.allow_headers),
        ("AllowMethods", &c.allow_methods),
        ("AllowOrigins", &c.allow_origins),
        ("ExposeHeaders", &c.expose_headers),
    ] {
        if list.as_ref().is_some_and(|l| l.iter().any(|v| v.is_empty() || v.len() > 1024)) {
            return Err(ApiError::invalid(format!("Cors.{field}: each value must be 1 to 1024 characters.")));
        }
    }
    let _ = c.allow_credentials;
    Ok(if value.as_object().is_some_and(|o| o.is_empty()) { Value::Null } else { value })
}

fn input(req: Req<'_>, operation: &str) -> Result<UrlInput, ApiError> {
    members::check(&req.body, members::FUNCTION_URL_CONFIG, operation)?;
    let input: UrlConfigInput = body::shape(req.body)?;
    if let Some(a) = &input.auth_type {
        validate::url_auth_type(a)?;
    }
    if let Some(m) = &input.invoke_mode {
        validate::url_invoke_mode(m)?;
    }
    Ok(UrlInput { auth_type: input.auth_type, cors: input.cors.map(cors).transpose()?, invoke_mode: input.invoke_mode })
}

/// A URL config as Lambda shows it (`LastModifiedTime` but on Create).
fn shape(u: &UrlConfig, with_last_modified: bool) -> Value {
    let mut out = json!({
        "FunctionUrl": function_url(&u.url_id),
        "FunctionArn": url_function_arn(u),
        "AuthType": u.auth_type,
        "CreationTime": u.created,
        "InvokeMode": u.invoke_mode,
    });
    if !u.cors.is_null() {
        out["Cors"] = u.cors.clone();
    }
    if with_last_modified {
        out["LastModifiedTime"] = json!(u.last_modified);
    }
    out
}

/// CreateFunctionUrlConfig (201).
pub async fn create(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    let input = input(req, "CreateFunctionUrlConfig")?;
    let url = agent.control.create_url(&r, input).await?;
    Ok(body::json(StatusCode::CREATED, &shape(&url, false)))
}

/// GetFunctionUrlConfig.
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let url = agent.control.url(&req.function()?)?;
    Ok(body::json(StatusCode::OK, &shape(&url, true)))
}

/// UpdateFunctionUrlConfig.
pub async fn update(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    let input = input(req, "UpdateFunctionUrlConfig")?;
    let url = agent.control.update_url(&r, input).await?;
    Ok(body::json(StatusCode::OK, &shape(&url, true)))
}

/// DeleteFunctionUrlConfig (204).
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    agent.control.delete_url(&req.function()?).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// ListFunctionUrlConfigs.
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let function = req.unqualified("ListFunctionUrlConfigs")?;
    let marker = query_param(req.query, "Marker");
    let page = agent.control.list_urls(&function, marker.as_deref(), max_items(req.query)?)?;
    let urls: Vec<Value> = page.items.iter().map(|u| shape(u, true)).collect();
    let mut out = json!({ "FunctionUrlConfigs": urls });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}
