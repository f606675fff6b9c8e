//! The routing table: method and path to an operation and its path parameters, the one place
//! that knows Lambda's URLs. Parameters come back percent-decoded.

use hyper::Method;

/// An operation of the API: each variant is the Lambda operation of its name, but those
/// documented otherwise.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CreateFunction,
    ListFunctions,
    GetFunction,
    DeleteFunction,
    GetFunctionConfiguration,
    UpdateFunctionConfiguration,
    UpdateFunctionCode,
    Invoke,
    InvokeAsync,
    /// Ember's own: the zip of a version's code (GetFunction's `Code.Location`).
    GetFunctionCodeZip,
    /// Ember's own: the end of a function's log.
    GetFunctionLogs,
    /// Ember's own: the container-image pulls under way, with their progress.
    ListImagePulls,
    PublishVersion,
    ListVersionsByFunction,
    CreateAlias,
    ListAliases,
    GetAlias,
    UpdateAlias,
    DeleteAlias,
    PublishLayerVersion,
    ListLayerVersions,
    GetLayerVersion,
    DeleteLayerVersion,
    /// ListLayers, or GetLayerVersionByArn with `?find=LayerVersion`.
    Layers,
    /// Ember's own: the zip of a layer version (its `Content.Location`).
    GetLayerVersionZip,
    PutFunctionConcurrency,
    GetFunctionConcurrency,
    DeleteFunctionConcurrency,
    /// Get, or with `?List=ALL` ListProvisionedConcurrencyConfigs.
    GetProvisionedConcurrencyConfig,
    PutProvisionedConcurrencyConfig,
    DeleteProvisionedConcurrencyConfig,
    GetAccountSettings,
    TagResource,
    UntagResource,
    ListTags,
    PutFunctionEventInvokeConfig,
    UpdateFunctionEventInvokeConfig,
    GetFunctionEventInvokeConfig,
    DeleteFunctionEventInvokeConfig,
    ListFunctionEventInvokeConfigs,
    CreateFunctionUrlConfig,
    GetFunctionUrlConfig,
    UpdateFunctionUrlConfig,
    DeleteFunctionUrlConfig,
    ListFunctionUrlConfigs,
    AddPermission,
    RemovePermission,
    GetPolicy,
    CreateSchedule,
    GetSchedule,
    UpdateSchedule,
    DeleteSchedule,
    ListSchedules,
    CreateEventSourceMapping,
    GetEventSourceMapping,
    UpdateEventSourceMapping,
    DeleteEventSourceMapping,
    ListEventSourceMappings,
}

impl Op {
    /// The query parameters the operation takes; any other is refused by name.
    pub fn query(self) -> &'static [&'static str] {
        const PAGE: &[&str] = &["Marker", "MaxItems"];
        match self {
            Op::ListFunctions => &["Marker", "MaxItems", "FunctionVersion"],
            Op::GetFunction
            | Op::GetFunctionConfiguration
            | Op::DeleteFunction
            | Op::Invoke
            | Op::GetFunctionCodeZip
            | Op::PutProvisionedConcurrencyConfig
            | Op::DeleteProvisionedConcurrencyConfig
            | Op::PutFunctionEventInvokeConfig
            | Op::UpdateFunctionEventInvokeConfig
            | Op::GetFunctionEventInvokeConfig
            | Op::DeleteFunctionEventInvokeConfig
            | Op::CreateFunctionUrlConfig
            | Op::GetFunctionUrlConfig
            | Op::UpdateFunctionUrlConfig
            | Op::DeleteFunctionUrlConfig
            | Op::AddPermission
            | Op::GetPolicy => &["Qualifier"],
            Op::RemovePermission => &["Qualifier", "RevisionId"],
            Op::GetSchedule => &["groupName"],
            Op::DeleteSchedule => &["groupName", "clientToken"],
            Op::ListSchedules => &["ScheduleGroup", "NamePrefix", "State", "MaxResults", "NextToken"],
            Op::GetFunctionLogs => &["bytes"],
            Op::ListEventSourceMappings => &["EventSourceArn", "FunctionName", "Marker", "MaxItems"],
            Op::ListVersionsByFunction | Op::ListFunctionEventInvokeConfigs | Op::ListFunctionUrlConfigs => PAGE,
            Op::ListAliases => &["Marker", "MaxItems", "FunctionVersion"],
            Op::ListLayerVersions => &["CompatibleRuntime", "CompatibleArchitecture", "Marker", "MaxItems"],
            Op::Layers => &["CompatibleRuntime", "CompatibleArchitecture", "Marker", "MaxItems", "find", "Arn"],
            Op::GetProvisionedConcurrencyConfig => &["Qualifier", "List", "Marker", "MaxItems"],
            Op::UntagResource => &["tagKeys"],
            _ => &[],
        }
    }
}

