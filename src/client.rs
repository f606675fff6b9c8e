//! `ember` as a client of the agent: Lambda's operations over the agent's Unix socket (`--socket`,
//! default `$EMBER_SOCKET` or `/run/ember/ember.sock`) or loopback TCP (`--endpoint
//! http://127.0.0.1:PORT`, default `$EMBER_ENDPOINT`).
//!
//! Answers are printed as pretty JSON; an error is printed as `<Type>: <message>` on stderr with
//! exit status 1. `invoke` prints the function's response as is and exits 2 when the function
//! failed (`X-Amz-Function-Error`).

use std::collections::BTreeMap;
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
    /// Show a function.
    GetFunction(NameArgs),
    /// Delete a function.
    DeleteFunction(NameArgs),
    /// Print the end of a function's log.
    Logs(LogsArgs),
}

/// `create-function`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name.
    #[arg(long)]
    function_name: String,
    /// provided.al2023 or python3.11.
    #[arg(long)]
    runtime: String,
    /// The handler, e.g. handler.echo (python3.11); optional for provided.al2023.
    #[arg(long)]
    handler: Option<String>,
    /// The deployment package (`fileb://` prefix accepted).
    #[arg(long)]
    zip_file: String,
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
}

/// `update-function-code`.
#[derive(clap::Args, Debug)]
pub struct UpdateCodeArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name or ARN.
    #[arg(long)]
    function_name: String,
    /// The new deployment package (`fileb://` prefix accepted).
    #[arg(long)]
    zip_file: String,
}

/// `update-function-configuration`.
#[derive(clap::Args, Debug)]
pub struct UpdateConfigArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name or ARN.
    #[arg(long)]
    function_name: String,
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
}

/// `invoke`.
#[derive(clap::Args, Debug)]
pub struct InvokeArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name or ARN.
    #[arg(long)]
    function_name: String,
    /// The event: JSON, or @FILE (or file://FILE) to read it from a file [default: {}].
    #[arg(long)]
    payload: Option<String>,
    /// Tail: print the end of the invocation's log on stderr.
    #[arg(long, value_parser = ["None", "Tail"])]
    log_type: Option<String>,
    /// RequestResponse (wait for the answer), Event (queue it) or DryRun (check only).
    #[arg(long, value_parser = ["RequestResponse", "Event", "DryRun"])]
    invocation_type: Option<String>,
    /// The version (only $LATEST exists).
    #[arg(long)]
    qualifier: Option<String>,
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

