//! Request members this host does not implement are refused by name, never silently ignored:
//! a user must never believe a setting took effect when it did not. Each operation's body is
//! checked against a table: members Ember implements pass; members of Lambda's model it does
//! not implement pass only when set to their harmless default (`TracingConfig.Mode`
//! `PassThrough`, an empty `VpcConfig`, ...); anything else is refused with
//! `InvalidParameterValueException` naming the member.

use serde_json::Value;

use super::error::ApiError;

/// What a member may be.
pub enum Rule {
    /// Implemented: any value (the operation checks it).
    Supported,
    /// Not implemented: allowed only when the check says its value changes nothing.
    Unimplemented(fn(&Value) -> bool),
    /// A structure whose members have rules of their own.
    Struct(&'static [(&'static str, Rule)]),
}

use Rule::{Struct, Supported, Unimplemented};

/// A value that sets nothing: null, false, "", [] or an object of such values.
pub fn unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(unset),
        Value::Number(_) => false,
    }
}

fn pass_through(v: &Value) -> bool {
    v.is_null() || v == "PassThrough"
}

fn text_logs(v: &Value) -> bool {
    v.is_null() || v == "Text"
}

const VPC_CONFIG: Rule = Struct(&[
    ("SubnetIds", Unimplemented(unset)),
    ("SecurityGroupIds", Unimplemented(unset)),
    ("Ipv6AllowedForDualStack", Unimplemented(unset)),
]);
const TRACING_CONFIG: Rule = Struct(&[("Mode", Unimplemented(pass_through))]);
const DEAD_LETTER_CONFIG: Rule = Struct(&[("TargetArn", Supported)]);
const LOGGING_CONFIG: Rule = Struct(&[
    ("LogFormat", Unimplemented(text_logs)),
    ("ApplicationLogLevel", Unimplemented(unset)),
    ("SystemLogLevel", Unimplemented(unset)),
    ("LogGroup", Unimplemented(unset)),
]);
const ENVIRONMENT: Rule = Struct(&[("Variables", Supported)]);
const EPHEMERAL_STORAGE: Rule = Struct(&[("Size", Supported)]);
const SNAP_START: Rule = Struct(&[("ApplyOn", Supported)]);
const IMAGE_CONFIG: Rule =
    Struct(&[("EntryPoint", Supported), ("Command", Supported), ("WorkingDirectory", Supported)]);

/// CreateFunction's members.
pub const CREATE_FUNCTION: &[(&str, Rule)] = &[
    ("FunctionName", Supported),
    ("Runtime", Supported),
    ("Role", Supported),
    ("Handler", Supported),
    (
        "Code",
        Struct(&[
            ("ZipFile", Supported),
            ("S3Bucket", Unimplemented(unset)),
            ("S3Key", Unimplemented(unset)),
            ("S3ObjectVersion", Unimplemented(unset)),
            ("ImageUri", Supported),
            ("SourceKMSKeyArn", Unimplemented(unset)),
        ]),
    ),
    ("Description", Supported),
    ("Timeout", Supported),
    ("MemorySize", Supported),
    ("Publish", Supported),
    ("VpcConfig", VPC_CONFIG),
    ("PackageType", Supported),
    ("DeadLetterConfig", DEAD_LETTER_CONFIG),
    ("Environment", ENVIRONMENT),
    ("KMSKeyArn", Unimplemented(unset)),
    ("TracingConfig", TRACING_CONFIG),
    ("Tags", Supported),
    ("Layers", Supported),
    ("FileSystemConfigs", Unimplemented(unset)),
    ("ImageConfig", IMAGE_CONFIG),
    ("CodeSigningConfigArn", Unimplemented(unset)),
    ("Architectures", Supported),
    ("EphemeralStorage", EPHEMERAL_STORAGE),
    ("SnapStart", SNAP_START),
    ("LoggingConfig", LOGGING_CONFIG),
    ("CapacityProviderConfig", Unimplemented(unset)),
    ("PublishTo", Unimplemented(unset)),
    ("DurableConfig", Unimplemented(unset)),
    ("TenancyConfig", Unimplemented(unset)),
];