/// Path segments: literals, and `{}` for a parameter.
type Pattern = &'static [&'static str];

const P: &str = "{}";

const ROUTES: &[(Method, Pattern, Op)] = &[
    (Method::POST, &["2015-03-31", "functions"], Op::CreateFunction),
    (Method::GET, &["2015-03-31", "functions"], Op::ListFunctions),
    (Method::GET, &["2015-03-31", "functions", P], Op::GetFunction),
    (Method::DELETE, &["2015-03-31", "functions", P], Op::DeleteFunction),
    (Method::GET, &["2015-03-31", "functions", P, "configuration"], Op::GetFunctionConfiguration),
    (Method::PUT, &["2015-03-31", "functions", P, "configuration"], Op::UpdateFunctionConfiguration),
    (Method::PUT, &["2015-03-31", "functions", P, "code"], Op::UpdateFunctionCode),
    (Method::GET, &["2015-03-31", "functions", P, "code"], Op::GetFunctionCodeZip),
    (Method::GET, &["2015-03-31", "functions", P, "logs"], Op::GetFunctionLogs),
    (Method::GET, &["ember", "image-pulls"], Op::ListImagePulls),
    (Method::POST, &["2015-03-31", "functions", P, "invocations"], Op::Invoke),
    (Method::POST, &["2014-11-13", "functions", P, "invoke-async"], Op::InvokeAsync),
    (Method::POST, &["2015-03-31", "functions", P, "versions"], Op::PublishVersion),
    (Method::GET, &["2015-03-31", "functions", P, "versions"], Op::ListVersionsByFunction),
    (Method::POST, &["2015-03-31", "functions", P, "aliases"], Op::CreateAlias),
    (Method::GET, &["2015-03-31", "functions", P, "aliases"], Op::ListAliases),
    (Method::GET, &["2015-03-31", "functions", P, "aliases", P], Op::GetAlias),
    (Method::PUT, &["2015-03-31", "functions", P, "aliases", P], Op::UpdateAlias),
    (Method::DELETE, &["2015-03-31", "functions", P, "aliases", P], Op::DeleteAlias),
    (Method::POST, &["2018-10-31", "layers", P, "versions"], Op::PublishLayerVersion),
    (Method::GET, &["2018-10-31", "layers", P, "versions"], Op::ListLayerVersions),
    (Method::GET, &["2018-10-31", "layers", P, "versions", P], Op::GetLayerVersion),
    (Method::DELETE, &["2018-10-31", "layers", P, "versions", P], Op::DeleteLayerVersion),
    (Method::GET, &["2018-10-31", "layers", P, "versions", P, "content"], Op::GetLayerVersionZip),
    (Method::GET, &["2018-10-31", "layers"], Op::Layers),
    (Method::PUT, &["2017-10-31", "functions", P, "concurrency"], Op::PutFunctionConcurrency),
    (Method::GET, &["2019-09-30", "functions", P, "concurrency"], Op::GetFunctionConcurrency),
    (Method::GET, &["2017-10-31", "functions", P, "concurrency"], Op::GetFunctionConcurrency),
    (Method::DELETE, &["2017-10-31", "functions", P, "concurrency"], Op::DeleteFunctionConcurrency),
    (Method::GET, &["2019-09-30", "functions", P, "provisioned-concurrency"], Op::GetProvisionedConcurrencyConfig),
    (Method::PUT, &["2019-09-30", "functions", P, "provisioned-concurrency"], Op::PutProvisionedConcurrencyConfig),
    (
        Method::DELETE,
        &["2019-09-30", "functions", P, "provisioned-concurrency"],
        Op::DeleteProvisionedConcurrencyConfig,
    ),
    (Method::GET, &["2016-08-19", "account-settings"], Op::GetAccountSettings),
    (Method::POST, &["2017-03-31", "tags", P], Op::TagResource),
    (Method::DELETE, &["2017-03-31", "tags", P], Op::UntagResource),
    (Method::GET, &["2017-03-31", "tags", P], Op::ListTags),
    (Method::PUT, &["2019-09-25", "functions", P, "event-invoke-config"], Op::PutFunctionEventInvokeConfig),
    (Method::POST, &["2019-09-25", "functions", P, "event-invoke-config"], Op::UpdateFunctionEventInvokeConfig),
    (Method::GET, &["2019-09-25", "functions", P, "event-invoke-config"], Op::GetFunctionEventInvokeConfig),
    (Method::DELETE, &["2019-09-25", "functions", P, "event-invoke-config"], Op::DeleteFunctionEventInvokeConfig),
    (Method::GET, &["2019-09-25", "functions", P, "event-invoke-config", "list"], Op::ListFunctionEventInvokeConfigs),
    (Method::POST, &["2021-10-31", "functions", P, "url"], Op::CreateFunctionUrlConfig),
    (Method::GET, &["2021-10-31", "functions", P, "url"], Op::GetFunctionUrlConfig),
    (Method::PUT, &["2021-10-31", "functions", P, "url"], Op::UpdateFunctionUrlConfig),
    (Method::DELETE, &["2021-10-31", "functions", P, "url"], Op::DeleteFunctionUrlConfig),
    (Method::GET, &["2021-10-31", "functions", P, "urls"], Op::ListFunctionUrlConfigs),
    (Method::POST, &["2015-03-31", "functions", P, "policy"], Op::AddPermission),
    (Method::GET, &["2015-03-31", "functions", P, "policy"], Op::GetPolicy),
    (Method::DELETE, &["2015-03-31", "functions", P, "policy", P], Op::RemovePermission),
    (Method::POST, &["schedules", P], Op::CreateSchedule),
    (Method::GET, &["schedules", P], Op::GetSchedule),
    (Method::PUT, &["schedules", P], Op::UpdateSchedule),
    (Method::DELETE, &["schedules", P], Op::DeleteSchedule),
    (Method::GET, &["schedules"], Op::ListSchedules),
    (Method::POST, &["2015-03-31", "event-source-mappings"], Op::CreateEventSourceMapping),
    (Method::GET, &["2015-03-31", "event-source-mappings"], Op::ListEventSourceMappings),
    (Method::GET, &["2015-03-31", "event-source-mappings", P], Op::GetEventSourceMapping),
    (Method::PUT, &["2015-03-31", "event-source-mappings", P], Op::UpdateEventSourceMapping),
    (Method::DELETE, &["2015-03-31", "event-source-mappings", P], Op::DeleteEventSourceMapping),
];

