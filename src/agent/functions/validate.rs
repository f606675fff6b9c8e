//! Checks of request values against Lambda's limits and patterns, with Lambda's wording. Each
//! returns the value as the store keeps it, or [`Error::Invalid`].

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;

use super::Error;
use crate::agent::codezip::PROVIDED_RUNTIME;
use crate::agent::ids::{self, Qualifier, Version};
use crate::agent::limits;

/// The runtimes this host has.
pub const RUNTIMES: [&str; 3] = [PROVIDED_RUNTIME, "python3.11", "nodejs20.x"];

/// Environment variables Lambda sets itself and refuses from the caller.
const RESERVED_ENV: [&str; 16] = [
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_REGION",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
];

/// Lambda's wording for a failed constraint.
pub fn constraint(value: impl Display, field: &str, rule: &str) -> Error {
    Error::Invalid(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}"
    ))
}

fn in_range(value: i64, field: &str, range: std::ops::RangeInclusive<u32>) -> Result<u32, Error> {
    let (min, max) = (i64::from(*range.start()), i64::from(*range.end()));
    if value < min {
        return Err(constraint(value, field, &format!("Member must have value greater than or equal to {min}")));
    }
    if value > max {
        return Err(constraint(value, field, &format!("Member must have value less than or equal to {max}")));
    }
    Ok(value as u32)
}

/// MemorySize: 128 to 10240 MB.
pub fn memory(mib: i64) -> Result<u32, Error> {
    in_range(mib, "memorySize", limits::MEMORY_MIB)
}

/// Timeout: 1 to 900 s.
pub fn timeout(s: i64) -> Result<u32, Error> {
    in_range(s, "timeout", limits::TIMEOUT_S)
}

/// EphemeralStorage.Size: 512 to 10240 MB.
pub fn ephemeral(mib: i64) -> Result<u32, Error> {
    in_range(mib, "ephemeralStorage.size", limits::EPHEMERAL_MIB)
}

/// A function name as CreateFunction takes it: `[a-zA-Z0-9-_]{1,64}`.
pub fn function_name(name: &str) -> Result<(), Error> {
    if name.len() > 64 {
        return Err(constraint(name, "functionName", "Member must have length less than or equal to 64"));
    }
    if !ids::valid_function_name(name) {
        return Err(constraint(name, "functionName", "Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+"));
    }
    Ok(())
}

/// A runtime this host has.
pub fn runtime(runtime: &str) -> Result<(), Error> {
    if RUNTIMES.contains(&runtime) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "The runtime parameter of {runtime} is not supported by this host. Use one of: {}.",
        RUNTIMES.join(", ")
    )))
}

/// The handler: required for python3.11 and nodejs20.x, `[^\s]+`, at most 128 characters; may be empty for a
/// provided runtime (its `bootstrap` needs none).
pub fn handler(runtime: &str, handler: &str) -> Result<(), Error> {
    if handler.is_empty() {
        if runtime == PROVIDED_RUNTIME {
            return Ok(());
        }
        return Err(Error::Invalid(format!("Handler is required for the {runtime} runtime.")));
    }
    if handler.chars().count() > limits::MAX_HANDLER {
        return Err(constraint(handler, "handler", "Member must have length less than or equal to 128"));
    }
    if handler.chars().any(char::is_whitespace) {
        return Err(constraint(handler, "handler", "Member must satisfy regular expression pattern: [^\\s]+"));
    }
    Ok(())
}

/// The role: an IAM role ARN (stored, not used).
pub fn role(role: &str) -> Result<(), Error> {
    if role.starts_with("arn:") && role.len() <= 2048 && !role.chars().any(char::is_whitespace) {
        return Ok(());
    }
    Err(constraint(
        role,
        "role",
        "Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
    ))
}

/// A description: at most 256 characters.
pub fn description(description: &str) -> Result<(), Error> {
    if description.chars().count() > limits::MAX_DESCRIPTION {
        return Err(constraint(description, "description", "Member must have length less than or equal to 256"));
    }
    Ok(())
}

