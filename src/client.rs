//! `ember` as a client of the agent: Lambda's operations over the agent's Unix socket (`--socket`,
//! default `$EMBER_SOCKET` or `/run/ember/ember.sock`) or loopback TCP (`--endpoint
//! http://127.0.0.1:PORT`, default `$EMBER_ENDPOINT`).
//!
//! Each subcommand's flags become a request ([`plan`]), built without talking to the agent, then
//! sent. Answers are printed as pretty JSON (an empty answer, as deletions have, prints nothing);
//! an error is printed as `<Type>: <message>` on stderr with exit status 1. `invoke` prints the
//! function's response as is and exits 2 when the function failed (`X-Amz-Function-Error`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

/// The agent's socket when neither `--socket`, `--endpoint` nor the environment says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ember/ember.sock";
/// The role given to functions created without `--role`.
const DEFAULT_ROLE: &str = "arn:aws:iam::000000000000:role/ember";
/// Exit status when the call failed (connection, API error).
const EXIT_ERROR: u8 = 1;
/// Exit status of `invoke` when the function failed.
const EXIT_FUNCTION_ERROR: u8 = 2;

/// The API version in the paths of functions, versions and aliases.
const FUNCTIONS_API: &str = "2015-03-31";
/// The API version in the paths of layers.
const LAYERS_API: &str = "2018-10-31";
/// The API version in the paths of Put/DeleteFunctionConcurrency.
const CONCURRENCY_API: &str = "2017-10-31";
/// The API version in the path of GetFunctionConcurrency.
const GET_CONCURRENCY_API: &str = "2019-09-30";
/// The API version in the paths of event invoke configs.
const EVENT_CONFIG_API: &str = "2019-09-25";
/// The API version in the paths of function URL configs.
const URL_API: &str = "2021-10-31";
/// GetAccountSettings.
const ACCOUNT_SETTINGS_PATH: &str = "/2016-08-19/account-settings/";
/// The most a list call's `MaxItems` may ask for (Lambda's limit).
const MAX_ITEMS_PER_CALL: u32 = 10_000;

/// Where the agent is.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// The agent's Unix socket [default: $EMBER_SOCKET, else /run/ember/ember.sock].
    #[arg(long, conflicts_with = "endpoint")]
    socket: Option<PathBuf>,
    /// The agent's HTTP endpoint, e.g. http://127.0.0.1:9000 [default: $EMBER_ENDPOINT].
    #[arg(long)]
    endpoint: Option<String>,
}

/// The client subcommands (flattened into `ember`'s own).
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Create a function from a zip (Lambda's CreateFunction).
    CreateFunction(CreateArgs),
    /// Replace a function's code (UpdateFunctionCode).
    UpdateFunctionCode(UpdateCodeArgs),
    /// Change a function's configuration (UpdateFunctionConfiguration).
    UpdateFunctionConfiguration(UpdateConfigArgs),
    /// Invoke a function; prints its response (exit status 2 if the function failed).
    Invoke(InvokeArgs),
    /// List the functions.
    ListFunctions(ListArgs),
    /// Show a function (or one of its versions or aliases, with --qualifier).
    GetFunction(QualifiedArgs),
    /// Delete a function (or one of its versions, with --qualifier).
    DeleteFunction(QualifiedArgs),
    /// Print the end of a function's log.
    Logs(LogsArgs),
    /// Publish a version of a function's $LATEST (PublishVersion).
    PublishVersion(PublishVersionArgs),
    /// List a function's versions, $LATEST first (ListVersionsByFunction).
    ListVersionsByFunction(ListVersionsArgs),
    /// Create an alias of a function's version (CreateAlias).
    CreateAlias(CreateAliasArgs),
    /// Change an alias's version, routing or description (UpdateAlias).
    UpdateAlias(UpdateAliasArgs),
    /// List a function's aliases (ListAliases).
    ListAliases(ListAliasesArgs),
    /// Show an alias (GetAlias).
    GetAlias(AliasArgs),
    /// Delete an alias (DeleteAlias).
    DeleteAlias(AliasArgs),
    /// Publish a layer version from a zip (PublishLayerVersion).
    PublishLayerVersion(PublishLayerArgs),
    /// Reserve concurrency for a function (PutFunctionConcurrency).
    PutFunctionConcurrency(PutConcurrencyArgs),
    /// Show a function's reserved concurrency (GetFunctionConcurrency).
    GetFunctionConcurrency(NameArgs),
    /// Remove a function's reserved concurrency (DeleteFunctionConcurrency).
    DeleteFunctionConcurrency(NameArgs),
    /// Show the host's limits and usage (GetAccountSettings).
    GetAccountSettings(Connect),
    /// Set how a function's asynchronous invocations are retried and where their outcomes go
    /// (PutFunctionEventInvokeConfig).
    PutFunctionEventInvokeConfig(EventConfigArgs),
    /// Show a function's event invoke config (GetFunctionEventInvokeConfig).
    GetFunctionEventInvokeConfig(QualifiedArgs),
    /// Remove a function's event invoke config (DeleteFunctionEventInvokeConfig).
    DeleteFunctionEventInvokeConfig(QualifiedArgs),
    /// Give a function (or alias) a URL (CreateFunctionUrlConfig).
    CreateFunctionUrlConfig(UrlConfigArgs),
    /// Show a function's URL (GetFunctionUrlConfig).
    GetFunctionUrlConfig(QualifiedArgs),
    /// Remove a function's URL (DeleteFunctionUrlConfig).
    DeleteFunctionUrlConfig(QualifiedArgs),
    /// Add a statement to a function's resource-based policy (AddPermission).
    AddPermission(AddPermissionArgs),
    /// Remove a statement from a function's policy (RemovePermission).
    RemovePermission(RemovePermissionArgs),
    /// Show a function's resource-based policy (GetPolicy).
    GetPolicy(QualifiedArgs),
    /// Schedules that invoke functions (EventBridge Scheduler's API).
    Schedule(ScheduleArgs),
    /// Feed a queue's messages to a function in batches (CreateEventSourceMapping).
    CreateEventSourceMapping(MappingArgs),
    /// Change an event source mapping (UpdateEventSourceMapping).
    UpdateEventSourceMapping(UpdateMappingArgs),
    /// Show an event source mapping (GetEventSourceMapping).
    GetEventSourceMapping(UuidArgs),
    /// Remove an event source mapping (DeleteEventSourceMapping).
    DeleteEventSourceMapping(UuidArgs),
    /// List event source mappings, of a function or a queue (ListEventSourceMappings).
    ListEventSourceMappings(ListMappingsArgs),
}

/// What an event source mapping sets (create and update).
#[derive(clap::Args, Debug)]
pub struct MappingSettings {
    /// Messages per batch (1-10000, default 10).
    #[arg(long)]
    batch_size: Option<i64>,
    /// Seconds to wait for a batch to fill (0-300).
    #[arg(long)]
    maximum_batching_window_in_seconds: Option<i64>,
    /// Batches run at once (2-1000).
    #[arg(long)]
    maximum_concurrency: Option<i64>,
    /// `ReportBatchItemFailures`: the function names the messages that failed.
    #[arg(long, value_name = "TYPE")]
    function_response_types: Vec<String>,
}

impl MappingSettings {
    fn body(&self, body: &mut Value) {
        set(body, "BatchSize", self.batch_size.map(Value::from));
        set(body, "MaximumBatchingWindowInSeconds", self.maximum_batching_window_in_seconds.map(Value::from));
        set(body, "ScalingConfig", self.maximum_concurrency.map(|n| json!({ "MaximumConcurrency": n })));
        if !self.function_response_types.is_empty() {
            body["FunctionResponseTypes"] = json!(self.function_response_types);
        }
    }
}

/// `create-event-source-mapping`.
#[derive(clap::Args, Debug)]
pub struct MappingArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function, version or alias (a name or ARN, qualified or not).
    #[arg(long)]
    function_name: String,
    /// The queue: arn:aws:sqs:<region>:<account>:<name> (a queue of the agent's broker).
    #[arg(long)]
    event_source_arn: String,
    /// Create it disabled.
    #[arg(long)]
    no_enabled: bool,
    #[command(flatten)]
    settings: MappingSettings,
}

/// `update-event-source-mapping`.
#[derive(clap::Args, Debug)]
pub struct UpdateMappingArgs {
    #[command(flatten)]
    connect: Connect,
    /// The mapping's UUID.
    #[arg(long)]
    uuid: String,
    /// Another function, version or alias.
    #[arg(long)]
    function_name: Option<String>,
    /// Enable (true) or disable (false) it.
    #[arg(long)]
    enabled: Option<bool>,
    #[command(flatten)]
    settings: MappingSettings,
}

/// A mapping by UUID.
#[derive(clap::Args, Debug)]
pub struct UuidArgs {
    #[command(flatten)]
    connect: Connect,
    /// The mapping's UUID.
    #[arg(long)]
    uuid: String,
}

/// `list-event-source-mappings`.
#[derive(clap::Args, Debug)]
pub struct ListMappingsArgs {
    #[command(flatten)]
    connect: Connect,
    /// Only this function's (a name or ARN).
    #[arg(long)]
    function_name: Option<String>,
    /// Only this queue's.
    #[arg(long)]
    event_source_arn: Option<String>,
}

/// `schedule`: a subcommand and where the agent is.
#[derive(clap::Args, Debug)]
pub struct ScheduleArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: ScheduleCommand,
}

/// The `schedule` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Create a schedule (CreateSchedule).
    Create(ScheduleSpec),
    /// Replace a schedule's settings (UpdateSchedule).
    Update(ScheduleSpec),
    /// Show a schedule (GetSchedule).
    Get(ScheduleName),
    /// Delete a schedule (DeleteSchedule).
    Delete(ScheduleName),
    /// List the schedules (ListSchedules, up to 100).
    List {
        /// Only names that start with this.
        #[arg(long)]
        name_prefix: Option<String>,
        /// Only ENABLED or DISABLED ones.
        #[arg(long)]
        state: Option<String>,
    },
}

/// A schedule's name.
#[derive(clap::Args, Debug)]
pub struct ScheduleName {
    /// The schedule's name.
    #[arg(long)]
    name: String,
}

/// What `schedule create` and `schedule update` set.
#[derive(clap::Args, Debug)]
pub struct ScheduleSpec {
    /// The schedule's name.
    #[arg(long)]
    name: String,
    /// `rate(N minutes|hours|days)`, `cron(min hour day-of-month month day-of-week year)` or
    /// `at(yyyy-mm-ddThh:mm:ss)`.
    #[arg(long)]
    schedule_expression: String,
    /// The IANA time zone of cron and at expressions [default: UTC].
    #[arg(long)]
    schedule_expression_timezone: Option<String>,
    /// The function (or version or alias) ARN to invoke.
    #[arg(long)]
    target_arn: String,
    /// The event, as JSON [default: {}].
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
    /// The role the target is invoked with (recorded).
    #[arg(long, default_value = "arn:aws:iam::000000000000:role/ember")]
    role_arn: String,
    /// ENABLED or DISABLED.
    #[arg(long)]
    state: Option<String>,
    /// What happens after the last run: NONE or DELETE.
    #[arg(long)]
    action_after_completion: Option<String>,
    /// Delay each run by up to this many minutes [default: none].
    #[arg(long)]
    flexible_time_window_minutes: Option<u32>,
    /// A description.
    #[arg(long)]
    description: Option<String>,
}

