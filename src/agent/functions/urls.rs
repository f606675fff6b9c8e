//! Function URL configs (Create/Get/Update/Delete/ListFunctionUrlConfig(s)): one URL per
//! function (`$LATEST`) or alias, served by the agent's URL listener (`api::urls`).

use std::sync::Arc;

use serde_json::Value;

use super::{Control, Error};
use crate::agent::ids::{self, FunctionRef, Qualifier};
use crate::agent::store::urls::UrlConfig;
use crate::agent::store::Page;

/// What a Create or an Update sets (checked by `validate`); for an Update `None` keeps the
/// current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UrlInput {
    /// `AuthType`.
    pub auth_type: Option<String>,
    /// `Cors` (an object; null removes it).
    pub cors: Option<Value>,
    /// `InvokeMode`.
    pub invoke_mode: Option<String>,
}

/// The address a URL is known by: Lambda's host name for it, served over plain HTTP by the
/// agent's URL listener.
pub fn function_url(url_id: &str) -> String {
    format!("http://{url_id}.lambda-url.{}.on.aws/", ids::region())
}

/// The ARN a URL config shows.
pub fn url_function_arn(url: &UrlConfig) -> String {
    if url.qualifier.is_empty() {
        ids::function_arn(&url.function)
    } else {
        ids::qualified_arn(&url.function, &url.qualifier)
    }
}

fn no_url() -> Error {
    Error::NotFound("The resource you requested does not exist.".into())
}

impl Control {
    /// The qualifier a URL is kept under: empty for the function (`$LATEST`), or an alias
    /// that exists. Lambda gives URLs to neither published versions nor `$LATEST` by name.
    fn url_qualifier(&self, r: &FunctionRef) -> Result<String, Error> {
        let q = match &r.qualifier {
            None => String::new(),
            Some(Qualifier::Version(v)) if v.is_latest() => String::new(),
            Some(Qualifier::Version(_)) => {
                return Err(Error::Invalid(
                    "Function URLs are supported only for $LATEST and aliases, not for published versions.".into(),
                ))
            }
            Some(Qualifier::Alias(a)) => a.clone(),
        };
        self.get(r)?;
        Ok(q)
    }

    /// CreateFunctionUrlConfig.
    pub async fn create_url(&self, r: &FunctionRef, input: UrlInput) -> Result<UrlConfig, Error> {
        let qualifier = self.url_qualifier(r)?;
        let now = ids::now();
        let url = UrlConfig {
            function: r.name.clone(),
            qualifier,
            url_id: ids::random_hex(),
            auth_type: input.auth_type.ok_or_else(|| Error::Invalid("AuthType is required.".into()))?,
            cors: input.cors.unwrap_or(Value::Null),
            invoke_mode: input.invoke_mode.unwrap_or_else(|| "BUFFERED".into()),
            created: now.clone(),
            last_modified: now,
        };
        let stored = url.clone();
        self.blocking(move |s| Ok(s.create_url(&stored)?)).await?;
        Ok(url)
    }

    /// UpdateFunctionUrlConfig.
    pub async fn update_url(&self, r: &FunctionRef, input: UrlInput) -> Result<UrlConfig, Error> {
        let qualifier = self.url_qualifier(r)?;
        let name = r.name.clone();
        let updated = self
            .blocking(move |s| {
                Ok(s.update_url(&name, &qualifier, |u| {
                    if let Some(a) = input.auth_type {
                        u.auth_type = a;
                    }
                    if let Some(c) = input.cors {
                        u.cors = c;
                    }
                    if let Some(m) = input.invoke_mode {
                        u.invoke_mode = m;
                    }
                    u.last_modified = ids::now();
                })?)
            })
            .await?;
        updated.ok_or_else(no_url)
    }

    /// GetFunctionUrlConfig.
    pub fn url(&self, r: &FunctionRef) -> Result<UrlConfig, Error> {
        let qualifier = self.url_qualifier(r)?;
        self.store.url(&r.name, &qualifier)?.ok_or_else(no_url)
    }

    /// DeleteFunctionUrlConfig.
    pub async fn delete_url(&self, r: &FunctionRef) -> Result<(), Error> {
        let qualifier = self.url_qualifier(r)?;
        let name = r.name.clone();
        if self.blocking(move |s| Ok(s.delete_url(&name, &qualifier)?)).await? {
            Ok(())
        } else {
            Err(no_url())
        }
    }

    /// ListFunctionUrlConfigs.
    pub fn list_urls(&self, function: &str, marker: Option<&str>, max: usize) -> Result<Page<Arc<UrlConfig>>, Error> {
        self.meta(function)?;
        Ok(self.store.list_urls(function, marker, max)?)
    }

    /// The URL with this id, for the URL listener.
    pub fn url_by_id(&self, url_id: &str) -> Result<Option<UrlConfig>, Error> {
        Ok(self.store.url_by_id(url_id)?)
    }
}
