//! Concurrency: reserved (Put/Get/DeleteFunctionConcurrency) and provisioned
//! (Put/Get/Delete/ListProvisionedConcurrencyConfig(s)).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, only_query, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, shapes, Req};
use crate::agent::functions::validate;
use crate::agent::ids::qualified_arn;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ReservedInput {
    reserved_concurrent_executions: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ProvisionedInput {
    provisioned_concurrent_executions: Option<i64>,
}

/// PutFunctionConcurrency.
pub async fn put_reserved(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("PutFunctionConcurrency")?;
    members::check(&req.body, members::PUT_FUNCTION_CONCURRENCY, "PutFunctionConcurrency")?;
    let input: ReservedInput = body::shape(req.body)?;
    let n = validate::reserved(
        input
            .reserved_concurrent_executions
            .ok_or_else(|| ApiError::invalid("ReservedConcurrentExecutions is required."))?,
    )?;
    agent.control.set_reserved(&name, Some(n)).await?;
    Ok(body::json(StatusCode::OK, &json!({ "ReservedConcurrentExecutions": n })))
}

/// GetFunctionConcurrency (`{}` when none is reserved).
pub fn get_reserved(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("GetFunctionConcurrency")?;
    let out = match agent.control.meta(&name)?.reserved {
        Some(n) => json!({ "ReservedConcurrentExecutions": n }),
        None => json!({}),
    };
    Ok(body::json(StatusCode::OK, &out))
}

/// DeleteFunctionConcurrency (204).
pub async fn delete_reserved(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("DeleteFunctionConcurrency")?;
    agent.control.set_reserved(&name, None).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// PutProvisionedConcurrencyConfig (202).
pub async fn put_provisioned(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    members::check(&req.body, members::PUT_PROVISIONED, "PutProvisionedConcurrencyConfig")?;
    let input: ProvisionedInput = body::shape(req.body)?;
    let n = validate::provisioned(
        input
            .provisioned_concurrent_executions
            .ok_or_else(|| ApiError::invalid("ProvisionedConcurrentExecutions is required."))?,
    )?;
    let status = agent.control.set_provisioned(&r, n).await?;
    Ok(body::json(StatusCode::ACCEPTED, &shapes::provisioned(&status)))
}

/// GetProvisionedConcurrencyConfig, or with `?List=ALL` ListProvisionedConcurrencyConfigs.
pub fn get_provisioned(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    if query_param(req.query, "List").as_deref() == Some("ALL") {
        only_query(req.query, &["List", "Marker", "MaxItems"], "ListProvisionedConcurrencyConfigs")?;
        let name = req.unqualified("ListProvisionedConcurrencyConfigs")?;
        let configs: Vec<Value> = agent
            .control
            .list_provisioned(&name)?
            .iter()
            .map(|(qualifier, status)| {
                let mut item = shapes::provisioned(status);
                item["FunctionArn"] = json!(qualified_arn(&name, qualifier));
                item
            })
            .collect();
        return Ok(body::json(StatusCode::OK, &json!({ "ProvisionedConcurrencyConfigs": configs })));
    }
    only_query(req.query, &["Qualifier"], "GetProvisionedConcurrencyConfig")?;
    let status = agent.control.provisioned(&req.function()?)?;
    Ok(body::json(StatusCode::OK, &shapes::provisioned(&status)))
}

/// DeleteProvisionedConcurrencyConfig (204).
pub async fn delete_provisioned(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    agent.control.remove_provisioned(&req.function()?).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}