/// UpdateFunctionConfiguration's members.
pub const UPDATE_FUNCTION_CONFIGURATION: &[(&str, Rule)] = &[
    ("Role", Supported),
    ("Handler", Supported),
    ("Description", Supported),
    ("Timeout", Supported),
    ("MemorySize", Supported),
    ("VpcConfig", VPC_CONFIG),
    ("Environment", ENVIRONMENT),
    ("Runtime", Supported),
    ("DeadLetterConfig", DEAD_LETTER_CONFIG),
    ("KMSKeyArn", Unimplemented(unset)),
    ("TracingConfig", TRACING_CONFIG),
    ("RevisionId", Supported),
    ("Layers", Supported),
    ("FileSystemConfigs", Unimplemented(unset)),
    ("ImageConfig", IMAGE_CONFIG),
    ("EphemeralStorage", EPHEMERAL_STORAGE),
    ("SnapStart", SNAP_START),
    ("LoggingConfig", LOGGING_CONFIG),
    ("CapacityProviderConfig", Unimplemented(unset)),
    ("DurableConfig", Unimplemented(unset)),
];

/// UpdateFunctionCode's members.
pub const UPDATE_FUNCTION_CODE: &[(&str, Rule)] = &[
    ("ZipFile", Supported),
    ("S3Bucket", Unimplemented(unset)),
    ("S3Key", Unimplemented(unset)),
    ("S3ObjectVersion", Unimplemented(unset)),
    ("ImageUri", Supported),
    ("Publish", Supported),
    ("DryRun", Supported),
    ("RevisionId", Supported),
    ("Architectures", Supported),
    ("SourceKMSKeyArn", Unimplemented(unset)),
    ("PublishTo", Unimplemented(unset)),
];

/// PublishVersion's members.
pub const PUBLISH_VERSION: &[(&str, Rule)] = &[
    ("CodeSha256", Supported),
    ("Description", Supported),
    ("RevisionId", Supported),
    ("PublishTo", Unimplemented(unset)),
];

const ROUTING_CONFIG: Rule = Struct(&[("AdditionalVersionWeights", Supported)]);

/// CreateAlias's members.
pub const CREATE_ALIAS: &[(&str, Rule)] = &[
    ("Name", Supported),
    ("FunctionVersion", Supported),
    ("Description", Supported),
    ("RoutingConfig", ROUTING_CONFIG),
];

/// UpdateAlias's members.
pub const UPDATE_ALIAS: &[(&str, Rule)] = &[
    ("FunctionVersion", Supported),
    ("Description", Supported),
    ("RoutingConfig", ROUTING_CONFIG),
    ("RevisionId", Supported),
];

/// PublishLayerVersion's members.
pub const PUBLISH_LAYER_VERSION: &[(&str, Rule)] = &[
    ("Description", Supported),
    (
        "Content",
        Struct(&[
            ("ZipFile", Supported),
            ("S3Bucket", Unimplemented(unset)),
            ("S3Key", Unimplemented(unset)),
            ("S3ObjectVersion", Unimplemented(unset)),
        ]),
    ),
    ("CompatibleRuntimes", Supported),
    ("LicenseInfo", Supported),
    ("CompatibleArchitectures", Supported),
];

const DESTINATION: Rule = Struct(&[("Destination", Supported)]);

/// Put/UpdateFunctionEventInvokeConfig's members.
pub const EVENT_INVOKE_CONFIG: &[(&str, Rule)] = &[
    ("MaximumRetryAttempts", Supported),
    ("MaximumEventAgeInSeconds", Supported),
    ("DestinationConfig", Struct(&[("OnSuccess", DESTINATION), ("OnFailure", DESTINATION)])),
];