/// Environment variables: keys `[a-zA-Z]([a-zA-Z0-9_])+`, none of Lambda's reserved keys, at
/// most 4 KB as JSON.
pub fn environment(vars: &BTreeMap<String, String>) -> Result<(), Error> {
    let key_ok = |k: &str| {
        let b = k.as_bytes();
        b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    if let Some(bad) = vars.keys().find(|k| !key_ok(k)) {
        return Err(Error::Invalid(format!(
            "1 validation error detected: Value '{bad}' at 'environment.variables' failed to satisfy constraint: \
             Map keys must satisfy constraint: [Member must satisfy regular expression pattern: \
             [a-zA-Z]([a-zA-Z0-9_])+]"
        )));
    }
    let reserved: Vec<&str> = vars.keys().map(String::as_str).filter(|k| RESERVED_ENV.contains(k)).collect();
    if !reserved.is_empty() {
        return Err(Error::Invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have \
             provided contains reserved keys that are currently not supported for modification. Reserved keys used \
             in this request: {}",
            reserved.join(", ")
        )));
    }
    let measured = serde_json::to_string(vars).expect("a string map serializes");
    if measured.len() > limits::MAX_ENV_BYTES {
        return Err(Error::Invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have \
             provided exceeded the 4KB limit. String measured: {measured}"
        )));
    }
    Ok(())
}

/// Architectures: x86_64 only, on this host.
pub fn architectures(archs: &[String]) -> Result<(), Error> {
    match archs {
        [] => Ok(()),
        [a] if a == "x86_64" => Ok(()),
        other => Err(Error::Invalid(format!("Architectures {other:?} are not supported: this host runs x86_64 only."))),
    }
}

/// `SnapStart.ApplyOn`: whether init snapshots are on.
pub fn snap_start(apply_on: &str) -> Result<bool, Error> {
    match apply_on {
        "PublishedVersions" => Ok(true),
        "None" => Ok(false),
        other => {
            Err(constraint(other, "snapStart.applyOn", "Member must satisfy enum value set: [PublishedVersions, None]"))
        }
    }
}

/// SnapStart on `runtime`: refused on the runtimes of [`limits::NO_SNAP_START`], in Lambda's
/// words.
pub fn snap_start_runtime(runtime: &str) -> Result<(), Error> {
    if limits::NO_SNAP_START.contains(&runtime) {
        return Err(Error::Invalid(format!("{runtime} is not supported for SnapStart enabled functions.")));
    }
    Ok(())
}

/// A function's layers: at most 5 layer version ARNs, no layer twice.
pub fn layers(arns: &[String]) -> Result<(), Error> {
    if arns.len() > limits::MAX_LAYERS {
        return Err(constraint(
            format!("[{}]", arns.join(", ")),
            "layers",
            "Member must have length less than or equal to 5",
        ));
    }
    let mut names = HashSet::new();
    for arn in arns {
        let layer = arn.rsplit_once(':').map(|(layer, _)| layer).unwrap_or(arn);
        let well_formed =
            arn.starts_with("arn:") && arn.split(':').count() == 8 && arn.split(':').nth(5) == Some("layer");
        if !well_formed || arn.len() > 140 {
            return Err(constraint(
                arn,
                "layers",
                "Member must satisfy regular expression pattern: \
                 arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:\\d{12}:layer:[a-zA-Z0-9-_]+:[0-9]+",
            ));
        }
        if !names.insert(layer) {
            return Err(Error::Invalid(format!("Two different versions of the same layer are not allowed: {layer}")));
        }
    }
    Ok(())
}

/// A layer name: `[a-zA-Z0-9-_]{1,140}` (or its ARN, which is reduced to the name).
pub fn layer_name(name: &str) -> Result<String, Error> {
    let plain = match name.strip_prefix("arn:") {
        Some(_) => {
            let parts: Vec<&str> = name.split(':').collect();
            match parts.as_slice() {
                [_, _, "lambda", region, account, "layer", layer]
                    if *region == ids::region() && *account == ids::ACCOUNT_ID =>
                {
                    *layer
                }
                _ => return Err(Error::NotFound(format!("Layer not found: {name}"))),
            }
        }
        None => name,
    };
    let ok =
        (1..=140).contains(&plain.len()) && plain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(constraint(name, "layerName", "Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+"));
    }
    Ok(plain.to_owned())
}

