//! Lambda's JSON output shapes, built from the domain's types.

use serde_json::{json, Value};

use crate::agent::ids;
use crate::agent::pool::ProvisionedStatus;
use crate::agent::store::{Alias, FunctionConfig, LayerVersion};

/// A version's `FunctionConfiguration`, shown with `arn` (its own, or the alias's it was
/// asked by).
pub fn configuration(c: &FunctionConfig, arn: &str) -> Value {
    let mut out = json!({
        "FunctionName": c.name,
        "FunctionArn": arn,
        "Runtime": c.runtime,
        "Role": c.role,
        "Handler": c.handler,
        "CodeSize": c.code_size,
        "Description": c.description,
        "Timeout": c.timeout_s,
        "MemorySize": c.memory_mib,
        "LastModified": c.last_modified,
        "CodeSha256": c.code_sha256,
        "Version": c.version.to_string(),
        "TracingConfig": { "Mode": "PassThrough" },
        "RevisionId": c.revision_id,
        "State": c.state.as_str(),
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": { "Size": c.ephemeral_mib },
        "SnapStart": {
            "ApplyOn": if c.snap_start { "PublishedVersions" } else { "None" },
            // On for the versions it applies to, as Lambda shows it.
            "OptimizationStatus": if c.snap_start && !c.version.is_latest() { "On" } else { "Off" },
        },
        "LoggingConfig": { "LogFormat": "Text", "LogGroup": format!("/aws/lambda/{}", c.name) },
    });
    if c.handler.is_empty() {
        out.as_object_mut().expect("an object").remove("Handler");
    }
    if let Some(image) = &c.image {
        let o = out.as_object_mut().expect("an object");
        o.remove("Runtime");
        out["PackageType"] = json!("Image");
        let overrides = &image.overrides;
        if *overrides != Default::default() {
            let mut config = json!({});
            if let Some(v) = &overrides.entry_point {
                config["EntryPoint"] = json!(v);
            }
            if let Some(v) = &overrides.command {
                config["Command"] = json!(v);
            }
            if let Some(v) = &overrides.working_directory {
                config["WorkingDirectory"] = json!(v);
            }
            out["ImageConfigResponse"] = json!({ "ImageConfig": config });
        }
    }
    if !c.environment.is_empty() {
        out["Environment"] = json!({ "Variables": c.environment });
    }
    if !c.layers.is_empty() {
        out["Layers"] = c.layers.iter().map(|l| json!({ "Arn": l.arn, "CodeSize": l.code_size })).collect();
    }
    if let Some(arn) = &c.dead_letter {
        out["DeadLetterConfig"] = json!({ "TargetArn": arn });
    }
    if let Some(reason) = &c.state_reason {
        out["StateReason"] = json!(reason);
    }
    if let Some(code) = &c.state_reason_code {
        out["StateReasonCode"] = json!(code);
    }
    out
}

/// An `AliasConfiguration`.
pub fn alias(a: &Alias) -> Value {
    let mut out = json!({
        "AliasArn": a.arn(),
        "Name": a.name,
        "FunctionVersion": a.version.to_string(),
        "Description": a.description,
        "RevisionId": a.revision_id,
    });
    if !a.weights.is_empty() {
        let weights: serde_json::Map<String, Value> =
            a.weights.iter().map(|(v, w)| (v.to_string(), json!(w))).collect();
        out["RoutingConfig"] = json!({ "AdditionalVersionWeights": weights });
    }
    out
}

/// Where a layer version's zip is served (its `Content.Location`).
pub fn layer_location(host: &str, l: &LayerVersion) -> String {
    format!("http://{host}/2018-10-31/layers/{}/versions/{}/content", l.name, l.version)
}

/// A layer version as PublishLayerVersion and GetLayerVersion answer it.
pub fn layer_version(l: &LayerVersion, host: &str) -> Value {
    let mut out = layer_version_item(l);
    out["Content"] = json!({
        "Location": layer_location(host, l),
        "CodeSha256": l.code_sha256,
        "CodeSize": l.code_size,
    });
    out["LayerArn"] = json!(ids::layer_arn(&l.name));
    out
}

/// A `LayerVersionsListItem`.
pub fn layer_version_item(l: &LayerVersion) -> Value {
    let mut out = json!({
        "LayerVersionArn": l.arn(),
        "Version": l.version,
        "Description": l.description,
        "CreatedDate": l.created,
        "CompatibleRuntimes": l.runtimes,
        "CompatibleArchitectures": l.architectures,
    });
    if !l.license.is_empty() {
        out["LicenseInfo"] = json!(l.license);
    }
    out
}

/// A `LayersListItem`: a layer and its latest matching version.
pub fn layer(l: &LayerVersion) -> Value {
    json!({
        "LayerName": l.name,
        "LayerArn": ids::layer_arn(&l.name),
        "LatestMatchingVersion": layer_version_item(l),
    })
}

/// A provisioned-concurrency configuration's status.
pub fn provisioned(s: &ProvisionedStatus) -> Value {
    let mut out = json!({
        "RequestedProvisionedConcurrentExecutions": s.requested,
        "AllocatedProvisionedConcurrentExecutions": s.allocated,
        "AvailableProvisionedConcurrentExecutions": s.allocated,
        "Status": s.status,
        "LastModified": s.last_modified,
    });
    if let Some(reason) = &s.reason {
        out["StatusReason"] = json!(reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ids::Version;
    use crate::agent::store::{LayerRef, State};
    use std::collections::BTreeMap;

    #[test]
    fn configuration_shape() {
        let mut c = crate::agent::store::tests::config_for("f");
        c.environment = BTreeMap::from([("K".into(), "v".into())]);
        c.code_size = 42;
        let v = configuration(&c, &ids::function_arn("f"));
        assert_eq!(v["FunctionName"], "f");
        assert_eq!(v["MemorySize"], 256);
        assert_eq!(v["CodeSize"], 42);
        assert_eq!(v["Environment"]["Variables"]["K"], "v");
        assert_eq!(v["State"], "Active");
        assert_eq!(v["PackageType"], "Zip");
        assert_eq!(v["Architectures"], json!(["x86_64"]));
        assert_eq!(v["Version"], "$LATEST");
        assert!(v.get("Layers").is_none() && v.get("StateReason").is_none());

        c.version = Version::published(3);
        c.snap_start = true;
        c.state = State::Pending;
        c.state_reason = Some("r".into());
        c.state_reason_code = Some("Creating".into());
        c.layers = vec![LayerRef { arn: ids::layer_version_arn("l", 1), code_size: 9, unzipped: 20, hex: "ab".into() }];
        c.environment.clear();
        c.handler.clear();
        let v = configuration(&c, &c.arn());
        assert_eq!(v["Version"], "3");
        assert_eq!(v["FunctionArn"], ids::qualified_arn("f", 3));
        assert_eq!(v["SnapStart"], json!({ "ApplyOn": "PublishedVersions", "OptimizationStatus": "On" }));
        assert_eq!((v["State"].as_str(), v["StateReasonCode"].as_str()), (Some("Pending"), Some("Creating")));
        assert_eq!(v["Layers"], json!([{ "Arn": ids::layer_version_arn("l", 1), "CodeSize": 9 }]));
        assert!(v.get("Environment").is_none() && v.get("Handler").is_none());
    }
}