impl ScheduleSpec {
    /// The request body.
    fn body(&self) -> Value {
        let mut target = json!({ "Arn": self.target_arn, "RoleArn": self.role_arn });
        set(&mut target, "Input", self.input.as_deref().map(Value::from));
        let window = match self.flexible_time_window_minutes {
            Some(m) => json!({ "Mode": "FLEXIBLE", "MaximumWindowInMinutes": m }),
            None => json!({ "Mode": "OFF" }),
        };
        let mut body =
            json!({ "ScheduleExpression": self.schedule_expression, "Target": target, "FlexibleTimeWindow": window });
        set(&mut body, "ScheduleExpressionTimezone", self.schedule_expression_timezone.as_deref().map(Value::from));
        set(&mut body, "State", self.state.as_deref().map(Value::from));
        set(&mut body, "ActionAfterCompletion", self.action_after_completion.as_deref().map(Value::from));
        set(&mut body, "Description", self.description.as_deref().map(Value::from));
        body
    }
}

/// Subcommands that take a function name.
#[derive(clap::Args, Debug)]
pub struct NameArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name or ARN.
    #[arg(long)]
    function_name: String,
}

impl NameArgs {
    /// The function's path (under the functions API).
    fn path(&self) -> String {
        function_path(FUNCTIONS_API, &self.function_name)
    }
}

/// Subcommands that take a function name and a version or alias.
#[derive(clap::Args, Debug)]
pub struct QualifiedArgs {
    #[command(flatten)]
    function: NameArgs,
    /// A version or alias [default: $LATEST, or the ARN's qualifier].
    #[arg(long)]
    qualifier: Option<String>,
}

impl QualifiedArgs {
    /// The function's path followed by `rest`, with `?Qualifier=` when one is given.
    fn path(&self, rest: &str) -> String {
        with_query(format!("{}{rest}", self.function.path()), &[("Qualifier", self.qualifier.as_deref())])
    }
}

/// `--publish`: publish a version once the change is made.
#[derive(clap::Args, Debug)]
pub struct Publish {
    /// Also publish a version of the result.
    #[arg(long)]
    publish: bool,
}

impl Publish {
    fn apply(&self, body: &mut Value) {
        if self.publish {
            body["Publish"] = json!(true);
        }
    }
}

/// `--layers`.
#[derive(clap::Args, Debug)]
pub struct Layers {
    /// Layer version ARNs, in order (give the flag alone for none).
    #[arg(long, value_name = "ARN", num_args = 0..)]
    layers: Option<Vec<String>>,
}

impl Layers {
    fn apply(&self, body: &mut Value) {
        set(body, "Layers", self.layers.as_ref().map(|arns| json!(arns)));
    }
}

/// `--marker` and `--max-items` of the list subcommands; without them, every page is fetched.
#[derive(clap::Args, Debug)]
pub struct Paging {
    /// Start after this item (a NextMarker of an earlier answer).
    #[arg(long)]
    marker: Option<String>,
    /// At most this many items (the answer then has a NextMarker if there are more).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_items: Option<u32>,
}

/// `create-function`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name.
    #[arg(long)]
    function_name: String,
    /// provided.al2023, python3.11 or nodejs20.x (none for an image).
    #[arg(long)]
    runtime: Option<String>,
    /// The handler, e.g. handler.echo (python3.11); optional for provided.al2023, none for an
    /// image.
    #[arg(long)]
    handler: Option<String>,
    /// The deployment package (`fileb://` prefix accepted).
    #[arg(long, conflicts_with = "code")]
    zip_file: Option<String>,
    /// Zip (the default) or Image.
    #[arg(long, value_name = "Zip|Image")]
    package_type: Option<String>,
    /// The code as the aws CLI's shorthand spells it: `ImageUri=REGISTRY/REPO:TAG` (or
    /// `@sha256:...`) for an image.
    #[arg(long, value_name = "ImageUri=URI")]
    code: Option<String>,
    /// Memory in MB (128 to 10240) [default: 128].
    #[arg(long, allow_negative_numbers = true)]
    memory_size: Option<i64>,
    /// Timeout in seconds (1 to 900) [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    timeout: Option<i64>,
    /// /tmp in MB (512 to 10240) [default: 512].
    #[arg(long, allow_negative_numbers = true)]
    ephemeral_storage: Option<i64>,
    /// Environment variables.
    #[arg(long, value_name = "KEY=VALUE", num_args = 1..)]
    environment: Vec<String>,
    /// The execution role (stored, not used).
    #[arg(long, default_value = DEFAULT_ROLE)]
    role: String,
    /// A description.
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    publish: Publish,
    #[command(flatten)]
    layers: Layers,
    /// Tags.
    #[arg(long, value_name = "KEY=VALUE", num_args = 1..)]
    tags: Vec<String>,
}

/// `update-function-code`.
#[derive(clap::Args, Debug)]
pub struct UpdateCodeArgs {
    #[command(flatten)]
    function: NameArgs,
    /// The new deployment package (`fileb://` prefix accepted).
    #[arg(long, required_unless_present = "image_uri", conflicts_with = "image_uri")]
    zip_file: Option<String>,
    /// An image function's new image (its tag is resolved again).
    #[arg(long)]
    image_uri: Option<String>,
    #[command(flatten)]
    publish: Publish,
}

/// `update-function-configuration`.
#[derive(clap::Args, Debug)]
pub struct UpdateConfigArgs {
    #[command(flatten)]
    function: NameArgs,
    /// A new runtime.
    #[arg(long)]
    runtime: Option<String>,
    /// A new handler.
    #[arg(long)]
    handler: Option<String>,
    /// Memory in MB (128 to 10240).
    #[arg(long, allow_negative_numbers = true)]
    memory_size: Option<i64>,
    /// Timeout in seconds (1 to 900).
    #[arg(long, allow_negative_numbers = true)]
    timeout: Option<i64>,
    /// /tmp in MB (512 to 10240).
    #[arg(long, allow_negative_numbers = true)]
    ephemeral_storage: Option<i64>,
    /// Replaces all environment variables (give the flag alone to remove them all).
    #[arg(long, value_name = "KEY=VALUE", num_args = 0..)]
    environment: Option<Vec<String>>,
    /// A new execution role.
    #[arg(long)]
    role: Option<String>,
    /// A new description.
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    layers: Layers,
}

/// `invoke`.
#[derive(clap::Args, Debug)]
pub struct InvokeArgs {
    #[command(flatten)]
    target: QualifiedArgs,
    /// The event: JSON, or @FILE (or file://FILE) to read it from a file [default: {}].
    #[arg(long)]
    payload: Option<String>,
    /// Tail: print the end of the invocation's log on stderr.
    #[arg(long, value_parser = ["None", "Tail"])]
    log_type: Option<String>,
    /// RequestResponse (wait for the answer), Event (queue it) or DryRun (check only).
    #[arg(long, value_parser = ["RequestResponse", "Event", "DryRun"])]
    invocation_type: Option<String>,
    /// X-Amz-Client-Context: base64 JSON, passed to the function.
    #[arg(long)]
    client_context: Option<String>,
    /// Write the response here (and a summary to stdout) instead of printing it.
    outfile: Option<PathBuf>,
}

/// `list-functions`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(flatten)]
    paging: Paging,
}

/// `logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    function: NameArgs,
    /// How many bytes from the end of the log.
    #[arg(long, default_value_t = 65536)]
    bytes: usize,
}

/// `publish-version`.
#[derive(clap::Args, Debug)]
pub struct PublishVersionArgs {
    #[command(flatten)]
    function: NameArgs,
    /// Publish only if $LATEST's code has this SHA-256 (base64, as CodeSha256 shows it).
    #[arg(long)]
    code_sha256: Option<String>,
    /// The version's description.
    #[arg(long)]
    description: Option<String>,
    /// Publish only if $LATEST has this revision.
    #[arg(long)]
    revision_id: Option<String>,
}

/// `list-versions-by-function`.
#[derive(clap::Args, Debug)]
pub struct ListVersionsArgs {
    #[command(flatten)]
    function: NameArgs,
    #[command(flatten)]
    paging: Paging,
}

/// Subcommands that name an alias.
#[derive(clap::Args, Debug)]
pub struct AliasArgs {
    #[command(flatten)]
    function: NameArgs,
    /// The alias's name.
    #[arg(long)]
    name: String,
}

impl AliasArgs {
    fn path(&self) -> String {
        format!("{}/aliases/{}", self.function.path(), encode(&self.name))
    }
}

/// What create-alias and update-alias both set.
#[derive(clap::Args, Debug)]
pub struct AliasSettings {
    /// The alias's description.
    #[arg(long)]
    description: Option<String>,
    /// Another version's share of invocations: AdditionalVersionWeights={2=0.3}, or as JSON
    /// {"AdditionalVersionWeights":{"2":0.3}} (AdditionalVersionWeights={} for none).
    #[arg(long, value_name = "AdditionalVersionWeights={V=W}")]
    routing_config: Option<String>,
}

impl AliasSettings {
    fn apply(&self, body: &mut Value) -> Result<(), Failure> {
        set(body, "Description", self.description.as_deref().map(Value::from));
        if let Some(config) = &self.routing_config {
            body["RoutingConfig"] = json!({ "AdditionalVersionWeights": parse_routing_config(config)? });
        }
        Ok(())
    }
}

/// `create-alias`.
#[derive(clap::Args, Debug)]
pub struct CreateAliasArgs {
    #[command(flatten)]
    alias: AliasArgs,
    /// The version the alias points to.
    #[arg(long)]
    function_version: String,
    #[command(flatten)]
    settings: AliasSettings,
}

/// `update-alias`.
#[derive(clap::Args, Debug)]
pub struct UpdateAliasArgs {
    #[command(flatten)]
    alias: AliasArgs,
    /// A new version for the alias to point to.
    #[arg(long)]
    function_version: Option<String>,
    #[command(flatten)]
    settings: AliasSettings,
    /// Update only if the alias has this revision.
    #[arg(long)]
    revision_id: Option<String>,
}

/// `list-aliases`.
#[derive(clap::Args, Debug)]
pub struct ListAliasesArgs {
    #[command(flatten)]
    function: NameArgs,
    /// Only the aliases that route to this version.
    #[arg(long)]
    function_version: Option<String>,
    #[command(flatten)]
    paging: Paging,
}