/// Create/UpdateFunctionUrlConfig's members.
pub const FUNCTION_URL_CONFIG: &[(&str, Rule)] = &[
    ("AuthType", Supported),
    (
        "Cors",
        Struct(&[
            ("AllowCredentials", Supported),
            ("AllowHeaders", Supported),
            ("AllowMethods", Supported),
            ("AllowOrigins", Supported),
            ("ExposeHeaders", Supported),
            ("MaxAge", Supported),
        ]),
    ),
    ("InvokeMode", Supported),
];

/// Create/UpdateSchedule's members (EventBridge Scheduler's).
pub const SCHEDULE: &[(&str, Rule)] = &[
    ("ActionAfterCompletion", Supported),
    ("ClientToken", Supported),
    ("Description", Supported),
    ("EndDate", Supported),
    ("FlexibleTimeWindow", Struct(&[("Mode", Supported), ("MaximumWindowInMinutes", Supported)])),
    ("GroupName", Supported),
    ("KmsKeyArn", Unimplemented(unset)),
    ("ScheduleExpression", Supported),
    ("ScheduleExpressionTimezone", Supported),
    ("StartDate", Supported),
    ("State", Supported),
    (
        "Target",
        Struct(&[
            ("Arn", Supported),
            ("RoleArn", Supported),
            ("Input", Supported),
            ("RetryPolicy", Struct(&[("MaximumEventAgeInSeconds", Supported), ("MaximumRetryAttempts", Supported)])),
            ("DeadLetterConfig", Unimplemented(unset)),
            ("EcsParameters", Unimplemented(unset)),
            ("EventBridgeParameters", Unimplemented(unset)),
            ("KinesisParameters", Unimplemented(unset)),
            ("SageMakerPipelineParameters", Unimplemented(unset)),
            ("SqsParameters", Unimplemented(unset)),
        ]),
    ),
];

/// An event source mapping operation's members: those given, the settings both Create and
/// Update take, then the ones this host does not implement (Kinesis, DynamoDB, Kafka,
/// DocumentDB and MQ settings, filters, their destinations and metrics).
macro_rules! mapping_members {
    ($($given:expr),* $(,)?) => {
        &[
            $($given,)*
            ("FunctionName", Supported),
            ("Enabled", Supported),
            ("BatchSize", Supported),
            ("MaximumBatchingWindowInSeconds", Supported),
            ("ScalingConfig", Struct(&[("MaximumConcurrency", Supported)])),
            ("FunctionResponseTypes", Supported),
            ("FilterCriteria", Unimplemented(unset)),
            ("ParallelizationFactor", Unimplemented(unset)),
            ("DestinationConfig", Unimplemented(unset)),
            ("MaximumRecordAgeInSeconds", Unimplemented(unset)),
            ("BisectBatchOnFunctionError", Unimplemented(unset)),
            ("MaximumRetryAttempts", Unimplemented(unset)),
            ("TumblingWindowInSeconds", Unimplemented(unset)),
            ("SourceAccessConfigurations", Unimplemented(unset)),
            ("AmazonManagedKafkaEventSourceConfig", Unimplemented(unset)),
            ("SelfManagedKafkaEventSourceConfig", Unimplemented(unset)),
            ("DocumentDBEventSourceConfig", Unimplemented(unset)),
            ("KMSKeyArn", Unimplemented(unset)),
            ("MetricsConfig", Unimplemented(unset)),
            ("ProvisionedPollerConfig", Unimplemented(unset)),
            ("LoggingConfig", Unimplemented(unset)),
        ]
    };
}

/// CreateEventSourceMapping's members.
pub const CREATE_EVENT_SOURCE_MAPPING: &[(&str, Rule)] = mapping_members![
    ("EventSourceArn", Supported),
    ("StartingPosition", Unimplemented(unset)),
    ("StartingPositionTimestamp", Unimplemented(unset)),
    ("Topics", Unimplemented(unset)),
    ("Queues", Unimplemented(unset)),
    ("SelfManagedEventSource", Unimplemented(unset)),
    ("Tags", Unimplemented(unset)),
];