/// A layer's `LicenseInfo`: at most 512 characters.
pub fn license(license: &str) -> Result<(), Error> {
    if license.chars().count() > limits::MAX_LICENSE {
        return Err(constraint(license, "licenseInfo", "Member must have length less than or equal to 512"));
    }
    Ok(())
}

/// A layer's `CompatibleRuntimes` (at most 15) and `CompatibleArchitectures` (at most 2, of
/// x86_64 and arm64). Runtimes this host lacks may be named: a layer can serve several hosts.
pub fn compatibility(runtimes: &[String], architectures: &[String]) -> Result<(), Error> {
    if runtimes.len() > 15 {
        return Err(constraint(
            runtimes.len(),
            "compatibleRuntimes",
            "Member must have length less than or equal to 15",
        ));
    }
    if let Some(bad) = runtimes.iter().find(|r| {
        r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    }) {
        return Err(constraint(bad, "compatibleRuntimes", "Member must satisfy enum value set of Lambda's runtimes"));
    }
    if architectures.len() > 2 {
        return Err(constraint(
            architectures.len(),
            "compatibleArchitectures",
            "Member must have length less than or equal to 2",
        ));
    }
    if let Some(bad) = architectures.iter().find(|a| *a != "x86_64" && *a != "arm64") {
        return Err(constraint(bad, "compatibleArchitectures", "Member must satisfy enum value set: [x86_64, arm64]"));
    }
    Ok(())
}

/// Tags: keys of 1 to 128 characters not starting with `aws:`, values of at most 256.
pub fn tags(tags: &BTreeMap<String, String>) -> Result<(), Error> {
    if tags.len() > limits::MAX_TAGS {
        return Err(Error::Invalid(format!(
            "Number of tags exceeds resource tag limit. A function can have at most {} tags.",
            limits::MAX_TAGS
        )));
    }
    for (key, value) in tags {
        tag_key(key)?;
        if value.chars().count() > limits::MAX_TAG_VALUE {
            return Err(constraint(value, "tags", "Map value must have length less than or equal to 256"));
        }
    }
    Ok(())
}

/// A tag key: 1 to 128 characters, not starting with `aws:`.
pub fn tag_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.chars().count() > limits::MAX_TAG_KEY {
        return Err(constraint(key, "tags", "Map key must have length between 1 and 128"));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(Error::Invalid(format!("Tag keys starting with 'aws:' are reserved for AWS use: {key}")));
    }
    Ok(())
}

/// An alias name: `(?!^[0-9]+$)([a-zA-Z0-9-_]+)`, at most 128 characters.
pub fn alias_name(name: &str) -> Result<(), Error> {
    if ids::valid_alias_name(name) {
        return Ok(());
    }
    Err(constraint(name, "name", "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"))
}

/// A version an alias may point to: `$LATEST` or a number.
pub fn alias_version(version: &str) -> Result<Version, Error> {
    match Qualifier::parse(version) {
        Ok(Qualifier::Version(v)) => Ok(v),
        _ => Err(constraint(
            version,
            "functionVersion",
            "Member must satisfy regular expression pattern: (\\$LATEST|[0-9]+)",
        )),
    }
}