/// `publish-layer-version`.
#[derive(clap::Args, Debug)]
pub struct PublishLayerArgs {
    #[command(flatten)]
    connect: Connect,
    /// The layer's name or ARN.
    #[arg(long)]
    layer_name: String,
    /// The layer's zip (`fileb://` prefix accepted).
    #[arg(long)]
    zip_file: String,
    /// The runtimes the layer is for.
    #[arg(long, value_name = "RUNTIME", num_args = 1..)]
    compatible_runtimes: Vec<String>,
    /// The architectures the layer is for (x86_64, arm64).
    #[arg(long, value_name = "ARCHITECTURE", num_args = 1..)]
    compatible_architectures: Vec<String>,
    /// The version's description.
    #[arg(long)]
    description: Option<String>,
    /// The layer's license.
    #[arg(long)]
    license_info: Option<String>,
}

/// `put-function-concurrency`.
#[derive(clap::Args, Debug)]
pub struct PutConcurrencyArgs {
    #[command(flatten)]
    function: NameArgs,
    /// How many instances to reserve for the function (0 stops it from being invoked).
    #[arg(long, allow_negative_numbers = true)]
    reserved_concurrent_executions: i64,
}

/// `put-function-event-invoke-config`.
#[derive(clap::Args, Debug)]
pub struct EventConfigArgs {
    #[command(flatten)]
    function: QualifiedArgs,
    /// Retries of a function error (0-2, default 2).
    #[arg(long, allow_negative_numbers = true)]
    maximum_retry_attempts: Option<i64>,
    /// How old an event may grow before it is dropped (60-21600 s, default 21600).
    #[arg(long, allow_negative_numbers = true)]
    maximum_event_age_in_seconds: Option<i64>,
    /// Where outcomes go, as JSON: `{"OnSuccess":{"Destination":ARN},"OnFailure":{"Destination":ARN}}`.
    #[arg(long, value_name = "JSON")]
    destination_config: Option<String>,
}

/// `create-function-url-config`.
#[derive(clap::Args, Debug)]
pub struct UrlConfigArgs {
    #[command(flatten)]
    function: QualifiedArgs,
    /// Who may call the URL: NONE (anyone the function's policy lets in).
    #[arg(long)]
    auth_type: String,
    /// CORS, as JSON: `{"AllowOrigins":["*"],"AllowMethods":["GET"],...}`.
    #[arg(long, value_name = "JSON")]
    cors: Option<String>,
}

/// `add-permission`.
#[derive(clap::Args, Debug)]
pub struct AddPermissionArgs {
    #[command(flatten)]
    function: QualifiedArgs,
    /// The statement's id.
    #[arg(long)]
    statement_id: String,
    /// What is allowed, e.g. lambda:InvokeFunctionUrl.
    #[arg(long)]
    action: String,
    /// Who: `*`, a service principal, an account id or an IAM ARN.
    #[arg(long)]
    principal: String,
    /// Only for URLs of this auth type (NONE or AWS_IAM).
    #[arg(long)]
    function_url_auth_type: Option<String>,
    /// Only for calls on behalf of this resource.
    #[arg(long)]
    source_arn: Option<String>,
    /// Only for calls on behalf of this account.
    #[arg(long)]
    source_account: Option<String>,
}

/// `remove-permission`.
#[derive(clap::Args, Debug)]
pub struct RemovePermissionArgs {
    #[command(flatten)]
    function: QualifiedArgs,
    /// The statement's id.
    #[arg(long)]
    statement_id: String,
}

/// A failed call: what is printed, `<Type>: <message>`.
#[derive(Debug)]
struct Failure {
    kind: String,
    message: String,
}

impl Failure {
    fn new(kind: &str, message: impl Into<String>) -> Self {
        Failure { kind: kind.to_string(), message: message.into() }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Failure::new("InvalidArgument", message)
    }
}

/// A request to the agent, as a subcommand's flags make it.
#[derive(Debug)]
struct ApiRequest {
    method: Method,
    /// The path and query, percent-encoded.
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl ApiRequest {
    fn new(method: Method, path: impl Into<String>) -> Self {
        ApiRequest { method, path: path.into(), headers: Vec::new(), body: Bytes::new() }
    }

    fn json(method: Method, path: impl Into<String>, body: Value) -> Self {
        let body = Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"));
        ApiRequest { body, ..ApiRequest::new(method, path) }
    }
}

/// A list subcommand: its pages, Marker after Marker.
#[derive(Debug)]
struct Listing {
    /// The path, without the query.
    path: String,
    /// Query parameters every page takes.
    query: Vec<(&'static str, String)>,
    /// The answer's member that holds the items (`Functions`, `Versions`, `Aliases`).
    key: &'static str,
    /// Where to start.
    marker: Option<String>,
    /// At most this many items in all.
    max_items: Option<u32>,
}

impl Listing {
    fn new(path: String, key: &'static str, paging: &Paging) -> Self {
        Listing { path, query: Vec::new(), key, marker: paging.marker.clone(), max_items: paging.max_items }
    }