/// UpdateEventSourceMapping's members.
pub const UPDATE_EVENT_SOURCE_MAPPING: &[(&str, Rule)] = mapping_members![];

/// AddPermission's members.
pub const ADD_PERMISSION: &[(&str, Rule)] = &[
    ("StatementId", Supported),
    ("Action", Supported),
    ("Principal", Supported),
    ("SourceArn", Supported),
    ("SourceAccount", Supported),
    ("FunctionUrlAuthType", Supported),
    ("RevisionId", Supported),
    ("EventSourceToken", Unimplemented(unset)),
    ("PrincipalOrgID", Unimplemented(unset)),
    ("InvokedViaFunctionUrl", Unimplemented(unset)),
];

/// PutFunctionConcurrency's members.
pub const PUT_FUNCTION_CONCURRENCY: &[(&str, Rule)] = &[("ReservedConcurrentExecutions", Supported)];

/// PutProvisionedConcurrencyConfig's members.
pub const PUT_PROVISIONED: &[(&str, Rule)] = &[("ProvisionedConcurrentExecutions", Supported)];

/// TagResource's members.
pub const TAG_RESOURCE: &[(&str, Rule)] = &[("Tags", Supported)];

/// Checks a request body's members against an operation's rules.
pub fn check(body: &Value, rules: &[(&str, Rule)], operation: &str) -> Result<(), ApiError> {
    check_at(body, rules, operation, "")
}

fn check_at(value: &Value, rules: &[(&str, Rule)], operation: &str, at: &str) -> Result<(), ApiError> {
    let Some(members) = value.as_object() else { return Ok(()) };
    for (name, value) in members {
        let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
        let Some((_, rule)) = rules.iter().find(|(n, _)| n == name) else {
            return Err(ApiError::invalid(format!("{path} is not a member of {operation}'s request.")));
        };
        match rule {
            Supported => {}
            Unimplemented(harmless) => {
                if !harmless(value) {
                    return Err(ApiError::invalid(format!(
                        "{path} is not supported by this host yet; it would have no effect, so the request is refused. \
                         Remove it (or leave it at its default)."
                    )));
                }
            }
            Struct(inner) => {
                if !value.is_null() {
                    check_at(value, inner, operation, &path)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_members_are_refused_by_name() {
        let ok = json!({
            "FunctionName": "f", "Code": {"ZipFile": "x"}, "TracingConfig": {"Mode": "PassThrough"},
            "VpcConfig": {"SubnetIds": [], "SecurityGroupIds": []}, "KMSKeyArn": "", "DeadLetterConfig": {},
            "PackageType": "Zip", "LoggingConfig": {"LogFormat": "Text"}, "Publish": true, "FileSystemConfigs": []
        });
        check(&ok, CREATE_FUNCTION, "CreateFunction").unwrap();
        for (bad, name) in [
            (json!({"DeadLetterConfig": {"Queue": "q"}}), "DeadLetterConfig.Queue"),
            (json!({"KMSKeyArn": "arn:aws:kms:us-east-1:000000000000:key/k"}), "KMSKeyArn"),
            (json!({"VpcConfig": {"SubnetIds": ["subnet-1"]}}), "VpcConfig.SubnetIds"),
            (json!({"TracingConfig": {"Mode": "Active"}}), "TracingConfig.Mode"),
            (json!({"Code": {"S3Bucket": "b"}}), "Code.S3Bucket"),
            (json!({"LoggingConfig": {"LogFormat": "JSON"}}), "LoggingConfig.LogFormat"),
            (json!({"Surprise": 1}), "Surprise"),
            (json!({"Environment": {"Vars": {}}}), "Environment.Vars"),
        ] {
            let e = check(&bad, CREATE_FUNCTION, "CreateFunction").unwrap_err();
            assert_eq!(e.kind, "InvalidParameterValueException");
            assert!(e.message.starts_with(&format!("{name} is not")), "{name}: {}", e.message);
        }
    }
}