/// `RoutingConfig.AdditionalVersionWeights` of an alias pointing to `primary`: at most one
/// other published version, with a weight from 0 to 1; the alias's own version must be a
/// published one then too.
pub fn weights(primary: Version, weights: &BTreeMap<String, f64>) -> Result<BTreeMap<Version, f64>, Error> {
    if weights.len() > 1 {
        return Err(Error::Invalid("Number of items in AdditionalVersionWeights cannot be greater than 1".to_owned()));
    }
    let mut out = BTreeMap::new();
    for (version, weight) in weights {
        let v = alias_version(version)?;
        if !(0.0..=1.0).contains(weight) || weight.is_nan() {
            return Err(constraint(
                weight,
                "routingConfig.additionalVersionWeights",
                "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, Member must have \
                 value greater than or equal to 0.0]",
            ));
        }
        if v.is_latest() || primary.is_latest() {
            return Err(Error::Invalid(
                "$LATEST is not supported for an alias pointing to more than 1 version".to_owned(),
            ));
        }
        if v == primary {
            return Err(Error::Invalid(format!(
                "Invalid function version {version}. Function version {version} is already included in routing \
                 configuration."
            )));
        }
        out.insert(v, *weight);
    }
    Ok(out)
}

/// `MaximumRetryAttempts`: 0 to 2.
pub fn max_retries(n: i64) -> Result<u32, Error> {
    in_range(n, "maximumRetryAttempts", limits::ASYNC_RETRIES)
}

/// `MaximumEventAgeInSeconds`: 60 to 21600.
pub fn max_event_age(s: i64) -> Result<u32, Error> {
    in_range(s, "maximumEventAgeInSeconds", limits::ASYNC_EVENT_AGE_S)
}

/// A destination's ARN: a function, or a queue where the agent has a broker.
pub fn destination(arn: &str, broker: bool) -> Result<(), Error> {
    crate::agent::invoke::destinations::parse(arn, broker).map(|_| ()).map_err(|e| Error::Invalid(e.to_string()))
}

/// An event source mapping's `BatchSize` (1 to 10000) with its batching window (0 to 300 s):
/// past 10 messages a batch needs a window of at least 1 s, as on Lambda.
pub fn batching(batch_size: i64, window_s: i64) -> Result<(u32, u32), Error> {
    let size = in_range(batch_size, "batchSize", limits::ESM_BATCH_SIZE)?;
    let window = in_range(window_s, "maximumBatchingWindowInSeconds", limits::ESM_BATCHING_WINDOW_S)?;
    if size > 10 && window == 0 {
        return Err(Error::Invalid(
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10".into(),
        ));
    }
    Ok((size, window))
}

/// `ScalingConfig.MaximumConcurrency`: 2 to 1000.
pub fn max_concurrency(n: i64) -> Result<u32, Error> {
    in_range(n, "scalingConfig.maximumConcurrency", limits::ESM_MAX_CONCURRENCY)
}

/// `FunctionResponseTypes`: empty, or `ReportBatchItemFailures`; whether it is set.
pub fn response_types(types: &[String]) -> Result<bool, Error> {
    match types.iter().find(|t| *t != "ReportBatchItemFailures") {
        Some(t) => {
            Err(constraint(t, "functionResponseTypes", "Member must satisfy enum value set: [ReportBatchItemFailures]"))
        }
        None => Ok(!types.is_empty()),
    }
}

/// `DeadLetterConfig.TargetArn`: a queue, where the agent has a broker ("" removes it).
pub fn dead_letter(arn: &str, broker: bool) -> Result<Option<String>, Error> {
    if arn.is_empty() {
        return Ok(None);
    }
    if crate::agent::broker::queue_name(arn).is_none() {
        return Err(Error::Invalid(format!(
            "The dead-letter target {arn} is not a queue ARN (arn:aws:sqs:<region>:<account>:<name>); this host \
             delivers dead letters to queues only."
        )));
    }
    if !broker {
        return Err(Error::Invalid(format!(
            "The dead-letter target {arn} is a queue: it needs a message broker, which this agent was started \
             without (ember serve --amqp-url)."
        )));
    }
    Ok(Some(arn.to_owned()))
}

/// AddPermission's `StatementId`: `[a-zA-Z0-9-_.]{1,100}`.
pub fn statement_id(sid: &str) -> Result<(), Error> {
    if (1..=100).contains(&sid.len()) && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Ok(());
    }
    Err(constraint(sid, "statementId", "Member must satisfy regular expression pattern: ([a-zA-Z0-9-_.]+)"))
}