/// Operations of Lambda's API this host does not implement (yet), by the first segments of
/// their paths, so that a client is told which, rather than of an unknown route.
const NOT_IMPLEMENTED: &[(Pattern, &str)] = &[
    (&["2018-10-31", "layers", P, "versions", P, "policy"], "layer permissions"),
    (&["2020-04-22", "code-signing-configs"], "code signing"),
    (&["2020-06-30", "functions", P, "code-signing-config"], "code signing"),
    (&["2021-07-20", "functions", P, "runtime-management-config"], "runtime management configs"),
    (&["2024-08-31", "functions", P, "recursion-config"], "recursion configs"),
    (&["2021-11-15", "functions", P, "response-streaming-invocations"], "response streaming"),
    (&["2025-11-30"], "capacity providers and scaling configs"),
    (&["2025-12-01"], "durable executions"),
];

/// What a request's path routes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// An operation and its path parameters, in order.
    Op(Op, Vec<String>),
    /// A Lambda operation this host does not implement: what it is.
    NotImplemented(&'static str),
    /// Nothing.
    Unknown,
}

fn matches(pattern: Pattern, segments: &[&str], whole: bool) -> Option<Vec<String>> {
    if segments.len() < pattern.len() || (whole && segments.len() != pattern.len()) {
        return None;
    }
    let mut params = Vec::new();
    for (want, got) in pattern.iter().zip(segments) {
        if *want == P {
            if got.is_empty() {
                return None;
            }
            params.push(percent_decode(got)?);
        } else if want != got {
            return None;
        }
    }
    Some(params)
}

