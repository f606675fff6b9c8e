//! Tags: TagResource, UntagResource, ListTags (`/2017-03-31/tags/{arn}`), on functions.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::body::{self, query_params, HttpResponse};
use super::error::ApiError;
use super::{members, Req};
use crate::agent::functions::validate;
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TagInput {
    tags: Option<BTreeMap<String, String>>,
}

/// TagResource (204).
pub async fn tag(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    members::check(&req.body, members::TAG_RESOURCE, "TagResource")?;
    let input: TagInput = body::shape(req.body)?;
    let tags = input.tags.ok_or_else(|| ApiError::invalid("Tags are required."))?;
    validate::tags(&tags)?;
    agent.control.tag(&req.params[0], tags).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// UntagResource (204), `?tagKeys=...` repeated.
pub async fn untag(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let keys = query_params(req.query, "tagKeys");
    if keys.is_empty() {
        return Err(ApiError::invalid("TagKeys are required."));
    }
    for key in &keys {
        validate::tag_key(key)?;
    }
    agent.control.untag(&req.params[0], keys).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// ListTags.
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let tags = agent.control.tags(&req.params[0])?;
    Ok(body::json(StatusCode::OK, &json!({ "Tags": tags })))
}