/// AddPermission's `Action`: `lambda:<Operation>`, `lambda:*` or `*`.
pub fn policy_action(action: &str) -> Result<(), Error> {
    let ok = action == "*"
        || action
            .strip_prefix("lambda:")
            .is_some_and(|op| op == "*" || (!op.is_empty() && op.bytes().all(|b| b.is_ascii_alphabetic())));
    if ok {
        return Ok(());
    }
    Err(constraint(
        action,
        "action",
        "Member must satisfy regular expression pattern: (lambda:[*]|lambda:[a-zA-Z]+|[*])",
    ))
}

/// A `FunctionUrlAuthType` as a name: `NONE` or `AWS_IAM`.
pub fn url_auth_type_name(t: &str) -> Result<(), Error> {
    match t {
        "NONE" | "AWS_IAM" => Ok(()),
        _ => Err(constraint(t, "authType", "Member must satisfy enum value set: [NONE, AWS_IAM]")),
    }
}

/// A function URL's `AuthType` as this host serves it: `NONE`. `AWS_IAM` needs SigV4
/// verification, which this host does not do yet.
pub fn url_auth_type(t: &str) -> Result<(), Error> {
    url_auth_type_name(t)?;
    if t == "AWS_IAM" {
        return Err(Error::Invalid(
            "AuthType AWS_IAM is not supported by this host yet (it needs SigV4 request signing to be verified); use              NONE with a resource-based policy (AddPermission) that lets `*` call lambda:InvokeFunctionUrl."
                .into(),
        ));
    }
    Ok(())
}

/// A function URL's `InvokeMode`: `BUFFERED` (response streaming is not served yet).
pub fn url_invoke_mode(mode: &str) -> Result<(), Error> {
    match mode {
        "BUFFERED" => Ok(()),
        "RESPONSE_STREAM" => {
            Err(Error::Invalid("InvokeMode RESPONSE_STREAM is not supported by this host yet; use BUFFERED.".into()))
        }
        _ => Err(constraint(mode, "invokeMode", "Member must satisfy enum value set: [BUFFERED, RESPONSE_STREAM]")),
    }
}

/// A function URL's `Cors.MaxAge`: 0 to 86400 s.
pub fn cors_max_age(s: i64) -> Result<u32, Error> {
    in_range(s, "cors.maxAge", 0..=86_400)
}

/// `ReservedConcurrentExecutions`: 0 up.
pub fn reserved(n: i64) -> Result<u32, Error> {
    if n < 0 {
        return Err(constraint(n, "reservedConcurrentExecutions", "Member must have value greater than or equal to 0"));
    }
    u32::try_from(n).map_err(|_| constraint(n, "reservedConcurrentExecutions", "Member must fit the host's limit"))
}