/// Routes a request.
pub fn route(method: &Method, path: &str) -> Routed {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    for (m, pattern, op) in ROUTES {
        if m == method {
            if let Some(params) = matches(pattern, &segments, true) {
                return Routed::Op(*op, params);
            }
        }
    }
    for (pattern, what) in NOT_IMPLEMENTED {
        if matches(pattern, &segments, false).is_some() {
            return Routed::NotImplemented(what);
        }
    }
    Routed::Unknown
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |c: u8| (c as char).to_digit(16);
            out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Routed {
        route(&method, path)
    }

    #[test]
    fn lambda_s_paths_route() {
        assert_eq!(op(Method::POST, "/2015-03-31/functions"), Routed::Op(Op::CreateFunction, vec![]));
        assert_eq!(op(Method::GET, "/2015-03-31/functions/"), Routed::Op(Op::ListFunctions, vec![]));
        assert_eq!(op(Method::GET, "/2015-03-31/functions/f"), Routed::Op(Op::GetFunction, vec!["f".into()]));
        assert_eq!(
            op(
                Method::POST,
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af/invocations"
            ),
            Routed::Op(Op::Invoke, vec!["arn:aws:lambda:us-east-1:000000000000:function:f".into()])
        );
        assert_eq!(
            op(Method::PUT, "/2015-03-31/functions/f/aliases/live"),
            Routed::Op(Op::UpdateAlias, vec!["f".into(), "live".into()])
        );
        assert_eq!(
            op(Method::GET, "/2018-10-31/layers/l/versions/3"),
            Routed::Op(Op::GetLayerVersion, vec!["l".into(), "3".into()])
        );
        assert_eq!(op(Method::GET, "/2016-08-19/account-settings/"), Routed::Op(Op::GetAccountSettings, vec![]));
        assert_eq!(
            op(Method::GET, "/2019-09-30/functions/f/concurrency"),
            Routed::Op(Op::GetFunctionConcurrency, vec!["f".into()])
        );
        assert_eq!(op(Method::PATCH, "/2015-03-31/functions/f"), Routed::Unknown);
        assert_eq!(op(Method::GET, "/2015-03-31/functions/f/a/b"), Routed::Unknown);
        assert_eq!(op(Method::GET, "/2015-03-31/functionsx"), Routed::Unknown);
        assert_eq!(op(Method::GET, "/2015-03-31/functions/%zz"), Routed::Unknown);
        assert_eq!(
            op(Method::POST, "/2015-03-31/event-source-mappings/"),
            Routed::Op(Op::CreateEventSourceMapping, vec![])
        );
        assert_eq!(
            op(Method::DELETE, "/2015-03-31/event-source-mappings/u-1"),
            Routed::Op(Op::DeleteEventSourceMapping, vec!["u-1".into()])
        );
        assert_eq!(
            op(Method::GET, "/2018-10-31/layers/l/versions/1/policy"),
            Routed::NotImplemented("layer permissions")
        );
        assert_eq!(
            op(Method::PUT, "/2019-09-25/functions/f/event-invoke-config"),
            Routed::Op(Op::PutFunctionEventInvokeConfig, vec!["f".into()])
        );
        assert_eq!(
            op(Method::GET, "/2019-09-25/functions/f/event-invoke-config/list"),
            Routed::Op(Op::ListFunctionEventInvokeConfigs, vec!["f".into()])
        );
    }
}
