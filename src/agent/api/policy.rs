//! Resource-based policies: AddPermission, RemovePermission, GetPolicy
//! (`/2015-03-31/functions/{name}/policy`).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::body::{self, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, Req};
use crate::agent::functions::policy::Permission;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PermissionInput {
    statement_id: Option<String>,
    action: Option<String>,
    principal: Option<String>,
    source_arn: Option<String>,
    source_account: Option<String>,
    function_url_auth_type: Option<String>,
    revision_id: Option<String>,
}

/// AddPermission (201, the statement as a JSON string).
pub async fn add(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    members::check(&req.body, members::ADD_PERMISSION, "AddPermission")?;
    let input: PermissionInput = body::shape(req.body)?;
    let required = |v: Option<String>, name: &str| v.ok_or_else(|| ApiError::invalid(format!("{name} is required.")));
    let permission = Permission {
        sid: required(input.statement_id, "StatementId")?,
        action: required(input.action, "Action")?,
        principal: required(input.principal, "Principal")?,
        source_arn: input.source_arn,
        source_account: input.source_account,
        url_auth_type: input.function_url_auth_type,
    };
    let statement = agent.control.add_permission(&r, permission, input.revision_id).await?;
    Ok(body::json(StatusCode::CREATED, &json!({ "Statement": statement.to_string() })))
}

/// RemovePermission (204).
pub async fn remove(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    let revision = query_param(req.query, "RevisionId");
    agent.control.remove_permission(&r, &req.params[1], revision).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// GetPolicy (the policy as a JSON string, and its revision id).
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let (policy, revision) = agent.control.policy(&req.function()?)?;
    Ok(body::json(StatusCode::OK, &json!({ "Policy": policy.to_string(), "RevisionId": revision })))
}