    /// The path of the page that starts after `marker` and holds at most `max_items`.
    fn page_path(&self, marker: Option<&str>, max_items: Option<u32>) -> String {
        let max_items = max_items.map(|n| n.min(MAX_ITEMS_PER_CALL).to_string());
        let mut params: Vec<(&str, Option<&str>)> = self.query.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
        params.extend([("Marker", marker), ("MaxItems", max_items.as_deref())]);
        with_query(self.path.clone(), &params)
    }
}

/// What a subcommand does with the agent.
#[derive(Debug)]
enum Action {
    /// One request; its JSON answer is printed pretty (nothing if the answer is empty).
    Send(ApiRequest),
    /// A list: its pages' items are printed as one answer.
    List(Listing),
    /// An invocation: the function's response is printed, or written to `outfile`.
    Invoke { request: ApiRequest, tail: bool, outfile: Option<PathBuf> },
    /// One request whose answer (text) is printed as is.
    Raw(ApiRequest),
    /// Like `Send`, for a request that pulls `image_uri`: the pull's progress is printed to
    /// stderr while it waits.
    Pull { request: ApiRequest, image_uri: String },
}

/// Runs one client subcommand.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ember: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("{}: {}", f.kind, f.message);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<ExitCode, Failure> {
    let (connect, action) = plan(&command)?;
    match action {
        Action::Send(request) => {
            let reply = call(connect, request).await?;
            if reply.body.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            print_json(&parse_reply(&reply)?)
        }
        Action::List(listing) => {
            let fetch =
                |path: String| async move { parse_reply(&call(connect, ApiRequest::new(Method::GET, path)).await?) };
            print_json(&list_all(&listing, fetch).await?)
        }
        Action::Invoke { request, tail, outfile } => invoke(connect, request, tail, outfile.as_deref()).await,
        Action::Raw(request) => {
            let reply = call(connect, request).await?;
            std::io::stdout().write_all(&reply.body).map_err(|e| Failure::new("OutputError", e.to_string()))?;
            Ok(ExitCode::SUCCESS)
        }
        Action::Pull { request, image_uri } => {
            let reply = with_pull_progress(connect, &image_uri, call(connect, request)).await?;
            print_json(&parse_reply(&reply)?)
        }
    }
}

/// How often the CLI asks the agent how a pull is going.
const PULL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `request` (one that makes the agent pull `image_uri`), printing the pull's progress
/// (`GET /ember/image-pulls`) to stderr whenever it changes, until `request` is answered. An
/// agent that cannot say (an older one) only loses the progress lines.
async fn with_pull_progress(
    connect: &Connect,
    image_uri: &str,
    request: impl Future<Output = Result<Reply, Failure>>,
) -> Result<Reply, Failure> {
    tokio::pin!(request);
    let mut last = String::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PULL_POLL, PULL_POLL);
    loop {
        tokio::select! {
            reply = &mut request => return reply,
            _ = ticks.tick() => {
                let Ok(pulls) = call(connect, ApiRequest::new(Method::GET, "/ember/image-pulls")).await else {
                    return request.await;
                };
                let pulls: Value = serde_json::from_slice(&pulls.body).unwrap_or(Value::Null);
                let line = pulls["Pulls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["ImageUri"] == image_uri)
                    .map(pull_line);
                if let Some(line) = line.filter(|l| *l != last) {
                    eprintln!("ember: {line}");
                    last = line;
                }
            }
        }
    }
}

/// One progress line of a pull from `GET /ember/image-pulls`.
fn pull_line(pull: &Value) -> String {
    let mib = |v: &Value| format!("{:.1} MiB", v.as_u64().unwrap_or(0) as f64 / 1048576.0);
    let uri = pull["ImageUri"].as_str().unwrap_or_default();
    match pull["Phase"].as_str() {
        Some("BuildingRootImage") => {
            format!("pulling {uri}: {} downloaded, building the root image", mib(&pull["TotalBytes"]))
        }
        _ if pull["Layers"].as_u64().unwrap_or(0) == 0 => format!("pulling {uri}: reading the manifest"),
        _ => format!(
            "pulling {uri}: layer {}/{}, {} of {}",
            pull["Layer"],
            pull["Layers"],
            mib(&pull["DownloadedBytes"]),
            mib(&pull["TotalBytes"])
        ),
    }
}

/// The request (or requests) a subcommand makes, and where to send them.
fn plan(command: &ClientCommand) -> Result<(&Connect, Action), Failure> {
    use ClientCommand as C;
    let send = Action::Send;
    Ok(match command {
        C::CreateFunction(a) => {
            let request = create_function(a)?;
            let image_uri =
                a.code.as_deref().filter(|_| a.zip_file.is_none()).and_then(|c| c.strip_prefix("ImageUri="));
            let action = match image_uri {
                Some(image_uri) => Action::Pull { request, image_uri: image_uri.to_owned() },
                None => send(request),
            };
            (&a.connect, action)
        }
        C::UpdateFunctionCode(a) => {
            let mut body = match (&a.zip_file, &a.image_uri) {
                (Some(zip), _) => json!({ "ZipFile": read_zip(zip)? }),
                (None, uri) => json!({ "ImageUri": uri }),
            };
            a.publish.apply(&mut body);
            let request = ApiRequest::json(Method::PUT, format!("{}/code", a.function.path()), body);
            let action = match &a.image_uri {
                Some(image_uri) => Action::Pull { request, image_uri: image_uri.clone() },
                None => send(request),
            };
            (&a.function.connect, action)
        }
        C::UpdateFunctionConfiguration(a) => (&a.function.connect, send(update_configuration(a)?)),
        C::Invoke(a) => (&a.target.function.connect, invocation(a)?),
        C::ListFunctions(a) => {
            (&a.connect, Action::List(Listing::new(format!("/{FUNCTIONS_API}/functions/"), "Functions", &a.paging)))
        }
        C::GetFunction(a) => (&a.function.connect, send(ApiRequest::new(Method::GET, a.path("")))),
        C::DeleteFunction(a) => (&a.function.connect, send(ApiRequest::new(Method::DELETE, a.path("")))),
        C::Logs(a) => {
            let path = with_query(format!("{}/logs", a.function.path()), &[("bytes", Some(&a.bytes.to_string()))]);
            (&a.function.connect, Action::Raw(ApiRequest::new(Method::GET, path)))
        }
        C::PublishVersion(a) => {
            let mut body = json!({});
            set(&mut body, "CodeSha256", a.code_sha256.as_deref().map(Value::from));
            set(&mut body, "Description", a.description.as_deref().map(Value::from));
            set(&mut body, "RevisionId", a.revision_id.as_deref().map(Value::from));
            let path = format!("{}/versions", a.function.path());
            (&a.function.connect, send(ApiRequest::json(Method::POST, path, body)))
        }
        C::ListVersionsByFunction(a) => {
            let path = format!("{}/versions", a.function.path());
            (&a.function.connect, Action::List(Listing::new(path, "Versions", &a.paging)))
        }
        C::CreateAlias(a) => {
            let mut body = json!({ "Name": a.alias.name, "FunctionVersion": a.function_version });
            a.settings.apply(&mut body)?;
            let path = format!("{}/aliases", a.alias.function.path());
            (&a.alias.function.connect, send(ApiRequest::json(Method::POST, path, body)))
        }
        C::UpdateAlias(a) => {
            let mut body = json!({});
            set(&mut body, "FunctionVersion", a.function_version.as_deref().map(Value::from));
            a.settings.apply(&mut body)?;
            set(&mut body, "RevisionId", a.revision_id.as_deref().map(Value::from));
            (&a.alias.function.connect, send(ApiRequest::json(Method::PUT, a.alias.path(), body)))
        }
        C::ListAliases(a) => {
            let mut listing = Listing::new(format!("{}/aliases", a.function.path()), "Aliases", &a.paging);
            if let Some(version) = &a.function_version {
                listing.query.push(("FunctionVersion", version.clone()));
            }
            (&a.function.connect, Action::List(listing))
        }
        C::GetAlias(a) => (&a.function.connect, send(ApiRequest::new(Method::GET, a.path()))),
        C::DeleteAlias(a) => (&a.function.connect, send(ApiRequest::new(Method::DELETE, a.path()))),
        C::PublishLayerVersion(a) => (&a.connect, send(publish_layer_version(a)?)),
        C::PutFunctionConcurrency(a) => {
            let body = json!({ "ReservedConcurrentExecutions": a.reserved_concurrent_executions });
            let path = format!("{}/concurrency", function_path(CONCURRENCY_API, &a.function.function_name));
            (&a.function.connect, send(ApiRequest::json(Method::PUT, path, body)))
        }
        C::GetFunctionConcurrency(a) => {
            let path = format!("{}/concurrency", function_path(GET_CONCURRENCY_API, &a.function_name));
            (&a.connect, send(ApiRequest::new(Method::GET, path)))
        }
        C::DeleteFunctionConcurrency(a) => {
            let path = format!("{}/concurrency", function_path(CONCURRENCY_API, &a.function_name));
            (&a.connect, send(ApiRequest::new(Method::DELETE, path)))
        }
        C::GetAccountSettings(connect) => (connect, send(ApiRequest::new(Method::GET, ACCOUNT_SETTINGS_PATH))),
        C::PutFunctionEventInvokeConfig(a) => {
            let mut body = json!({});
            set(&mut body, "MaximumRetryAttempts", a.maximum_retry_attempts.map(Value::from));
            set(&mut body, "MaximumEventAgeInSeconds", a.maximum_event_age_in_seconds.map(Value::from));
            if let Some(text) = &a.destination_config {
                let config: Value = serde_json::from_str(text)
                    .map_err(|e| Failure::invalid(format!("--destination-config is not JSON: {e}")))?;
                body["DestinationConfig"] = config;
            }
            (&a.function.function.connect, send(ApiRequest::json(Method::PUT, event_config_path(&a.function), body)))
        }
        C::GetFunctionEventInvokeConfig(a) => {
            (&a.function.connect, send(ApiRequest::new(Method::GET, event_config_path(a))))
        }
        C::DeleteFunctionEventInvokeConfig(a) => {
            (&a.function.connect, send(ApiRequest::new(Method::DELETE, event_config_path(a))))
        }
        C::CreateFunctionUrlConfig(a) => {
            let mut body = json!({ "AuthType": a.auth_type });
            if let Some(text) = &a.cors {
                body["Cors"] =
                    serde_json::from_str(text).map_err(|e| Failure::invalid(format!("--cors is not JSON: {e}")))?;
            }
            (&a.function.function.connect, send(ApiRequest::json(Method::POST, url_path(&a.function), body)))
        }
        C::GetFunctionUrlConfig(a) => (&a.function.connect, send(ApiRequest::new(Method::GET, url_path(a)))),
        C::DeleteFunctionUrlConfig(a) => (&a.function.connect, send(ApiRequest::new(Method::DELETE, url_path(a)))),
        C::AddPermission(a) => {
            let mut body = json!({ "StatementId": a.statement_id, "Action": a.action, "Principal": a.principal });
            set(&mut body, "FunctionUrlAuthType", a.function_url_auth_type.as_deref().map(Value::from));
            set(&mut body, "SourceArn", a.source_arn.as_deref().map(Value::from));
            set(&mut body, "SourceAccount", a.source_account.as_deref().map(Value::from));
            (&a.function.function.connect, send(ApiRequest::json(Method::POST, a.function.path("/policy"), body)))
        }
        C::RemovePermission(a) => {
            let path = with_query(
                format!("{}/policy/{}", a.function.function.path(), encode(&a.statement_id)),
                &[("Qualifier", a.function.qualifier.as_deref())],
            );
            (&a.function.function.connect, send(ApiRequest::new(Method::DELETE, path)))
        }
        C::GetPolicy(a) => (&a.function.connect, send(ApiRequest::new(Method::GET, a.path("/policy")))),
        C::Schedule(a) => {
            let path = |name: &str| format!("/schedules/{}", encode(name));
            let request = match &a.command {
                ScheduleCommand::Create(spec) => ApiRequest::json(Method::POST, path(&spec.name), spec.body()),
                ScheduleCommand::Update(spec) => ApiRequest::json(Method::PUT, path(&spec.name), spec.body()),
                ScheduleCommand::Get(n) => ApiRequest::new(Method::GET, path(&n.name)),
                ScheduleCommand::Delete(n) => ApiRequest::new(Method::DELETE, path(&n.name)),
                ScheduleCommand::List { name_prefix, state } => ApiRequest::new(
                    Method::GET,
                    with_query(
                        "/schedules".into(),
                        &[("NamePrefix", name_prefix.as_deref()), ("State", state.as_deref())],
                    ),
                ),
            };
            (&a.connect, send(request))
        }
        C::CreateEventSourceMapping(a) => {
            let mut body = json!({
                "FunctionName": a.function_name,
                "EventSourceArn": a.event_source_arn,
                "Enabled": !a.no_enabled,
            });
            a.settings.body(&mut body);
            (&a.connect, send(ApiRequest::json(Method::POST, MAPPINGS_PATH, body)))
        }
        C::UpdateEventSourceMapping(a) => {
            let mut body = json!({});
            set(&mut body, "FunctionName", a.function_name.as_deref().map(Value::from));
            set(&mut body, "Enabled", a.enabled.map(Value::from));
            a.settings.body(&mut body);
            (&a.connect, send(ApiRequest::json(Method::PUT, mapping_path(&a.uuid), body)))
        }
        C::GetEventSourceMapping(a) => (&a.connect, send(ApiRequest::new(Method::GET, mapping_path(&a.uuid)))),
        C::DeleteEventSourceMapping(a) => (&a.connect, send(ApiRequest::new(Method::DELETE, mapping_path(&a.uuid)))),
        C::ListEventSourceMappings(a) => {
            let path = with_query(
                MAPPINGS_PATH.into(),
                &[("FunctionName", a.function_name.as_deref()), ("EventSourceArn", a.event_source_arn.as_deref())],
            );
            (&a.connect, send(ApiRequest::new(Method::GET, path)))
        }
    })
}

/// Where event source mappings are.
const MAPPINGS_PATH: &str = "/2015-03-31/event-source-mappings/";

/// One mapping's path.
fn mapping_path(uuid: &str) -> String {
    format!("{MAPPINGS_PATH}{}", encode(uuid))
}

/// The URL config's path of a function and qualifier.
fn url_path(a: &QualifiedArgs) -> String {
    let path = format!("{}/url", function_path(URL_API, &a.function.function_name));
    with_query(path, &[("Qualifier", a.qualifier.as_deref())])
}

/// The event invoke config's path of a function and qualifier.
fn event_config_path(a: &QualifiedArgs) -> String {
    let path = format!("{}/event-invoke-config", function_path(EVENT_CONFIG_API, &a.function.function_name));
    with_query(path, &[("Qualifier", a.qualifier.as_deref())])
}

fn create_function(args: &CreateArgs) -> Result<ApiRequest, Failure> {
    let code = match (&args.zip_file, &args.code) {
        (Some(zip), _) => json!({ "ZipFile": read_zip(zip)? }),
        (None, Some(code)) => match code.split_once('=') {
            Some(("ImageUri", uri)) if !uri.is_empty() => json!({ "ImageUri": uri }),
            _ => return Err(Failure::invalid("--code takes ImageUri=URI (use --zip-file for a zip)")),
        },
        (None, None) => return Err(Failure::invalid("one of --zip-file or --code ImageUri=URI is required")),
    };
    let mut body = json!({
        "FunctionName": args.function_name,
        "Role": args.role,
        "Code": code,
    });
    set(&mut body, "Runtime", args.runtime.as_deref().map(Value::from));
    set(&mut body, "PackageType", args.package_type.as_deref().map(Value::from));
    set(&mut body, "Handler", args.handler.as_deref().map(Value::from));
    set(&mut body, "MemorySize", args.memory_size.map(Value::from));
    set(&mut body, "Timeout", args.timeout.map(Value::from));
    set(&mut body, "EphemeralStorage", args.ephemeral_storage.map(|size| json!({ "Size": size })));
    if !args.environment.is_empty() {
        body["Environment"] = json!({ "Variables": parse_pairs("--environment", &args.environment)? });
    }
    set(&mut body, "Description", args.description.as_deref().map(Value::from));
    args.publish.apply(&mut body);
    args.layers.apply(&mut body);
    if !args.tags.is_empty() {
        body["Tags"] = json!(parse_pairs("--tags", &args.tags)?);
    }
    Ok(ApiRequest::json(Method::POST, format!("/{FUNCTIONS_API}/functions"), body))
}

fn update_configuration(args: &UpdateConfigArgs) -> Result<ApiRequest, Failure> {
    let mut body = json!({});
    let fields = [
        ("Runtime", args.runtime.as_deref().map(Value::from)),
        ("Handler", args.handler.as_deref().map(Value::from)),
        ("MemorySize", args.memory_size.map(Value::from)),
        ("Timeout", args.timeout.map(Value::from)),
        ("Role", args.role.as_deref().map(Value::from)),
        ("Description", args.description.as_deref().map(Value::from)),
        ("EphemeralStorage", args.ephemeral_storage.map(|size| json!({ "Size": size }))),
    ];
    for (key, value) in fields {
        set(&mut body, key, value);
    }
    if let Some(vars) = &args.environment {
        body["Environment"] = json!({ "Variables": parse_pairs("--environment", vars)? });
    }
    args.layers.apply(&mut body);
    let path = format!("{}/configuration", args.function.path());
    Ok(ApiRequest::json(Method::PUT, path, body))
}

fn publish_layer_version(args: &PublishLayerArgs) -> Result<ApiRequest, Failure> {
    let mut body = json!({ "Content": { "ZipFile": read_zip(&args.zip_file)? } });
    let list = |items: &Vec<String>| (!items.is_empty()).then(|| json!(items));
    set(&mut body, "CompatibleRuntimes", list(&args.compatible_runtimes));
    set(&mut body, "CompatibleArchitectures", list(&args.compatible_architectures));
    set(&mut body, "Description", args.description.as_deref().map(Value::from));
    set(&mut body, "LicenseInfo", args.license_info.as_deref().map(Value::from));
    let path = format!("/{LAYERS_API}/layers/{}/versions", encode(&args.layer_name));
    Ok(ApiRequest::json(Method::POST, path, body))
}

fn invocation(args: &InvokeArgs) -> Result<Action, Failure> {
    let payload = match args.payload.as_deref() {
        None => Bytes::from_static(b"{}"),
        Some(p) => match p.strip_prefix('@').or_else(|| p.strip_prefix("file://")) {
            Some(file) => Bytes::from(
                std::fs::read(file).map_err(|e| Failure::new("InvalidPayload", format!("cannot read {file}: {e}")))?,
            ),
            None => Bytes::from(p.to_string()),
        },
    };
    let mut request = ApiRequest::new(Method::POST, args.target.path("/invocations"));
    request.body = payload;
    if let Some(t) = &args.invocation_type {
        request.headers.push(("x-amz-invocation-type", t.clone()));
    }
    let tail = args.log_type.as_deref() == Some("Tail");
    if tail {
        request.headers.push(("x-amz-log-type", "Tail".to_string()));
    }
    if let Some(c) = &args.client_context {
        request.headers.push(("x-amz-client-context", c.clone()));
    }
    Ok(Action::Invoke { request, tail, outfile: args.outfile.clone() })
}

async fn invoke(
    connect: &Connect,
    request: ApiRequest,
    tail: bool,
    outfile: Option<&Path>,
) -> Result<ExitCode, Failure> {
    let reply = call(connect, request).await?;
    let header = |name: &str| reply.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let function_error = header("x-amz-function-error");
    let log = header("x-amz-log-result");
    if tail {
        if let Some(log) = &log {
            match base64::engine::general_purpose::STANDARD.decode(log) {
                Ok(text) => eprint!("{}", String::from_utf8_lossy(&text)),
                Err(_) => eprintln!("ember: the log tail is not base64: {log}"),
            }
        }
    }
    match outfile {
        Some(file) => {
            std::fs::write(file, &reply.body)
                .map_err(|e| Failure::new("OutputError", format!("cannot write {}: {e}", file.display())))?;
            let mut summary = json!({ "StatusCode": reply.status });
            if let Some(e) = &function_error {
                summary["FunctionError"] = json!(e);
            }
            if let Some(log) = &log {
                summary["LogResult"] = json!(log);
            }
            if let Some(v) = header("x-amz-executed-version") {
                summary["ExecutedVersion"] = json!(v);
            }
            print_json(&summary)?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            let ok = out.write_all(&reply.body).and_then(|()| match reply.body.last() {
                Some(b'\n') | None => Ok(()),
                Some(_) => out.write_all(b"\n"),
            });
            ok.map_err(|e| Failure::new("OutputError", e.to_string()))?;
        }
    }
    if let Some(e) = function_error {
        eprintln!("ember: the function failed (X-Amz-Function-Error: {e})");
        return Ok(ExitCode::from(EXIT_FUNCTION_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches a list's pages (`fetch` gets each page's path) until the last, or until `max_items`
/// items; the items under the listing's key, and a `NextMarker` if it stopped before the end.
async fn list_all<F, Fut>(listing: &Listing, mut fetch: F) -> Result<Value, Failure>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Value, Failure>>,
{
    let mut items: Vec<Value> = Vec::new();
    let mut marker = listing.marker.clone();
    loop {
        let wanted = listing.max_items.map(|max| max.saturating_sub(u32::try_from(items.len()).unwrap_or(u32::MAX)));
        let page = fetch(listing.page_path(marker.as_deref(), wanted)).await?;
        items.extend(page[listing.key].as_array().cloned().unwrap_or_default());
        let next = page["NextMarker"].as_str().map(str::to_string);
        // No next page, or one the agent keeps giving: done.
        let more = next.is_some() && next != marker;
        marker = next.filter(|_| more);
        let full = listing.max_items.is_some_and(|max| items.len() >= max as usize);
        if marker.is_none() || full {
            break;
        }
    }
    let mut out = json!({ listing.key: items });
    set(&mut out, "NextMarker", marker.map(Value::from));
    Ok(out)
}

/// Sets `body[key]` when there is a value.
fn set(body: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        body[key] = value;
    }
}

/// `KEY=VALUE` pairs (of `flag`) as a map; values may hold `=`.
fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Failure::invalid(format!("{flag} wants KEY=VALUE, not {pair}"))),
        })
        .collect()
}

