//! The account: GetAccountSettings, for this host.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::body::{self, HttpResponse};
use super::error::ApiError;
use super::Req;
use crate::agent::limits;
use crate::agent::Agent;

/// GetAccountSettings: the host's concurrency as the account's, code size limits and usage.
pub fn get(agent: &Arc<Agent>, _req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let settings = agent.control.account()?;
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "AccountLimit": {
                "TotalCodeSize": limits::TOTAL_CODE_BYTES,
                "CodeSizeUnzipped": limits::MAX_UNZIPPED_BYTES,
                "CodeSizeZipped": limits::MAX_ZIPPED_BYTES,
                "ConcurrentExecutions": settings.concurrent,
                "UnreservedConcurrentExecutions": settings.unreserved,
            },
            "AccountUsage": {
                "TotalCodeSize": settings.usage.total_code_bytes,
                "FunctionCount": settings.usage.functions,
            },
        }),
    ))
}