/// `ProvisionedConcurrentExecutions`: 1 up.
pub fn provisioned(n: i64) -> Result<u32, Error> {
    if n < 1 {
        return Err(constraint(
            n,
            "provisionedConcurrentExecutions",
            "Member must have value greater than or equal to 1",
        ));
    }
    u32::try_from(n).map_err(|_| constraint(n, "provisionedConcurrentExecutions", "Member must fit the host's limit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn limits() {
        assert_eq!(memory(128).unwrap(), 128);
        assert_eq!(memory(10_240).unwrap(), 10_240);
        assert!(msg(memory(64).unwrap_err()).contains("greater than or equal to 128"));
        assert!(memory(10_241).is_err());
        assert!(timeout(0).is_err() && timeout(901).is_err());
        assert_eq!(timeout(900).unwrap(), 900);
        assert!(ephemeral(511).is_err() && ephemeral(10_241).is_err());
        assert!(function_name("a").is_ok() && function_name(&"a".repeat(64)).is_ok());
        assert!(function_name(&"a".repeat(65)).is_err() && function_name("a b").is_err());
        assert!(runtime("python3.11").is_ok() && runtime("provided.al2023").is_ok() && runtime("nodejs20.x").is_ok());
        assert!(
            msg(runtime("nodejs22.x").unwrap_err()).starts_with("The runtime parameter of nodejs22.x is not supported")
        );
        assert!(snap_start_runtime("python3.11").is_ok());
        assert_eq!(
            msg(snap_start_runtime("nodejs20.x").unwrap_err()),
            "nodejs20.x is not supported for SnapStart enabled functions."
        );
        assert!(handler("python3.11", "").is_err() && handler("python3.11", "a b").is_err());
        assert!(handler("provided.al2023", "").is_ok());
        assert!(role("arn:aws:iam::000000000000:role/x").is_ok() && role("admin").is_err());
        assert!(reserved(0).is_ok() && reserved(-1).is_err());
        assert!(provisioned(1).is_ok() && provisioned(0).is_err());
    }

    #[test]
    fn environment_rules() {
        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(environment(&env(&[("MY_VAR", "1"), ("b2", "")])).is_ok());
        assert!(environment(&env(&[("X", "1")])).is_err(), "one character is below the pattern");
        assert!(environment(&env(&[("1X", "1")])).is_err());
        assert!(environment(&env(&[("A-B", "1")])).is_err());
        let e = msg(environment(&env(&[("AWS_REGION", "x")])).unwrap_err());
        assert!(e.ends_with("Reserved keys used in this request: AWS_REGION"), "{e}");
        let big = "x".repeat(4100);
        assert!(msg(environment(&env(&[("BIG", &big)])).unwrap_err()).contains("4KB"));
    }

    #[test]
    fn layer_lists() {
        let arn = |n: &str, v: u32| ids::layer_version_arn(n, v);
        assert!(layers(&[arn("a", 1), arn("b", 2)]).is_ok());
        let six: Vec<String> = (0..6).map(|i| arn(&format!("l{i}"), 1)).collect();
        assert!(msg(layers(&six).unwrap_err()).contains("less than or equal to 5"));
        assert!(msg(layers(&[arn("a", 1), arn("a", 2)]).unwrap_err()).contains("same layer"));
        assert!(layers(&["not-an-arn".into()]).is_err());
        assert_eq!(layer_name("my-layer").unwrap(), "my-layer");
        assert_eq!(layer_name(&ids::layer_arn("my-layer")).unwrap(), "my-layer");
        assert!(layer_name("bad name").is_err());
        assert!(compatibility(&["python3.11".into()], &["x86_64".into()]).is_ok());
        assert!(compatibility(&[], &["sparc".into()]).is_err());
    }

    #[test]
    fn tag_rules() {
        let t = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(tags(&t("team", "a")).is_ok());
        assert!(tags(&t("aws:x", "a")).is_err());
        assert!(tags(&t("", "a")).is_err());
        assert!(tags(&t(&"k".repeat(129), "a")).is_err());
        assert!(tags(&t("k", &"v".repeat(257))).is_err());
        let many: BTreeMap<String, String> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(tags(&many).is_err());
    }

    #[test]
    fn alias_rules() {
        assert!(alias_name("live").is_ok() && alias_name("42").is_err());
        assert_eq!(alias_version("$LATEST").unwrap(), Version::LATEST);
        assert_eq!(alias_version("3").unwrap(), Version::published(3));
        assert!(alias_version("live").is_err());
        let w = |v: &str, x: f64| BTreeMap::from([(v.to_string(), x)]);
        let (v1, v2) = (Version::published(1), Version::published(2));
        assert_eq!(weights(v1, &w("2", 0.3)).unwrap(), BTreeMap::from([(v2, 0.3)]));
        assert!(weights(v1, &w("2", 1.5)).is_err());
        assert!(weights(v1, &w("1", 0.5)).is_err());
        assert!(weights(Version::LATEST, &w("2", 0.5)).is_err());
        assert!(weights(v1, &w("$LATEST", 0.5)).is_err());
        let two = BTreeMap::from([("2".to_string(), 0.1), ("3".to_string(), 0.1)]);
        assert!(weights(v1, &two).is_err());
    }
}
