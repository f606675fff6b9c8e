//! Resource-based policies: AddPermission, RemovePermission, GetPolicy, and what a policy lets
//! through on this host. There is no IAM here, so the one thing a policy decides is whether a
//! function URL with `AuthType` `NONE` answers: only where a statement lets anyone (`*`) call
//! `lambda:InvokeFunctionUrl`, as Lambda requires.

use serde_json::{json, Value};

use super::{validate, Control, Error};
use crate::agent::ids::{self, FunctionRef, Qualifier};
use crate::agent::store::policy::revision;

/// One permission to add (AddPermission's members that this host implements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permission {
    /// `StatementId`.
    pub sid: String,
    /// `Action`, e.g. `lambda:InvokeFunctionUrl`.
    pub action: String,
    /// `Principal`: `*`, a service (`s3.amazonaws.com`), an account id or an IAM ARN.
    pub principal: String,
    /// `SourceArn`.
    pub source_arn: Option<String>,
    /// `SourceAccount`.
    pub source_account: Option<String>,
    /// `FunctionUrlAuthType`.
    pub url_auth_type: Option<String>,
}

/// A principal as a statement writes it.
fn principal(p: &str) -> Result<Value, Error> {
    if p == "*" {
        return Ok(json!("*"));
    }
    if p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(json!({ "AWS": format!("arn:aws:iam::{p}:root") }));
    }
    if p.starts_with("arn:aws:iam::") {
        return Ok(json!({ "AWS": p }));
    }
    if p.ends_with(".amazonaws.com") || p.ends_with(".amazonaws.com.cn") {
        return Ok(json!({ "Service": p }));
    }
    Err(validate::constraint(p, "principal", "Member must be *, a service principal, an account id or an IAM ARN"))
}

/// The statement Lambda stores for a permission on `resource` (the function's ARN, qualified
/// for a version or alias).
pub fn statement(resource: &str, p: &Permission) -> Result<Value, Error> {
    validate::statement_id(&p.sid)?;
    validate::policy_action(&p.action)?;
    let mut s = json!({
        "Sid": p.sid,
        "Effect": "Allow",
        "Principal": principal(&p.principal)?,
        "Action": p.action,
        "Resource": resource,
    });
    let mut condition = serde_json::Map::new();
    let mut equals = serde_json::Map::new();
    if let Some(t) = &p.url_auth_type {
        validate::url_auth_type_name(t)?;
        equals.insert("lambda:FunctionUrlAuthType".into(), json!(t));
    }
    if let Some(a) = &p.source_account {
        equals.insert("AWS:SourceAccount".into(), json!(a));
    }
    if !equals.is_empty() {
        condition.insert("StringEquals".into(), Value::Object(equals));
    }
    if let Some(arn) = &p.source_arn {
        condition.insert("ArnLike".into(), json!({ "AWS:SourceArn": arn }));
    }
    if !condition.is_empty() {
        s["Condition"] = Value::Object(condition);
    }
    Ok(s)
}

/// Whether a policy's statements let anyone call a function URL with `AuthType` `NONE`: an
/// `Allow` to principal `*` of `lambda:InvokeFunctionUrl` (or `lambda:*`), with no condition
/// but `lambda:FunctionUrlAuthType` equal to `NONE` (a condition this host cannot check, such
/// as a source ARN, does not match a URL request).
pub fn allows_public_url(statements: &[(String, String)]) -> bool {
    statements.iter().filter_map(|(_, s)| serde_json::from_str::<Value>(s).ok()).any(|s| {
        let anyone = s["Principal"] == "*" || s["Principal"]["AWS"] == "*";
        let action = matches!(s["Action"].as_str(), Some("lambda:InvokeFunctionUrl" | "lambda:*" | "*"));
        let condition_ok = match s.get("Condition") {
            None => true,
            Some(c) => *c == json!({ "StringEquals": { "lambda:FunctionUrlAuthType": "NONE" } }),
        };
        s["Effect"] == "Allow" && anyone && action && condition_ok
    })
}

fn no_policy() -> Error {
    Error::NotFound("The resource you requested does not exist.".into())
}

impl Control {
    /// The qualifier a policy is kept under (empty for the function itself), once the
    /// function, version or alias is known to exist; and the ARN its statements name.
    fn policy_target(&self, r: &FunctionRef) -> Result<(String, String), Error> {
        self.get(r)?;
        let qualifier = match &r.qualifier {
            None => String::new(),
            Some(Qualifier::Version(v)) if v.is_latest() => String::new(),
            Some(q) => q.to_string(),
        };
        let arn =
            if qualifier.is_empty() { ids::function_arn(&r.name) } else { ids::qualified_arn(&r.name, &qualifier) };
        Ok((qualifier, arn))
    }

    /// AddPermission: returns the statement added.
    pub async fn add_permission(
        &self,
        r: &FunctionRef,
        p: Permission,
        revision_id: Option<String>,
    ) -> Result<Value, Error> {
        let (qualifier, arn) = self.policy_target(r)?;
        let s = statement(&arn, &p)?;
        let (name, text) = (r.name.clone(), s.to_string());
        self.blocking(move |st| Ok(st.add_statement(&name, &qualifier, &p.sid, &text, revision_id.as_deref())?))
            .await?;
        self.urls.invalidate();
        Ok(s)
    }

