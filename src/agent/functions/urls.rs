//! Function URL configs (Create/Get/Update/Delete/ListFunctionUrlConfig(s)): one URL per
//! function (`$LATEST`) or alias, served by the agent's URL listener (`api::urls`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Control, Error};
use crate::agent::ids::{self, FunctionRef, Qualifier};
use crate::agent::store::urls::UrlConfig;
use crate::agent::store::{lock, Page};

/// A function URL as the listener needs it: its config, and whether its policy lets anyone
/// call it.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlRoute {
    /// The URL's config.
    pub config: UrlConfig,
    /// Whether the policy lets `*` call `lambda:InvokeFunctionUrl`.
    pub public: bool,
}

/// URL routes by URL id, read from the store once and kept until a URL, a policy, or a
/// function, version or alias they belong to changes (then all go). A generation counter keeps
/// a lookup that raced a change from caching what it read before the change.
#[derive(Debug, Default)]
pub struct UrlCache {
    routes: Mutex<HashMap<String, Option<Arc<UrlRoute>>>>,
    generation: AtomicU64,
}

impl UrlCache {
    /// Forgets every route (after a write that may change one).
    pub fn invalidate(&self) {
        let mut routes = lock(&self.routes);
        self.generation.fetch_add(1, Ordering::SeqCst);
        routes.clear();
    }
}

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
        self.urls.invalidate();
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
        self.urls.invalidate();
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
        let deleted = self.blocking(move |s| Ok(s.delete_url(&name, &qualifier)?)).await?;
        self.urls.invalidate();
        if deleted {
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

    /// The URL with this id and whether anyone may call it, for the URL listener: from the
    /// cache, or read from the store (blocking reads: small indexed lookups).
    pub fn url_route(&self, url_id: &str) -> Result<Option<Arc<UrlRoute>>, Error> {
        if let Some(route) = lock(&self.urls.routes).get(url_id) {
            return Ok(route.clone());
        }
        let generation = self.urls.generation.load(Ordering::SeqCst);
        let route = match self.store.url_by_id(url_id)? {
            Some(config) => {
                let public = self.url_is_public(&config.function, &config.qualifier)?;
                Some(Arc::new(UrlRoute { config, public }))
            }
            None => None,
        };
        let mut routes = lock(&self.urls.routes);
        if self.urls.generation.load(Ordering::SeqCst) == generation {
            routes.insert(url_id.to_owned(), route.clone());
        }
        Ok(route)
    }
}