/// `logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    connect: Connect,
    /// The function's name or ARN.
    #[arg(long)]
    function_name: String,
    /// How many bytes from the end of the log.
    #[arg(long, default_value_t = 65536)]
    bytes: usize,
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
    match command {
        ClientCommand::CreateFunction(args) => create_function(args).await,
        ClientCommand::UpdateFunctionCode(args) => {
            let body = json!({ "ZipFile": read_zip(&args.zip_file)? });
            let path = format!("{}/code", function_path(&args.function_name));
            print_json(&call_json(&args.connect, Method::PUT, &path, Some(body)).await?)
        }
        ClientCommand::UpdateFunctionConfiguration(args) => update_configuration(args).await,
        ClientCommand::Invoke(args) => invoke(args).await,
        ClientCommand::ListFunctions(args) => {
            let mut functions: Vec<Value> = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                let path = match &marker {
                    None => "/2015-03-31/functions/".to_string(),
                    Some(m) => format!("/2015-03-31/functions/?Marker={}", encode(m)),
                };
                let page = call_json(&args.connect, Method::GET, &path, None).await?;
                functions.extend(page["Functions"].as_array().cloned().unwrap_or_default());
                match page["NextMarker"].as_str() {
                    Some(m) => marker = Some(m.to_string()),
                    None => break,
                }
            }
            print_json(&json!({ "Functions": functions }))
        }
        ClientCommand::GetFunction(args) => {
            print_json(&call_json(&args.connect, Method::GET, &function_path(&args.function_name), None).await?)
        }
        ClientCommand::DeleteFunction(args) => {
            call(&args.connect, Method::DELETE, &function_path(&args.function_name), &[], Bytes::new()).await?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Logs(args) => {
            let path = format!("{}/logs?bytes={}", function_path(&args.function_name), args.bytes);
            let reply = call(&args.connect, Method::GET, &path, &[], Bytes::new()).await?;
            std::io::stdout().write_all(&reply.body).map_err(|e| Failure::new("OutputError", e.to_string()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create_function(args: CreateArgs) -> Result<ExitCode, Failure> {
    let mut body = json!({
        "FunctionName": args.function_name,
        "Runtime": args.runtime,
        "Role": args.role,
        "Code": { "ZipFile": read_zip(&args.zip_file)? },
    });
    if let Some(handler) = args.handler {
        body["Handler"] = json!(handler);
    }
    if let Some(memory) = args.memory_size {
        body["MemorySize"] = json!(memory);
    }
    if let Some(timeout) = args.timeout {
        body["Timeout"] = json!(timeout);
    }
    if let Some(size) = args.ephemeral_storage {
        body["EphemeralStorage"] = json!({ "Size": size });
    }
    if !args.environment.is_empty() {
        body["Environment"] = json!({ "Variables": parse_environment(&args.environment)? });
    }
    if let Some(description) = args.description {
        body["Description"] = json!(description);
    }
    print_json(&call_json(&args.connect, Method::POST, "/2015-03-31/functions", Some(body)).await?)
}

async fn update_configuration(args: UpdateConfigArgs) -> Result<ExitCode, Failure> {
    let mut body = json!({});
    let fields = [
        ("Runtime", args.runtime.map(Value::from)),
        ("Handler", args.handler.map(Value::from)),
        ("MemorySize", args.memory_size.map(Value::from)),
        ("Timeout", args.timeout.map(Value::from)),
        ("Role", args.role.map(Value::from)),
        ("Description", args.description.map(Value::from)),
        ("EphemeralStorage", args.ephemeral_storage.map(|size| json!({ "Size": size }))),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    if let Some(vars) = &args.environment {
        body["Environment"] = json!({ "Variables": parse_environment(vars)? });
    }
    let path = format!("{}/configuration", function_path(&args.function_name));
    print_json(&call_json(&args.connect, Method::PUT, &path, Some(body)).await?)
}

async fn invoke(args: InvokeArgs) -> Result<ExitCode, Failure> {
    let payload = match args.payload.as_deref() {
        None => Bytes::from_static(b"{}"),
        Some(p) => match p.strip_prefix('@').or_else(|| p.strip_prefix("file://")) {
            Some(file) => Bytes::from(
                std::fs::read(file).map_err(|e| Failure::new("InvalidPayload", format!("cannot read {file}: {e}")))?,
            ),
            None => Bytes::from(p.to_string()),
        },
    };
    let mut headers: Vec<(&str, String)> = Vec::new();
    if let Some(t) = args.invocation_type {
        headers.push(("x-amz-invocation-type", t));
    }
    let tail = args.log_type.as_deref() == Some("Tail");
    if tail {
        headers.push(("x-amz-log-type", "Tail".to_string()));
    }
    if let Some(c) = args.client_context {
        headers.push(("x-amz-client-context", c));
    }
    let mut path = format!("{}/invocations", function_path(&args.function_name));
    if let Some(q) = &args.qualifier {
        path.push_str(&format!("?Qualifier={}", encode(q)));
    }
    let reply = call(&args.connect, Method::POST, &path, &headers, payload).await?;
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
    match &args.outfile {
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

fn parse_environment(pairs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(Failure::new("InvalidArgument", format!("--environment wants KEY=VALUE, not {pair}"))),
        })
        .collect()
}

/// The zip at `path` (`fileb://` and `file://` prefixes accepted), in base64.
fn read_zip(path: &str) -> Result<String, Failure> {
    let path = path.strip_prefix("fileb://").or_else(|| path.strip_prefix("file://")).unwrap_or(path);
    let zip = std::fs::read(Path::new(path))
        .map_err(|e| Failure::new("InvalidZipFile", format!("cannot read {path}: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(zip))
}

fn function_path(name: &str) -> String {
    format!("/2015-03-31/functions/{}", encode(name))
}

/// Percent-encodes everything but unreserved characters and `:` (for names and ARNs).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:$".contains(&b) {
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

/// A call whose answer is JSON.
async fn call_json(connect: &Connect, method: Method, path: &str, body: Option<Value>) -> Result<Value, Failure> {
    let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).expect("a JSON value serializes"))).unwrap_or_default();
    let reply = call(connect, method, path, &[], body).await?;
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
async fn call(
    connect: &Connect,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Reply, Failure> {
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
        req = req.header(*name, value.as_str());
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
        let env = parse_environment(&args.environment).unwrap();
        assert_eq!(env["B"], "2=3");
        assert!(parse_environment(&["nope".to_string()]).is_err());
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
        assert_eq!(
            function_path("arn:aws:lambda:us-east-1:000000000000:function:f"),
            "/2015-03-31/functions/arn:aws:lambda:us-east-1:000000000000:function:f"
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
