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
use crate::agent::store::{ConfigPatch, ImageConfig, NewFunction};
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
    package_type: Option<String>,
    image_config: Option<ImageConfigInput>,
}

/// `ImageConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ImageConfigInput {
    entry_point: Option<Vec<String>>,
    command: Option<Vec<String>>,
    working_directory: Option<String>,
}

impl ImageConfigInput {
    fn validate(self) -> Result<ImageConfig, ApiError> {
        for list in [&self.entry_point, &self.command].into_iter().flatten() {
            if list.len() > 1500 || list.iter().any(|w| w.len() > 1024) {
                return Err(ApiError::invalid(
                    "ImageConfig's EntryPoint and Command take at most 1500 strings of 1024 characters.",
                ));
            }
        }
        if let Some(dir) = &self.working_directory {
            if dir.len() > 1000 || (!dir.is_empty() && !dir.starts_with('/')) {
                return Err(ApiError::invalid(
                    "ImageConfig.WorkingDirectory must be an absolute path of at most 1000 characters.",
                ));
            }
        }
        Ok(ImageConfig {
            entry_point: self.entry_point,
            command: self.command,
            working_directory: self.working_directory.filter(|d| !d.is_empty()),
        })
    }
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
    image_uri: Option<String>,
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
    image_config: Option<ImageConfigInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateCodeInput {
    zip_file: Option<String>,
    image_uri: Option<String>,
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
    let image = match input.package_type.as_deref() {
        None | Some("Zip") => false,
        Some("Image") => true,
        Some(other) => {
            return Err(
                validate::constraint(other, "packageType", "Member must satisfy enum value set: [Image, Zip]").into()
            )
        }
    };
    let (runtime, handler) = if image {
        if input.runtime.is_some() || input.handler.is_some() {
            return Err(ApiError::invalid(
                "Runtime and Handler are not supported for functions with the Image package type: the image says how \
                 to run it (override with ImageConfig).",
            ));
        }
        (String::new(), String::new())
    } else {
        if input.image_config.is_some() {
            return Err(ApiError::invalid("ImageConfig is only supported for functions with the Image package type."));
        }
        let runtime = input.runtime.ok_or_else(|| ApiError::invalid("Runtime is required for .zip file packages."))?;
        validate::runtime(&runtime)?;
        let handler = input.handler.unwrap_or_default();
        validate::handler(&runtime, &handler)?;
        (runtime, handler)
    };
    let role = input.role.ok_or_else(|| ApiError::invalid("Role is required."))?;
    validate::role(&role)?;
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
    if snap_start && image {
        return Err(ApiError::invalid(
            "SnapStart is not supported for functions with the Image package type on this host.",
        ));
    }
    if snap_start {
        validate::snap_start_runtime(&runtime)?;
    }
    if image && !layers.is_empty() {
        return Err(ApiError::invalid(crate::agent::store::IMAGE_LAYERS));
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
    let code = input.code.unwrap_or_default();
    let publish = input.publish.unwrap_or(false);
    let (latest, published) = if image {
        if code.zip_file.is_some() {
            return Err(ApiError::invalid("Code.ZipFile is not supported for functions with the Image package type."));
        }
        let uri =
            code.image_uri.ok_or_else(|| ApiError::invalid("Code.ImageUri is required for the Image package type."))?;
        let overrides = input.image_config.map(ImageConfigInput::validate).transpose()?.unwrap_or_default();
        agent.control.create_image(new, uri, overrides, publish).await?
    } else {
        if code.image_uri.is_some() {
            return Err(ApiError::invalid(
                "Code.ImageUri is only supported for functions with the Image package type.",
            ));
        }
        let zip_b64 = code.zip_file.ok_or_else(|| ApiError::invalid("Code.ZipFile is required."))?;
        let zip = decode_zip(&zip_b64)?;
        drop(zip_b64);
        agent.control.create(new, zip, publish).await?
    };
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
    let code = match &shown.config.image {
        Some(image) => json!({
            "RepositoryType": "ECR",
            "ImageUri": image.uri,
            "ResolvedImageUri": image.resolved_uri,
        }),
        None => json!({ "RepositoryType": "S3", "Location": location }),
    };
    let mut out = json!({ "Configuration": shapes::configuration(&shown.config, &shown.arn), "Code": code });
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
    if current.image.is_none() {
        let runtime = input.runtime.as_deref().unwrap_or(&current.runtime);
        validate::handler(runtime, input.handler.as_deref().unwrap_or(&current.handler))?;
    }
    let image_config = input.image_config.map(ImageConfigInput::validate).transpose()?;
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
        image_config,
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
    if let Some(uri) = input.image_uri {
        if input.zip_file.is_some() {
            return Err(ApiError::invalid("Please provide either ZipFile or ImageUri, not both."));
        }
        if input.dry_run.unwrap_or(false) {
            return Err(ApiError::invalid("DryRun is not supported with ImageUri on this host."));
        }
        let config = agent.control.update_image(&name, uri, input.revision_id, input.publish.unwrap_or(false)).await?;
        return Ok(body::json(StatusCode::OK, &shapes::configuration(&config, &config.arn())));
    }
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

/// Ember's own: the container-image pulls under way (a CreateFunction or UpdateFunctionCode
/// waiting for its image), with their progress, for the CLI's progress lines.
pub fn image_pulls(agent: &Arc<Agent>, _req: Req<'_>) -> Result<HttpResponse, ApiError> {
    Ok(body::json(StatusCode::OK, &serde_json::json!({ "Pulls": agent.control.image_pulls() })))
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