    /// RemovePermission.
    pub async fn remove_permission(
        &self,
        r: &FunctionRef,
        sid: &str,
        revision_id: Option<String>,
    ) -> Result<(), Error> {
        let (qualifier, _) = self.policy_target(r)?;
        let (name, sid_owned) = (r.name.clone(), sid.to_owned());
        let removed = self
            .blocking(move |st| Ok(st.remove_statement(&name, &qualifier, &sid_owned, revision_id.as_deref())?))
            .await?;
        self.urls.invalidate();
        if removed {
            Ok(())
        } else {
            Err(Error::NotFound(format!("Statement {sid} is not found in resource policy.")))
        }
    }

    /// GetPolicy: the policy document and its revision id.
    pub fn policy(&self, r: &FunctionRef) -> Result<(Value, String), Error> {
        let (qualifier, _) = self.policy_target(r)?;
        let statements = self.store.statements(&r.name, &qualifier)?;
        if statements.is_empty() {
            return Err(no_policy());
        }
        let parsed: Vec<Value> = statements.iter().filter_map(|(_, s)| serde_json::from_str(s).ok()).collect();
        let doc = json!({ "Version": "2012-10-17", "Id": "default", "Statement": parsed });
        Ok((doc, revision(&statements)))
    }

    /// Whether the URL of `function` (`qualifier` empty, or an alias) may be called by anyone.
    pub(super) fn url_is_public(&self, function: &str, qualifier: &str) -> Result<bool, Error> {
        Ok(allows_public_url(&self.store.statements(function, qualifier)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(sid: &str) -> Permission {
        Permission {
            sid: sid.into(),
            action: "lambda:InvokeFunctionUrl".into(),
            principal: "*".into(),
            url_auth_type: Some("NONE".into()),
            ..Permission::default()
        }
    }

    fn stored(statements: &[Value]) -> Vec<(String, String)> {
        statements.iter().map(|s| (s["Sid"].as_str().unwrap().to_string(), s.to_string())).collect()
    }

    #[test]
    fn statements_are_lambda_s() {
        let arn = ids::function_arn("f");
        let s = statement(&arn, &public("url")).unwrap();
        assert_eq!(
            s,
            json!({
                "Sid": "url", "Effect": "Allow", "Principal": "*", "Action": "lambda:InvokeFunctionUrl",
                "Resource": arn, "Condition": { "StringEquals": { "lambda:FunctionUrlAuthType": "NONE" } },
            })
        );
        let s3 = Permission {
            sid: "s3".into(),
            action: "lambda:InvokeFunction".into(),
            principal: "s3.amazonaws.com".into(),
            source_arn: Some("arn:aws:s3:::bucket".into()),
            source_account: Some("000000000000".into()),
            url_auth_type: None,
        };
        let s = statement(&arn, &s3).unwrap();
        assert_eq!(s["Principal"], json!({ "Service": "s3.amazonaws.com" }));
        assert_eq!(s["Condition"]["ArnLike"]["AWS:SourceArn"], "arn:aws:s3:::bucket");
        assert_eq!(s["Condition"]["StringEquals"]["AWS:SourceAccount"], "000000000000");
        let account = Permission { principal: "123456789012".into(), ..public("a") };
        assert_eq!(statement(&arn, &account).unwrap()["Principal"]["AWS"], "arn:aws:iam::123456789012:root");
        for bad in [
            Permission { sid: "bad sid".into(), ..public("x") },
            Permission { action: "s3:GetObject".into(), ..public("x") },
            Permission { principal: "someone".into(), ..public("x") },
            Permission { url_auth_type: Some("OPEN".into()), ..public("x") },
        ] {
            assert!(matches!(statement(&arn, &bad), Err(Error::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_a_public_invoke_function_url_statement_opens_a_url() {
        let arn = ids::function_arn("f");
        let open = statement(&arn, &public("url")).unwrap();
        assert!(allows_public_url(&stored(std::slice::from_ref(&open))));
        let unconditioned = statement(&arn, &Permission { url_auth_type: None, ..public("u") }).unwrap();
        assert!(allows_public_url(&stored(&[unconditioned])));
        let wildcard = statement(&arn, &Permission { action: "lambda:*".into(), ..public("w") }).unwrap();
        assert!(allows_public_url(&stored(&[wildcard])));
        assert!(!allows_public_url(&[]));
        let invoke_only =
            statement(&arn, &Permission { action: "lambda:InvokeFunction".into(), ..public("i") }).unwrap();
        assert!(!allows_public_url(&stored(&[invoke_only])));
        let one_account = statement(&arn, &Permission { principal: "123456789012".into(), ..public("a") }).unwrap();
        assert!(!allows_public_url(&stored(&[one_account])));
        let iam = statement(&arn, &Permission { url_auth_type: Some("AWS_IAM".into()), ..public("m") }).unwrap();
        assert!(!allows_public_url(&stored(&[iam])));
        let sourced =
            statement(&arn, &Permission { source_arn: Some("arn:aws:s3:::b".into()), ..public("s") }).unwrap();
        assert!(!allows_public_url(&stored(std::slice::from_ref(&sourced))));
        assert!(allows_public_url(&stored(&[sourced, open])));
    }
}