/// `--routing-config`, the version weights of an alias: the aws CLI's shorthand
/// `AdditionalVersionWeights={2=0.3}` (keys may be quoted, `{"2"=0.3}`; `{}` for none), or JSON,
/// `{"AdditionalVersionWeights":{"2":0.3}}`. The agent checks the versions and weights.
fn parse_routing_config(text: &str) -> Result<BTreeMap<String, f64>, Failure> {
    let bad = |why: String| {
        Failure::invalid(format!(
            "--routing-config {text}: {why} (expected AdditionalVersionWeights={{VERSION=WEIGHT}} or \
             {{\"AdditionalVersionWeights\":{{\"VERSION\":WEIGHT}}}})"
        ))
    };
    let trimmed = text.trim();
    let mut weights = BTreeMap::new();
    if trimmed.starts_with('{') {
        let config: serde_json::Map<String, Value> =
            serde_json::from_str(trimmed).map_err(|e| bad(format!("not a JSON object ({e})")))?;
        for (member, value) in config {
            if member != "AdditionalVersionWeights" {
                return Err(bad(format!("{member} is not a member of RoutingConfig")));
            }
            let Value::Object(map) = value else { return Err(bad("AdditionalVersionWeights is not an object".into())) };
            for (version, weight) in map {
                let weight =
                    weight.as_f64().ok_or_else(|| bad(format!("the weight of version {version} is not a number")))?;
                weights.insert(version, weight);
            }
        }
        return Ok(weights);
    }
    let (member, map) = trimmed.split_once('=').ok_or_else(|| bad("no `=`".into()))?;
    if member.trim() != "AdditionalVersionWeights" {
        return Err(bad(format!("{} is not a member of RoutingConfig", member.trim())));
    }
    let inner = map
        .trim()
        .strip_prefix('{')
        .and_then(|m| m.strip_suffix('}'))
        .ok_or_else(|| bad("the weights are not in braces".into()))?;
    if inner.trim().is_empty() {
        return Ok(weights);
    }
    for entry in inner.split(',') {
        let (version, weight) =
            entry.split_once('=').ok_or_else(|| bad(format!("`{}` is not VERSION=WEIGHT", entry.trim())))?;
        let version = unquote(version.trim());
        if version.is_empty() || version.contains(['"', '\'', '{', '}']) || version.contains(char::is_whitespace) {
            return Err(bad(format!("`{}` is not a version", version)));
        }
        let weight = weight
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|w| w.is_finite())
            .ok_or_else(|| bad(format!("the weight of version {version} is not a number")))?;
        if weights.insert(version.to_string(), weight).is_some() {
            return Err(bad(format!("version {version} is given twice")));
        }
    }
    Ok(weights)
}

/// `s` without the quotes around it, if it has matching ones.
fn unquote(s: &str) -> &str {
    ['"', '\''].into_iter().find_map(|q| s.strip_prefix(q)?.strip_suffix(q)).unwrap_or(s)
}

