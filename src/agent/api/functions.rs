//! Functions: CreateFunction, GetFunction, GetFunctionConfiguration, ListFunctions,
//! UpdateFunctionCode, UpdateFunctionConfiguration, DeleteFunction, and Ember's own code zip
//! and log tail.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, max_items, query_param, HttpResponse};
use super::error::ApiError;
use super::members;
use super::shapes;
use super::Req;
use crate::agent::functions::validate;
use crate::agent::ids;
use crate::agent::limits;
use crate::agent::store::{ConfigPatch, NewFunction};
use crate::agent::Agent;

/// What `GET .../logs` returns without `?bytes=`, and the most it returns.
const DEFAULT_LOG_BYTES: usize = 64 * 1024;
const MAX_LOG_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateInput {
    function_name: Option<String>,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    code: Option<CodeInput>,
    description: Option<String>,
    timeout: Option<i64>,
    memory_size: Option<i64>,
    publish: Option<bool>,
    environment: Option<EnvironmentInput>,
    tags: Option<BTreeMap<String, String>>,
    layers: Option<Vec<String>>,
    architectures: Option<Vec<String>>,
    ephemeral_storage: Option<EphemeralStorageInput>,
    snap_start: Option<SnapStartInput>,
    dead_letter_config: Option<DeadLetterInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DeadLetterInput {
    target_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CodeInput {
    zip_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EnvironmentInput {
    variables: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EphemeralStorageInput {
    size: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SnapStartInput {
    apply_on: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateConfigurationInput {
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<i64>,
    memory_size: Option<i64>,
    environment: Option<EnvironmentInput>,
    runtime: Option<String>,
    ephemeral_storage: Option<EphemeralStorageInput>,
    revision_id: Option<String>,
    layers: Option<Vec<String>>,
    snap_start: Option<SnapStartInput>,
    dead_letter_config: Option<DeadLetterInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateCodeInput {
    zip_file: Option<String>,
    publish: Option<bool>,
    dry_run: Option<bool>,
    revision_id: Option<String>,
    architectures: Option<Vec<String>>,
}

/// A zip as the API carries it: base64.
pub fn decode_zip(b64: &str) -> Result<Vec<u8>, ApiError> {
    if b64.len() > limits::MAX_CODE_REQUEST {
        return Err(ApiError::too_large(crate::agent::codezip::CodeError::ZippedTooLarge.to_string()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::bad_content("Could not parse request body into json: ZipFile is not valid base64"))
}

/// `DeadLetterConfig` as given: `Some(None)` removes it (an empty or absent `TargetArn`).
fn dead_letter(agent: &Agent, input: Option<DeadLetterInput>) -> Result<Option<Option<String>>, ApiError> {
    let Some(input) = input else { return Ok(None) };
    let arn = input.target_arn.unwrap_or_default();
    Ok(Some(validate::dead_letter(&arn, agent.consumers.is_some())?))
}

fn snap_start(input: Option<SnapStartInput>) -> Result<Option<bool>, ApiError> {
    Ok(input.and_then(|s| s.apply_on).map(|a| validate::snap_start(&a)).transpose()?)
}

/// CreateFunction (201).
pub async fn create(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    members::check(&req.body, members::CREATE_FUNCTION, "CreateFunction")?;
    let input: CreateInput = body::shape(req.body)?;
    let raw_name = input.function_name.ok_or_else(|| ApiError::invalid("FunctionName is required."))?;
    let name = match ids::FunctionRef::parse(&raw_name) {
        Ok(r) if r.qualifier.is_some() => {
            return Err(ApiError::invalid("A qualifier is not allowed in CreateFunction's FunctionName."))
        }
        Ok(r) => r.name,
        Err(_) => {
            validate::function_name(&raw_name)?;
            raw_name
        }
    };
    let runtime = input.runtime.ok_or_else(|| ApiError::invalid("Runtime is required for .zip file packages."))?;
    validate::runtime(&runtime)?;
    let role = input.role.ok_or_else(|| ApiError::invalid("Role is required."))?;
    validate::role(&role)?;
    let handler = input.handler.unwrap_or_default();
    validate::handler(&runtime, &handler)?;
    let description = input.description.unwrap_or_default();
    validate::description(&description)?;
    let environment = input.environment.and_then(|e| e.variables).unwrap_or_default();
    validate::environment(&environment)?;
    validate::architectures(&input.architectures.unwrap_or_default())?;
    let layers = input.layers.unwrap_or_default();
    validate::layers(&layers)?;
    let tags = input.tags.unwrap_or_default();
    validate::tags(&tags)?;
    let snap_start = snap_start(input.snap_start)?.unwrap_or(false);
    if snap_start {
        validate::snap_start_runtime(&runtime)?;
    }
    let new = NewFunction {
        name,
        runtime,
        handler,
        role,
        description,
        memory_mib: validate::memory(input.memory_size.unwrap_or(limits::DEFAULT_MEMORY_MIB.into()))?,
        timeout_s: validate::timeout(input.timeout.unwrap_or(limits::DEFAULT_TIMEOUT_S.into()))?,
        ephemeral_mib: validate::ephemeral(
            input.ephemeral_storage.and_then(|e| e.size).unwrap_or(limits::DEFAULT_EPHEMERAL_MIB.into()),
        )?,
        environment,
        snap_start,
        dead_letter: dead_letter(agent, input.dead_letter_config)?.flatten(),
        layers,
        tags,
    };
    let zip_b64 = input.code.and_then(|c| c.zip_file).ok_or_else(|| ApiError::invalid("Code.ZipFile is required."))?;
    let zip = decode_zip(&zip_b64)?;
    drop(zip_b64);
    let (latest, published) = agent.control.create(new, zip, input.publish.unwrap_or(false)).await?;
    let shown = published.unwrap_or(latest);
    Ok(body::json(StatusCode::CREATED, &shapes::configuration(&shown, &shown.arn())))
}

/// ListFunctions.
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let all = match query_param(req.query, "FunctionVersion").as_deref() {
        None => false,
        Some("ALL") => true,
        Some(other) => {
            return Err(
                validate::constraint(other, "functionVersion", "Member must satisfy enum value set: [ALL]").into()
            )
        }
    };
    let marker = query_param(req.query, "Marker");
    let page = agent.control.list(marker.as_deref(), max_items(req.query)?, all)?;
    let functions: Vec<Value> = page.items.iter().map(|f| shapes::configuration(f, &f.arn())).collect();
    let mut out = json!({ "Functions": functions });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(body::json(StatusCode::OK, &out))
}

/// GetFunction.
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let r = req.function()?;
    let shown = agent.control.get(&r)?;
    let meta = agent.control.meta(&r.name)?;
    let location = format!(
        "http://{}/2015-03-31/functions/{}/code?Qualifier={}",
        req.host(),
        shown.config.name,
        shown.config.version.to_string().replace('$', "%24")
    );
    let mut out = json!({
        "Configuration": shapes::configuration(&shown.config, &shown.arn),
        "Code": { "RepositoryType": "S3", "Location": location },
    });
    if !meta.tags.is_empty() {
        out["Tags"] = json!(meta.tags);
    }
    if let Some(n) = meta.reserved {
        out["Concurrency"] = json!({ "ReservedConcurrentExecutions": n });
    }
    Ok(body::json(StatusCode::OK, &out))
}

/// GetFunctionConfiguration.
pub fn get_configuration(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let shown = agent.control.get(&req.function()?)?;
    Ok(body::json(StatusCode::OK, &shapes::configuration(&shown.config, &shown.arn)))
}

/// DeleteFunction (204): the function, or with a version qualifier that version.
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    agent.control.delete(&req.function()?).await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// UpdateFunctionConfiguration.
pub async fn update_configuration(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("UpdateFunctionConfiguration")?;
    members::check(&req.body, members::UPDATE_FUNCTION_CONFIGURATION, "UpdateFunctionConfiguration")?;
    let input: UpdateConfigurationInput = body::shape(req.body)?;
    let current = agent.control.get(&ids::FunctionRef { name: name.clone(), qualifier: None })?.config;
    if let Some(runtime) = &input.runtime {
        validate::runtime(runtime)?;
    }
    if let Some(role) = &input.role {
        validate::role(role)?;
    }
    let runtime = input.runtime.as_deref().unwrap_or(&current.runtime);
    validate::handler(runtime, input.handler.as_deref().unwrap_or(&current.handler))?;
    if let Some(description) = &input.description {
        validate::description(description)?;
    }
    if let Some(layers) = &input.layers {
        validate::layers(layers)?;
    }
    let environment = input.environment.map(|e| e.variables.unwrap_or_default());
    if let Some(vars) = &environment {
        validate::environment(vars)?;
    }
    let patch = ConfigPatch {
        runtime: input.runtime,
        handler: input.handler,
        role: input.role,
        description: input.description,
        memory_mib: input.memory_size.map(validate::memory).transpose()?,
        timeout_s: input.timeout.map(validate::timeout).transpose()?,
        ephemeral_mib: input.ephemeral_storage.and_then(|e| e.size).map(validate::ephemeral).transpose()?,
        environment,
        snap_start: snap_start(input.snap_start)?,
        dead_letter: dead_letter(agent, input.dead_letter_config)?,
        layers: input.layers,
    };
    let config = agent.control.update_config(&name, patch, input.revision_id).await?;
    Ok(body::json(StatusCode::OK, &shapes::configuration(&config, &config.arn())))
}

/// UpdateFunctionCode (with `Publish`, answers the new version; with `DryRun`, what the
/// function would become).
pub async fn update_code(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let name = req.unqualified("UpdateFunctionCode")?;
    members::check(&req.body, members::UPDATE_FUNCTION_CODE, "UpdateFunctionCode")?;
    let input: UpdateCodeInput = body::shape(req.body)?;
    validate::architectures(&input.architectures.unwrap_or_default())?;
    let zip =
        decode_zip(&input.zip_file.ok_or_else(|| ApiError::invalid("Please provide a source for function code."))?)?;
    let config = if input.dry_run.unwrap_or(false) {
        agent.control.check_code(&name, zip).await?
    } else {
        agent.control.update_code(&name, zip, input.revision_id, input.publish.unwrap_or(false)).await?
    };
    Ok(body::json(StatusCode::OK, &shapes::configuration(&config, &config.arn())))
}

/// Ember's own: the zip of a version's code.
pub async fn code_zip(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let zip = agent.control.code_zip(&req.function()?).await?;
    Ok(body::bytes("application/zip", zip))
}

/// Ember's own: the end of a function's log, as text (`?bytes=N`).
pub async fn logs(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let bytes = match query_param(req.query, "bytes") {
        None => DEFAULT_LOG_BYTES,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ApiError::invalid(format!("bytes must be a number of bytes, not {s}")))?
            .min(MAX_LOG_BYTES),
    };
    let name = req.function()?.name;
    agent.control.meta(&name)?;
    let logs = agent.logs.clone();
    let log = tokio::task::spawn_blocking(move || logs.read(&name, bytes).map_err(|e| (name, e)))
        .await
        .map_err(|e| ApiError::service(format!("internal error: {e}")))?
        .map_err(|(name, e)| ApiError::service(format!("cannot read the log of {name}: {e}")))?;
    Ok(body::bytes("text/plain; charset=utf-8", log))
}