/// The zip at `path` (`fileb://` and `file://` prefixes accepted), in base64.
fn read_zip(path: &str) -> Result<String, Failure> {
    let path = path.strip_prefix("fileb://").or_else(|| path.strip_prefix("file://")).unwrap_or(path);
    let zip = std::fs::read(Path::new(path))
        .map_err(|e| Failure::new("InvalidZipFile", format!("cannot read {path}: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(zip))
}

/// The path of a function (its name or ARN, percent-encoded) under an API version.
fn function_path(api: &str, name: &str) -> String {
    format!("/{api}/functions/{}", encode(name))
}

/// `path` with the query parameters that have a value, percent-encoded.
fn with_query(mut path: String, params: &[(&str, Option<&str>)]) -> String {
    let mut separator = '?';
    for (key, value) in params {
        if let Some(value) = value {
            path.push_str(&format!("{separator}{key}={}", encode_query(value)));
            separator = '&';
        }
    }
    path
}

/// Percent-encodes a path segment: everything but unreserved characters, `:` and `$` (for names
/// and ARNs).
fn encode(s: &str) -> String {
    percent_encode(s, b"-_.~:$")
}

/// Percent-encodes a query value: everything but unreserved characters (`$LATEST` is `%24LATEST`).
fn encode_query(s: &str) -> String {
    percent_encode(s, b"-_.~")
}

fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_json(value: &Value) -> Result<ExitCode, Failure> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// An answer: status, headers, body.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// A JSON answer's value.
fn parse_reply(reply: &Reply) -> Result<Value, Failure> {
    serde_json::from_slice(&reply.body)
        .map_err(|e| Failure::new("InvalidResponse", format!("the agent's answer is not JSON: {e}")))
}
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

fn target(connect: &Connect) -> Result<Target, Failure> {
    let endpoint = connect.endpoint.clone().or_else(|| match connect.socket {
        Some(_) => None,
        None => std::env::var("EMBER_ENDPOINT").ok().filter(|e| !e.is_empty()),
    });
    if let Some(endpoint) = endpoint {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            Failure::new("InvalidEndpoint", format!("{endpoint}: only http://HOST:PORT endpoints are supported"))
        })?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(Failure::new("InvalidEndpoint", format!("{endpoint}: no host")));
        }
        let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
        return Ok(Target::Tcp(authority));
    }
    let socket = connect
        .socket
        .clone()
        .or_else(|| std::env::var_os("EMBER_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    Ok(Target::Unix(socket))
}

/// One request to the agent; an error answer becomes a [`Failure`] of its `x-amzn-ErrorType`.
async fn call(connect: &Connect, request: ApiRequest) -> Result<Reply, Failure> {
    let ApiRequest { method, path, headers, body } = request;
    let target = target(connect)?;
    let host = match &target {
        Target::Unix(_) => "localhost".to_string(),
        Target::Tcp(authority) => authority.clone(),
    };
    let mut req = Request::builder().method(method).uri(path).header("host", host).header("content-length", body.len());
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let req = req.body(Full::new(body)).map_err(|e| Failure::new("InvalidArgument", e.to_string()))?;
    let reply = match &target {
        Target::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                Failure::new("ConnectionError", format!("cannot connect to the agent at {}: {e}", path.display()))
            })?;
            exchange(stream, req).await?
        }
        Target::Tcp(authority) => {
            let stream = tokio::net::TcpStream::connect(authority.as_str()).await.map_err(|e| {
                Failure::new("ConnectionError", format!("cannot connect to the agent at {authority}: {e}"))
            })?;
            let _ = stream.set_nodelay(true);
            exchange(stream, req).await?
        }
    };
    if reply.status >= 400 {
        let parsed: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let kind = reply
            .headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|t| t.split(':').next().unwrap_or(t).to_string())
            .or_else(|| parsed["__type"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP{}", reply.status));
        let message = parsed["message"]
            .as_str()
            .or_else(|| parsed["Message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
        return Err(Failure { kind, message });
    }
    Ok(reply)
}

async fn exchange<S>(stream: S, req: Request<Full<Bytes>>) -> Result<Reply, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |e: hyper::Error| Failure::new("ConnectionError", format!("talking to the agent: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(broken)?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(broken)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.map_err(broken)?.to_bytes();
    Ok(Reply { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:f";

    #[test]
    fn a_pulls_progress_reads_as_a_line() {
        let mut pull = json!({
            "ImageUri": "r:5000/a:1", "Digest": "sha256:ab", "Phase": "Downloading",
            "Layer": 0, "Layers": 0, "DownloadedBytes": 0, "TotalBytes": 0,
        });
        assert_eq!(pull_line(&pull), "pulling r:5000/a:1: reading the manifest");
        pull["Layer"] = json!(2);
        pull["Layers"] = json!(3);
        pull["DownloadedBytes"] = json!(3 << 20);
        pull["TotalBytes"] = json!(10 << 20);
        assert_eq!(pull_line(&pull), "pulling r:5000/a:1: layer 2/3, 3.0 MiB of 10.0 MiB");
        pull["Phase"] = json!("BuildingRootImage");
        assert_eq!(pull_line(&pull), "pulling r:5000/a:1: 10.0 MiB downloaded, building the root image");
    }

    #[test]
    fn image_requests_show_their_pull() {
        let create = action(&[
            "create-function",
            "--function-name",
            "f",
            "--package-type",
            "Image",
            "--code",
            "ImageUri=r:5000/a:1",
        ]);
        assert!(matches!(create, Ok(Action::Pull { image_uri, .. }) if image_uri == "r:5000/a:1"));
        let update = action(&["update-function-code", "--function-name", "f", "--image-uri", "r:5000/a:2"]);
        assert!(matches!(update, Ok(Action::Pull { image_uri, .. }) if image_uri == "r:5000/a:2"));
    }

    fn parse(args: &[&str]) -> ClientCommand {
        match Cli::try_parse_from(std::iter::once("ember").chain(args.iter().copied())) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?} does not parse: {e}"),
        }
    }

    fn action(args: &[&str]) -> Result<Action, Failure> {
        plan(&parse(args)).map(|(_, action)| action)
    }

    /// The method, path and JSON body (null when empty) a subcommand sends.
    fn sent(args: &[&str]) -> (Method, String, Value) {
        match action(args) {
            Ok(Action::Send(r)) => {
                let body = if r.body.is_empty() { Value::Null } else { serde_json::from_slice(&r.body).unwrap() };
                (r.method, r.path, body)
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn listing(args: &[&str]) -> Listing {
        match action(args) {
            Ok(Action::List(listing)) => listing,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// A zip file (any bytes will do) for the subcommands that read one.
    fn zip_file(name: &str) -> (PathBuf, String) {
        let path = std::env::temp_dir().join(format!("ember-client-test-{}-{name}.zip", std::process::id()));
        std::fs::write(&path, b"PK zip").unwrap();
        (path, base64::engine::general_purpose::STANDARD.encode(b"PK zip"))
    }

    #[test]
    fn parses_like_the_aws_cli() {
        let cli = Cli::try_parse_from([
            "ember",
            "create-function",
            "--function-name",
            "f",
            "--runtime",
            "python3.11",
            "--handler",
            "handler.echo",
            "--zip-file",
            "fileb://x.zip",
            "--environment",
            "A=1",
            "B=2=3",
            "--memory-size",
            "256",
        ])
        .unwrap();
        let ClientCommand::CreateFunction(args) = cli.command else { panic!("wrong subcommand") };
        assert_eq!(args.role, DEFAULT_ROLE);
        assert_eq!(args.memory_size, Some(256));
        let env = parse_pairs("--environment", &args.environment).unwrap();
        assert_eq!(env["B"], "2=3");
        assert!(parse_pairs("--environment", &["nope".to_string()]).is_err());
        assert!(parse_pairs("--tags", &["=v".to_string()]).is_err());
        let cli =
            Cli::try_parse_from(["ember", "invoke", "--function-name", "f", "--log-type", "Tail", "out.json"]).unwrap();
        let ClientCommand::Invoke(args) = cli.command else { panic!("wrong subcommand") };
        assert_eq!(args.outfile, Some(PathBuf::from("out.json")));
        assert!(Cli::try_parse_from(["ember", "list-functions", "--socket", "/s", "--endpoint", "http://x:1"]).is_err());
    }

    #[test]
    fn targets_and_paths() {
        let connect = Connect { socket: None, endpoint: Some("http://127.0.0.1:9000/".into()) };
        assert!(matches!(target(&connect), Ok(Target::Tcp(a)) if a == "127.0.0.1:9000"));
        let connect = Connect { socket: None, endpoint: Some("https://x".into()) };
        assert!(target(&connect).is_err());
        let connect = Connect { socket: Some("/tmp/s.sock".into()), endpoint: None };
        assert!(matches!(target(&connect), Ok(Target::Unix(p)) if p == Path::new("/tmp/s.sock")));
        assert_eq!(function_path(FUNCTIONS_API, ARN), format!("/2015-03-31/functions/{ARN}"));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_query("$LATEST"), "%24LATEST");
        assert_eq!(encode_query("a:b&c=d"), "a%3Ab%26c%3Dd");
        assert_eq!(with_query("/p".into(), &[("A", None), ("B", Some("1")), ("C", Some("x y"))]), "/p?B=1&C=x%20y");
        assert_eq!(with_query("/p".into(), &[("A", None)]), "/p");
    }

    #[test]
    fn the_connection_flags_go_with_every_subcommand() {
        let command = parse(&["get-alias", "--function-name", "f", "--name", "live", "--socket", "/s.sock"]);
        let (connect, _) = plan(&command).unwrap();
        assert_eq!(connect.socket.as_deref(), Some(Path::new("/s.sock")));
        let command = parse(&["get-account-settings", "--endpoint", "http://127.0.0.1:9000"]);
        let (connect, _) = plan(&command).unwrap();
        assert_eq!(connect.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn create_and_update_functions_publish_with_layers_and_tags() {
        let (zip, zip64) = zip_file("create");
        let zip_arg = format!("fileb://{}", zip.display());
        let (method, path, body) = sent(&[
            "create-function",
            "--function-name",
            "f",
            "--runtime",
            "provided.al2023",
            "--zip-file",
            &zip_arg,
            "--publish",
            "--layers",
            "arn:aws:lambda:us-east-1:000000000000:layer:a:1",
            "arn:aws:lambda:us-east-1:000000000000:layer:b:2",
            "--tags",
            "team=ember",
            "env=a=b",
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/2015-03-31/functions"));
        assert_eq!(
            body,
            json!({
                "FunctionName": "f", "Runtime": "provided.al2023", "Role": DEFAULT_ROLE,
                "Code": { "ZipFile": zip64 }, "Publish": true,
                "Layers": [
                    "arn:aws:lambda:us-east-1:000000000000:layer:a:1",
                    "arn:aws:lambda:us-east-1:000000000000:layer:b:2",
                ],
                "Tags": { "team": "ember", "env": "a=b" },
            })
        );
        // Without the flags, none of it is sent.
        let (_, _, body) =
            sent(&["create-function", "--function-name", "f", "--runtime", "provided.al2023", "--zip-file", &zip_arg]);
        assert!(body.get("Publish").is_none() && body.get("Layers").is_none() && body.get("Tags").is_none());
        let bad = ["create-function", "--function-name", "f", "--runtime", "r", "--zip-file", &zip_arg, "--tags", "x"];
        assert!(matches!(action(&bad), Err(f) if f.kind == "InvalidArgument"));

        let (method, path, body) =
            sent(&["update-function-code", "--function-name", ARN, "--zip-file", &zip_arg, "--publish"]);
        assert_eq!((method, path), (Method::PUT, format!("/2015-03-31/functions/{ARN}/code")));
        assert_eq!(body, json!({ "ZipFile": zip64, "Publish": true }));
        let (_, _, body) = sent(&["update-function-code", "--function-name", "f", "--zip-file", &zip_arg]);
        assert_eq!(body, json!({ "ZipFile": zip64 }));
        std::fs::remove_file(zip).unwrap();

        let (method, path, body) =
            sent(&["update-function-configuration", "--function-name", "f", "--layers", "l:1", "--timeout", "9"]);
        assert_eq!((method, path.as_str()), (Method::PUT, "/2015-03-31/functions/f/configuration"));
        assert_eq!(body, json!({ "Layers": ["l:1"], "Timeout": 9 }));
        // --layers alone removes them all.
        let (_, _, body) = sent(&["update-function-configuration", "--function-name", "f", "--layers"]);
        assert_eq!(body, json!({ "Layers": [] }));
        let (_, _, body) = sent(&["update-function-configuration", "--function-name", "f", "--description", "d"]);
        assert_eq!(body, json!({ "Description": "d" }));
    }

    #[test]
    fn qualifiers_go_in_the_query() {
        let (method, path, body) = sent(&["get-function", "--function-name", "f", "--qualifier", "$LATEST"]);
        assert_eq!(
            (method, path.as_str(), body),
            (Method::GET, "/2015-03-31/functions/f?Qualifier=%24LATEST", Value::Null)
        );
        let (method, path, _) = sent(&["get-function", "--function-name", ARN]);
        assert_eq!((method, path), (Method::GET, format!("/2015-03-31/functions/{ARN}")));
        let (method, path, _) = sent(&["delete-function", "--function-name", "f", "--qualifier", "3"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2015-03-31/functions/f?Qualifier=3"));
        let (method, path, _) = sent(&["delete-function", "--function-name", "my f"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2015-03-31/functions/my%20f"));

        let invoke = action(&[
            "invoke",
            "--function-name",
            "f",
            "--qualifier",
            "live",
            "--payload",
            "{\"a\":1}",
            "--log-type",
            "Tail",
            "--invocation-type",
            "Event",
        ]);
        let Ok(Action::Invoke { request, tail, outfile }) = invoke else { panic!("{invoke:?}") };
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/2015-03-31/functions/f/invocations?Qualifier=live");
        assert_eq!(request.body, Bytes::from_static(b"{\"a\":1}"));
        assert!(tail && outfile.is_none());
        assert!(request.headers.contains(&("x-amz-invocation-type", "Event".to_string())));
        assert!(request.headers.contains(&("x-amz-log-type", "Tail".to_string())));
        let invoke = action(&["invoke", "--function-name", "f", "--qualifier", "$LATEST", "out.json"]);
        let Ok(Action::Invoke { request, tail, outfile }) = invoke else { panic!("{invoke:?}") };
        assert_eq!(request.path, "/2015-03-31/functions/f/invocations?Qualifier=%24LATEST");
        assert_eq!(request.body, Bytes::from_static(b"{}"));
        assert!(!tail && outfile == Some(PathBuf::from("out.json")) && request.headers.is_empty());
    }

    #[test]
    fn versions() {
        let (method, path, body) = sent(&[
            "publish-version",
            "--function-name",
            ARN,
            "--code-sha256",
            "abc=",
            "--description",
            "first",
            "--revision-id",
            "r1",
        ]);
        assert_eq!((method, path), (Method::POST, format!("/2015-03-31/functions/{ARN}/versions")));
        assert_eq!(body, json!({ "CodeSha256": "abc=", "Description": "first", "RevisionId": "r1" }));
        let (_, _, body) = sent(&["publish-version", "--function-name", "f"]);
        assert_eq!(body, json!({}));

        let l = listing(&["list-versions-by-function", "--function-name", "f"]);
        assert_eq!(l.key, "Versions");
        assert_eq!(l.page_path(None, None), "/2015-03-31/functions/f/versions");
        let l = listing(&["list-versions-by-function", "--function-name", "f", "--marker", "3", "--max-items", "2"]);
        assert_eq!((l.marker.as_deref(), l.max_items), (Some("3"), Some(2)));
        assert_eq!(l.page_path(Some("3"), Some(2)), "/2015-03-31/functions/f/versions?Marker=3&MaxItems=2");
        assert_eq!(l.page_path(None, Some(50_000)), "/2015-03-31/functions/f/versions?MaxItems=10000");
        assert!(Cli::try_parse_from([
            "ember",
            "list-versions-by-function",
            "--function-name",
            "f",
            "--max-items",
            "0"
        ])
        .is_err());
        let l = listing(&["list-functions", "--max-items", "1"]);
        assert_eq!(
            (l.key, l.page_path(Some("f 1"), Some(1))),
            ("Functions", "/2015-03-31/functions/?Marker=f%201&MaxItems=1".into())
        );
    }

    #[test]
    fn aliases() {
        let (method, path, body) = sent(&[
            "create-alias",
            "--function-name",
            ARN,
            "--name",
            "live",
            "--function-version",
            "1",
            "--description",
            "d",
            "--routing-config",
            "AdditionalVersionWeights={\"2\"=0.3}",
        ]);
        assert_eq!((method, path), (Method::POST, format!("/2015-03-31/functions/{ARN}/aliases")));
        assert_eq!(
            body,
            json!({
                "Name": "live", "FunctionVersion": "1", "Description": "d",
                "RoutingConfig": { "AdditionalVersionWeights": { "2": 0.3 } },
            })
        );
        let (_, _, body) =
            sent(&["create-alias", "--function-name", "f", "--name", "a", "--function-version", "$LATEST"]);
        assert_eq!(body, json!({ "Name": "a", "FunctionVersion": "$LATEST" }));
        assert!(Cli::try_parse_from(["ember", "create-alias", "--function-name", "f", "--name", "a"]).is_err());
        let bad = [
            "create-alias",
            "--function-name",
            "f",
            "--name",
            "a",
            "--function-version",
            "1",
            "--routing-config",
            "2=0.3",
        ];
        assert!(matches!(action(&bad), Err(f) if f.kind == "InvalidArgument"));

        let (method, path, body) = sent(&[
            "update-alias",
            "--function-name",
            "f",
            "--name",
            "live",
            "--function-version",
            "2",
            "--routing-config",
            "{\"AdditionalVersionWeights\":{\"3\":0.5}}",
            "--revision-id",
            "r",
        ]);
        assert_eq!((method, path.as_str()), (Method::PUT, "/2015-03-31/functions/f/aliases/live"));
        assert_eq!(
            body,
            json!({
                "FunctionVersion": "2", "RevisionId": "r",
                "RoutingConfig": { "AdditionalVersionWeights": { "3": 0.5 } },
            })
        );
        let (_, _, body) = sent(&[
            "update-alias",
            "--function-name",
            "f",
            "--name",
            "live",
            "--routing-config",
            "AdditionalVersionWeights={}",
        ]);
        assert_eq!(body, json!({ "RoutingConfig": { "AdditionalVersionWeights": {} } }));

        let (method, path, body) = sent(&["get-alias", "--function-name", ARN, "--name", "live"]);
        assert_eq!(
            (method, path, body),
            (Method::GET, format!("/2015-03-31/functions/{ARN}/aliases/live"), Value::Null)
        );
        let (method, path, _) = sent(&["delete-alias", "--function-name", "f", "--name", "a b"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2015-03-31/functions/f/aliases/a%20b"));

        let l = listing(&["list-aliases", "--function-name", "f", "--function-version", "$LATEST"]);
        assert_eq!(l.key, "Aliases");
        assert_eq!(l.page_path(None, None), "/2015-03-31/functions/f/aliases?FunctionVersion=%24LATEST");
        assert_eq!(
            l.page_path(Some("a"), Some(5)),
            "/2015-03-31/functions/f/aliases?FunctionVersion=%24LATEST&Marker=a&MaxItems=5"
        );
        let l = listing(&["list-aliases", "--function-name", "f"]);
        assert_eq!(l.page_path(None, None), "/2015-03-31/functions/f/aliases");
    }

    #[test]
    fn routing_config_shorthand_and_json() {
        let weights =
            |pairs: &[(&str, f64)]| pairs.iter().map(|(v, w)| (v.to_string(), *w)).collect::<BTreeMap<_, _>>();
        for good in [
            "AdditionalVersionWeights={2=0.3}",
            "AdditionalVersionWeights={\"2\"=0.3}",
            "AdditionalVersionWeights={'2'=0.3}",
            " AdditionalVersionWeights = { 2 = 0.3 } ",
            "{\"AdditionalVersionWeights\":{\"2\":0.3}}",
            "{ \"AdditionalVersionWeights\": { \"2\": 0.3 } }",
        ] {
            assert_eq!(parse_routing_config(good).unwrap(), weights(&[("2", 0.3)]), "{good}");
        }
        assert_eq!(
            parse_routing_config("AdditionalVersionWeights={2=0.25,3=0.5}").unwrap(),
            weights(&[("2", 0.25), ("3", 0.5)])
        );
        assert_eq!(parse_routing_config("AdditionalVersionWeights={2=1}").unwrap(), weights(&[("2", 1.0)]));
        assert!(parse_routing_config("AdditionalVersionWeights={}").unwrap().is_empty());
        assert!(parse_routing_config("{\"AdditionalVersionWeights\":{}}").unwrap().is_empty());
        assert!(parse_routing_config("{}").unwrap().is_empty());
        for bad in [
            "",
            "2=0.3",
            "{2=0.3}",
            "AdditionalVersionWeights",
            "AdditionalVersionWeights=",
            "AdditionalVersionWeights=2=0.3",
            "AdditionalVersionWeights={2=0.3",
            "AdditionalVersionWeights={2:0.3}",
            "AdditionalVersionWeights={2=}",
            "AdditionalVersionWeights={=0.3}",
            "AdditionalVersionWeights={\"\"=0.3}",
            "AdditionalVersionWeights={\"2=0.3}",
            "AdditionalVersionWeights={2=abc}",
            "AdditionalVersionWeights={2=NaN}",
            "AdditionalVersionWeights={2=inf}",
            "AdditionalVersionWeights={2=0.1,2=0.2}",
            "AdditionalVersionWeights={2=0.1,}",
            "Weights={2=0.3}",
            "{\"AdditionalVersionWeights\":{\"2\":\"0.3\"}}",
            "{\"AdditionalVersionWeights\":[0.3]}",
            "{\"Weights\":{\"2\":0.3}}",
            "{\"AdditionalVersionWeights\":{\"2\":0.3}",
            "[1]",
        ] {
            let failure = parse_routing_config(bad).expect_err(bad);
            assert_eq!(failure.kind, "InvalidArgument", "{bad}");
            assert!(failure.message.starts_with("--routing-config"), "{bad}: {}", failure.message);
        }
    }

    #[test]
    fn layers() {
        let (zip, zip64) = zip_file("layer");
        let (method, path, body) = sent(&[
            "publish-layer-version",
            "--layer-name",
            "arn:aws:lambda:us-east-1:000000000000:layer:my layer",
            "--zip-file",
            &format!("fileb://{}", zip.display()),
            "--compatible-runtimes",
            "python3.11",
            "provided.al2023",
            "--compatible-architectures",
            "x86_64",
            "--description",
            "d",
            "--license-info",
            "MIT",
        ]);
        assert_eq!(
            (method, path.as_str()),
            (Method::POST, "/2018-10-31/layers/arn:aws:lambda:us-east-1:000000000000:layer:my%20layer/versions")
        );
        assert_eq!(
            body,
            json!({
                "Content": { "ZipFile": zip64 },
                "CompatibleRuntimes": ["python3.11", "provided.al2023"],
                "CompatibleArchitectures": ["x86_64"],
                "Description": "d",
                "LicenseInfo": "MIT",
            })
        );
        let (_, path, body) =
            sent(&["publish-layer-version", "--layer-name", "l", "--zip-file", &zip.display().to_string()]);
        assert_eq!(
            (path.as_str(), body),
            ("/2018-10-31/layers/l/versions", json!({ "Content": { "ZipFile": zip64 } }))
        );
        std::fs::remove_file(&zip).unwrap();
        let missing = action(&["publish-layer-version", "--layer-name", "l", "--zip-file", &zip.display().to_string()]);
        assert!(matches!(missing, Err(f) if f.kind == "InvalidZipFile"));
    }

    #[test]
    fn concurrency_and_account() {
        let (method, path, body) =
            sent(&["put-function-concurrency", "--function-name", ARN, "--reserved-concurrent-executions", "5"]);
        assert_eq!((method, path), (Method::PUT, format!("/2017-10-31/functions/{ARN}/concurrency")));
        assert_eq!(body, json!({ "ReservedConcurrentExecutions": 5 }));
        // The agent, not the client, says what is out of range.
        let (_, _, body) =
            sent(&["put-function-concurrency", "--function-name", "f", "--reserved-concurrent-executions", "-1"]);
        assert_eq!(body, json!({ "ReservedConcurrentExecutions": -1 }));
        assert!(Cli::try_parse_from(["ember", "put-function-concurrency", "--function-name", "f"]).is_err());
        let (method, path, body) = sent(&["get-function-concurrency", "--function-name", "f"]);
        assert_eq!((method, path.as_str(), body), (Method::GET, "/2019-09-30/functions/f/concurrency", Value::Null));
        let (method, path, _) = sent(&["delete-function-concurrency", "--function-name", "f"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2017-10-31/functions/f/concurrency"));
        let (method, path, body) = sent(&["get-account-settings"]);
        assert_eq!((method, path.as_str(), body), (Method::GET, "/2016-08-19/account-settings/", Value::Null));
    }

    #[test]
    fn event_invoke_configs() {
        let dest = r#"{"OnFailure":{"Destination":"arn:aws:lambda:us-east-1:000000000000:function:c"}}"#;
        let (method, path, body) = sent(&[
            "put-function-event-invoke-config",
            "--function-name",
            "f",
            "--qualifier",
            "live",
            "--maximum-retry-attempts",
            "1",
            "--maximum-event-age-in-seconds",
            "60",
            "--destination-config",
            dest,
        ]);
        assert_eq!(
            (method, path.as_str()),
            (Method::PUT, "/2019-09-25/functions/f/event-invoke-config?Qualifier=live")
        );
        assert_eq!(
            body,
            json!({
                "MaximumRetryAttempts": 1,
                "MaximumEventAgeInSeconds": 60,
                "DestinationConfig": serde_json::from_str::<Value>(dest).unwrap(),
            })
        );
        let bad = action(&["put-function-event-invoke-config", "--function-name", "f", "--destination-config", "{"]);
        assert!(matches!(bad, Err(f) if f.kind == "InvalidArgument"));
        let (method, path, _) = sent(&["get-function-event-invoke-config", "--function-name", "f"]);
        assert_eq!((method, path.as_str()), (Method::GET, "/2019-09-25/functions/f/event-invoke-config"));
        let (method, path, _) = sent(&["delete-function-event-invoke-config", "--function-name", "f"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2019-09-25/functions/f/event-invoke-config"));
    }

    #[test]
    fn event_source_mappings() {
        let queue = "arn:aws:sqs:us-east-1:000000000000:orders";
        let (method, path, body) = sent(&[
            "create-event-source-mapping",
            "--function-name",
            "f:live",
            "--event-source-arn",
            queue,
            "--batch-size",
            "5",
            "--maximum-batching-window-in-seconds",
            "2",
            "--maximum-concurrency",
            "3",
            "--function-response-types",
            "ReportBatchItemFailures",
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/2015-03-31/event-source-mappings/"));
        assert_eq!(
            body,
            json!({
                "FunctionName": "f:live", "EventSourceArn": queue, "Enabled": true, "BatchSize": 5,
                "MaximumBatchingWindowInSeconds": 2, "ScalingConfig": {"MaximumConcurrency": 3},
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
            })
        );
        let (method, path, body) = sent(&["update-event-source-mapping", "--uuid", "u-1", "--enabled", "false"]);
        assert_eq!(
            (method, path.as_str(), body),
            (Method::PUT, "/2015-03-31/event-source-mappings/u-1", json!({"Enabled": false}))
        );
        let (method, path, _) = sent(&["get-event-source-mapping", "--uuid", "u-1"]);
        assert_eq!((method, path.as_str()), (Method::GET, "/2015-03-31/event-source-mappings/u-1"));
        let (method, path, _) = sent(&["delete-event-source-mapping", "--uuid", "u-1"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2015-03-31/event-source-mappings/u-1"));
        let (method, path, _) = sent(&["list-event-source-mappings", "--function-name", "f"]);
        assert_eq!((method, path.as_str()), (Method::GET, "/2015-03-31/event-source-mappings/?FunctionName=f"));
    }

    #[test]
    fn schedules() {
        let (method, path, body) = sent(&[
            "schedule",
            "create",
            "--name",
            "nightly",
            "--schedule-expression",
            "cron(0 3 * * ? *)",
            "--schedule-expression-timezone",
            "Europe/Berlin",
            "--target-arn",
            ARN,
            "--input",
            r#"{"k":1}"#,
            "--action-after-completion",
            "DELETE",
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/schedules/nightly"));
        assert_eq!(
            body,
            json!({
                "ScheduleExpression": "cron(0 3 * * ? *)",
                "ScheduleExpressionTimezone": "Europe/Berlin",
                "Target": { "Arn": ARN, "RoleArn": "arn:aws:iam::000000000000:role/ember", "Input": r#"{"k":1}"# },
                "FlexibleTimeWindow": { "Mode": "OFF" },
                "ActionAfterCompletion": "DELETE",
            })
        );
        let (method, _, body) = sent(&[
            "schedule",
            "update",
            "--name",
            "n",
            "--schedule-expression",
            "rate(1 hour)",
            "--target-arn",
            ARN,
            "--flexible-time-window-minutes",
            "5",
        ]);
        assert_eq!(
            (method, body["FlexibleTimeWindow"].clone()),
            (Method::PUT, json!({ "Mode": "FLEXIBLE", "MaximumWindowInMinutes": 5 }))
        );
        let (method, path, _) = sent(&["schedule", "list", "--state", "ENABLED"]);
        assert_eq!((method, path.as_str()), (Method::GET, "/schedules?State=ENABLED"));
        let (method, path, _) = sent(&["schedule", "delete", "--name", "n"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/schedules/n"));
    }

    #[test]
    fn urls_and_permissions() {
        let (method, path, body) = sent(&[
            "create-function-url-config",
            "--function-name",
            "f",
            "--auth-type",
            "NONE",
            "--cors",
            r#"{"AllowOrigins":["*"]}"#,
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/2021-10-31/functions/f/url"));
        assert_eq!(body, json!({ "AuthType": "NONE", "Cors": { "AllowOrigins": ["*"] } }));
        let (method, path, _) = sent(&["get-function-url-config", "--function-name", "f", "--qualifier", "live"]);
        assert_eq!((method, path.as_str()), (Method::GET, "/2021-10-31/functions/f/url?Qualifier=live"));
        let (method, path, body) = sent(&[
            "add-permission",
            "--function-name",
            "f",
            "--statement-id",
            "url",
            "--action",
            "lambda:InvokeFunctionUrl",
            "--principal",
            "*",
            "--function-url-auth-type",
            "NONE",
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/2015-03-31/functions/f/policy"));
        assert_eq!(
            body,
            json!({ "StatementId": "url", "Action": "lambda:InvokeFunctionUrl", "Principal": "*", "FunctionUrlAuthType": "NONE" })
        );
        let (method, path, _) = sent(&["remove-permission", "--function-name", "f", "--statement-id", "url"]);
        assert_eq!((method, path.as_str()), (Method::DELETE, "/2015-03-31/functions/f/policy/url"));
        let (method, path, _) = sent(&["get-policy", "--function-name", "f"]);
        assert_eq!((method, path.as_str()), (Method::GET, "/2015-03-31/functions/f/policy"));
    }

    /// Runs `list_all` against pages of numbers (`pages[i]` is the page at marker `i`).
    fn list_pages(listing: &Listing, pages: &[&[u32]]) -> (Value, Vec<String>) {
        let mut asked = Vec::new();
        let fetch = |path: String| {
            let start: usize =
                path.split(['?', '&']).find_map(|p| p.strip_prefix("Marker=")).map_or(0, |m| m.parse().unwrap());
            let max: usize = path
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("MaxItems="))
                .map_or(usize::MAX, |m| m.parse().unwrap());
            asked.push(path);
            let items: Vec<u32> = pages[start].iter().copied().take(max).collect();
            let mut page = json!({ "Things": items });
            if start + 1 < pages.len() {
                page["NextMarker"] = json!((start + 1).to_string());
            }
            async move { Ok(page) }
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let out = runtime.block_on(list_all(listing, fetch)).unwrap();
        (out, asked)
    }

    #[test]
    fn lists_follow_the_markers() {
        let paging = |marker: Option<&str>, max_items| Paging { marker: marker.map(str::to_string), max_items };
        let pages: &[&[u32]] = &[&[1, 2], &[3], &[4, 5]];
        let all = Listing::new("/l".into(), "Things", &paging(None, None));
        let (out, asked) = list_pages(&all, pages);
        assert_eq!(out, json!({ "Things": [1, 2, 3, 4, 5] }));
        assert_eq!(asked, ["/l", "/l?Marker=1", "/l?Marker=2"]);
        let from = Listing::new("/l".into(), "Things", &paging(Some("1"), None));
        assert_eq!(list_pages(&from, pages).0, json!({ "Things": [3, 4, 5] }));
        // --max-items stops early and says where to go on.
        let some = Listing::new("/l".into(), "Things", &paging(None, Some(3)));
        let (out, asked) = list_pages(&some, pages);
        assert_eq!(out, json!({ "Things": [1, 2, 3], "NextMarker": "2" }));
        assert_eq!(asked, ["/l?MaxItems=3", "/l?Marker=1&MaxItems=1"]);
        let enough = Listing::new("/l".into(), "Things", &paging(Some("2"), Some(2)));
        assert_eq!(list_pages(&enough, pages).0, json!({ "Things": [4, 5] }));
        // A page that points at itself ends the list.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let stuck = Listing::new("/l".into(), "Things", &paging(Some("m"), None));
        let out = runtime.block_on(list_all(&stuck, |_| async { Ok(json!({ "Things": [], "NextMarker": "m" })) }));
        assert_eq!(out.unwrap(), json!({ "Things": [] }));
    }
}
