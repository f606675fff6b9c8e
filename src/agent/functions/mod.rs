//! The control plane's use cases: create, change, publish and delete functions, aliases,
//! layers, tags and concurrency settings, each as one call that does the store write (on a
//! blocking thread) and tells the pool what changed. The API calls these after decoding a
//! request; nothing here knows HTTP. Values are checked by [`validate`] before they get here.
//!
//! Published SnapStart versions are prepared here too: publishing one starts its init
//! snapshot ([`Control::publish`]), and its state goes from `Pending` to `Active` (or
//! `Failed`) when the pool is done; versions still `Pending` when the agent starts (it died
//! meanwhile) are prepared again by [`Control::start`].

pub mod event_configs;
pub mod mappings;
pub mod policy;
pub mod urls;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ids::{self, FunctionRef, Qualifier, Version};
use super::images::Images;
use super::logs::Logs;
use super::pool::provisioned::split;
use super::pool::{Pool, ProvisionedStatus};
use super::store::concurrency::{HostLimits, Usage};
use super::store::functions::Published;
use super::store::{
    Alias, AliasPatch, ConfigPatch, FunctionConfig, FunctionMeta, ImageConfig, ImageFunction, LayerVersion, NewAlias,
    NewFunction, NewLayerVersion, Page, State, Store, StoreError,
};

/// Why a control-plane request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value the request got wrong.
    #[error("{0}")]
    Invalid(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// No provisioned concurrency is configured for that qualifier.
    #[error("No Provisioned Concurrency Config found for this function")]
    NoProvisionedConfig,
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A container image could not be pulled.
    #[error(transparent)]
    Image(#[from] crate::agent::images::ImageError),
    /// Our own failure.
    #[error("{0}")]
    Internal(String),
}

/// A function's configuration as one qualifier shows it: the version's configuration, with
/// the ARN it was asked by (an alias's, for an alias).
#[derive(Debug, Clone)]
pub struct Shown {
    /// The version's configuration.
    pub config: Arc<FunctionConfig>,
    /// The ARN to show: the version's, or the alias's.
    pub arn: String,
}

/// The account's limits and usage (GetAccountSettings).
#[derive(Debug, Clone, Copy)]
pub struct AccountSettings {
    /// Instances at once on this host.
    pub concurrent: u32,
    /// What reservations leave to the other functions.
    pub unreserved: u32,
    /// Code stored and functions.
    pub usage: Usage,
}

/// The control plane.
pub struct Control {
    store: Arc<Store>,
    /// Container images: the registries and the cache of root images.
    images: Arc<Images>,
    pool: Pool,
    logs: Logs,
    limits: HostLimits,
    /// Function URLs by id, with whether their policy opens them (the URL listener's lookups).
    urls: urls::UrlCache,
}

impl Control {
    /// The control plane of `store`, telling `pool` what changes; `limits` are the host's.
    pub fn new(store: Arc<Store>, images: Arc<Images>, pool: Pool, logs: Logs, limits: HostLimits) -> Control {
        Control { store, images, pool, logs, limits, urls: urls::UrlCache::default() }
    }

    /// Applies what the store holds to a pool that has just started: reservations,
    /// provisioned concurrency, and the preparation of versions left `Pending`.
    pub fn start(&self) -> Result<(), Error> {
        for (function, reserved) in self.store.reservations()? {
            self.pool.set_reserved(&function, Some(reserved));
        }
        for setting in self.store.provisioned()? {
            let r =
                FunctionRef { name: setting.function.clone(), qualifier: Qualifier::parse(&setting.qualifier).ok() };
            match self.provisioned_targets(&r, setting.requested) {
                Ok(targets) => {
                    self.pool.set_provisioned(&setting.function, &setting.qualifier, targets);
                }
                Err(e) => {
                    eprintln!("ember: provisioned concurrency of {}:{}: {e}", setting.function, setting.qualifier)
                }
            }
        }
        for version in self.store.pending_versions()? {
            self.optimize(version);
        }
        Ok(())
    }

    /// Runs store work on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| Error::Internal(format!("internal error: {e}")))?
    }

    /// Prepares a published SnapStart version in the background and records its state.
    fn optimize(&self, version: Arc<FunctionConfig>) {
        let (store, pool) = (self.store.clone(), self.pool.clone());
        tokio::spawn(async move {
            let (state, reason, code) = match pool.optimize(version.clone()).await {
                Ok(()) => (State::Active, None, None),
                Err(e) => {
                    eprintln!("ember: {}:{}: SnapStart failed: {e}", version.name, version.version);
                    (State::Failed, Some(e.reason), Some(e.code))
                }
            };
            let (name, number) = (version.name.clone(), version.version);
            let stored =
                tokio::task::spawn_blocking(move || store.set_state(&name, number, state, reason.as_deref(), code))
                    .await;
            match stored {
                Ok(Ok(())) => {}
                // Deleted meanwhile: its snapshot goes too.
                Ok(Err(StoreError::NotFound(_))) => pool.retire(&version.name, version.version),
                Ok(Err(e)) => eprintln!("ember: {}:{}: cannot record its state: {e}", version.name, version.version),
                Err(e) => eprintln!("ember: {}:{}: cannot record its state: {e}", version.name, version.version),
            }
        });
    }

    /// After a publish: prepares a new SnapStart version.
    fn published(&self, published: Option<&Arc<FunctionConfig>>) {
        if let Some(v) = published.filter(|v| v.state == State::Pending) {
            self.optimize(v.clone());
        }
    }

    // -----------------------------------------------------------------------------------------
    // Functions and versions
    // -----------------------------------------------------------------------------------------

    /// Creates a function (and with `publish`, its version 1). Returns `$LATEST` and the
    /// published version.
    pub async fn create(
        &self,
        new: NewFunction,
        zip: Vec<u8>,
        publish: bool,
    ) -> Result<(Arc<FunctionConfig>, Option<Arc<FunctionConfig>>), Error> {
        let (latest, published) = self.blocking(move |s| Ok(s.create(new, &zip, publish)?)).await?;
        self.published(published.as_ref());
        Ok((latest, published))
    }

    /// Creates a container-image function: its image pulled (what the cache lacks) from the
    /// registry `uri` names, its tag resolved to a digest now.
    pub async fn create_image(
        &self,
        new: NewFunction,
        uri: String,
        overrides: ImageConfig,
        publish: bool,
    ) -> Result<(Arc<FunctionConfig>, Option<Arc<FunctionConfig>>), Error> {
        if self.store.exists(&new.name)? {
            return Err(StoreError::Exists(format!("Function already exist: {}", new.name)).into());
        }
        let (image, unpacked) = self.pull(uri, overrides).await?;
        let (latest, published) = self.blocking(move |s| Ok(s.create_image(new, image, unpacked, publish)?)).await?;
        self.published(published.as_ref());
        Ok((latest, published))
    }

    /// Replaces an image function's image with what `uri` resolves to now (a moved tag gives
    /// its new digest), and with `publish` publishes it.
    pub async fn update_image(
        &self,
        name: &str,
        uri: String,
        revision: Option<String>,
        publish: bool,
    ) -> Result<Arc<FunctionConfig>, Error> {
        let current = self.store.get(name, Version::LATEST)?;
        if current.image.is_none() {
            return Err(Error::Invalid(
                "Please provide ZipFile: the function's package type is Zip, not Image.".into(),
            ));
        }
        let (image, unpacked) = self.pull(uri, ImageConfig::default()).await?;
        let n = name.to_owned();
        let (latest, published) =
            self.blocking(move |s| Ok(s.update_image(&n, image, unpacked, revision.as_deref(), publish)?)).await?;
        self.pool.retire(name, Version::LATEST);
        self.published(published.as_ref());
        Ok(published.unwrap_or(latest))
    }

    /// Pulls `uri` into the image cache, with progress in the agent's log.
    async fn pull(&self, uri: String, overrides: ImageConfig) -> Result<(ImageFunction, u64), Error> {
        let pulled = self.images.pull(&uri, &|line| eprintln!("ember: image {line}")).await?;
        let image = ImageFunction {
            uri,
            resolved_uri: pulled.resolved_uri,
            digest: pulled.digest,
            run: pulled.config,
            overrides,
        };
        Ok((image, pulled.unpacked_bytes))
    }

    /// Removes the cached images no version uses (at start: a pull in flight is not yet in
    /// the store, so this never runs beside one).
    pub fn collect_images(&self) -> Result<(), Error> {
        let used = self.store.image_digests()?;
        self.images.collect(&used).map_err(|e| Error::Internal(format!("collect images: {e}")))
    }

    /// Replaces `$LATEST`'s code (and with `publish`, publishes it: the new version is
    /// returned then).
    pub async fn update_code(
        &self,
        name: &str,
        zip: Vec<u8>,
        revision: Option<String>,
        publish: bool,
    ) -> Result<Arc<FunctionConfig>, Error> {
        let n = name.to_owned();
        let (latest, published) =
            self.blocking(move |s| Ok(s.update_code(&n, &zip, revision.as_deref(), publish)?)).await?;
        self.pool.retire(name, Version::LATEST);
        self.published(published.as_ref());
        Ok(published.unwrap_or(latest))
    }

    /// What `$LATEST` would be with this code (UpdateFunctionCode's `DryRun`): the code is
    /// checked, nothing is stored.
    pub async fn check_code(&self, name: &str, zip: Vec<u8>) -> Result<Arc<FunctionConfig>, Error> {
        let n = name.to_owned();
        self.blocking(move |s| {
            let mut config = (*s.get(&n, Version::LATEST)?).clone();
            super::store::functions::refuse_zip_on_image(&config)?;
            let manifest = super::codezip::check(&zip, &config.runtime).map_err(StoreError::from)?;
            config.code_sha256 = super::store::code::code_sha256(&zip);
            config.code_size = zip.len() as u64;
            config.code_unzipped = manifest.declared_bytes;
            Ok(Arc::new(config))
        })
        .await
    }

    /// Changes `$LATEST`'s configuration.
    pub async fn update_config(
        &self,
        name: &str,
        patch: ConfigPatch,
        revision: Option<String>,
    ) -> Result<Arc<FunctionConfig>, Error> {
        let n = name.to_owned();
        let config = self.blocking(move |s| Ok(s.update_config(&n, patch, revision.as_deref())?)).await?;
        self.pool.retire(name, Version::LATEST);
        Ok(config)
    }

    /// Publishes `$LATEST` (or returns the last version, if nothing changed since).
    pub async fn publish(
        &self,
        name: &str,
        code_sha256: Option<String>,
        revision: Option<String>,
        description: Option<String>,
    ) -> Result<Published, Error> {
        let n = name.to_owned();
        let published = self
            .blocking(move |s| {
                Ok(s.publish(&n, code_sha256.as_deref(), revision.as_deref(), description.as_deref())?)
            })
            .await?;
        if published.created {
            self.published(Some(&published.config));
        }
        Ok(published)
    }

    /// The configuration a reference names: a version's, or the version an alias points to
    /// (shown with the alias's ARN).
    pub fn get(&self, r: &FunctionRef) -> Result<Shown, Error> {
        match &r.qualifier {
            None => Ok(Shown { config: self.store.get(&r.name, Version::LATEST)?, arn: ids::function_arn(&r.name) }),
            Some(Qualifier::Version(v)) => {
                let config = self.store.get(&r.name, *v)?;
                Ok(Shown { arn: config.arn(), config })
            }
            Some(Qualifier::Alias(a)) => {
                let alias = self.store.alias(&r.name, a)?;
                Ok(Shown { config: self.store.get(&r.name, alias.version)?, arn: alias.arn() })
            }
        }
    }

    /// A function's own settings.
    pub fn meta(&self, name: &str) -> Result<FunctionMeta, Error> {
        Ok(self.store.meta(name)?)
    }

    /// Functions (their `$LATEST`, or with `all_versions` every version), a page at a time.
    pub fn list(
        &self,
        marker: Option<&str>,
        max: usize,
        all_versions: bool,
    ) -> Result<Page<Arc<FunctionConfig>>, Error> {
        Ok(self.store.list(marker, max, all_versions)?)
    }

    /// A function's versions, a page at a time.
    pub fn list_versions(
        &self,
        name: &str,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<FunctionConfig>>, Error> {
        Ok(self.store.list_versions(name, marker, max)?)
    }

    /// Deletes a function (every version, alias and setting), or with a version qualifier
    /// that version.
    pub async fn delete(&self, r: &FunctionRef) -> Result<(), Error> {
        let name = r.name.clone();
        match &r.qualifier {
            None => {
                self.blocking(move |s| Ok(s.delete_function(&name)?)).await?;
                self.urls.invalidate();
                self.pool.remove_function(&r.name);
                let (logs, name) = (self.logs.clone(), r.name.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = logs.remove(&name) {
                        eprintln!("ember: cannot remove the log of {name}: {e}");
                    }
                })
                .await;
                Ok(())
            }
            Some(Qualifier::Version(v)) => {
                let v = *v;
                self.blocking(move |s| Ok(s.delete_version(&name, v)?)).await?;
                self.urls.invalidate();
                self.pool.remove_provisioned(&r.name, &v.to_string());
                self.pool.retire(&r.name, v);
                Ok(())
            }
            Some(Qualifier::Alias(_)) => {
                Err(Error::Invalid("Deletion of aliases is not supported by DeleteFunction: use DeleteAlias.".into()))
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Aliases
    // -----------------------------------------------------------------------------------------

    /// Creates an alias.
    pub async fn create_alias(&self, function: &str, new: NewAlias) -> Result<Arc<Alias>, Error> {
        let f = function.to_owned();
        self.blocking(move |s| Ok(s.create_alias(&f, new)?)).await
    }

    /// One alias.
    pub fn alias(&self, function: &str, name: &str) -> Result<Arc<Alias>, Error> {
        Ok(self.store.alias(function, name)?)
    }

    /// A function's aliases (those routing to `version` only, if given), a page at a time.
    pub fn list_aliases(
        &self,
        function: &str,
        version: Option<Version>,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<Alias>>, Error> {
        Ok(self.store.list_aliases(function, version, marker, max)?)
    }

    /// Changes an alias; its provisioned concurrency follows it to its new versions.
    pub async fn update_alias(
        &self,
        function: &str,
        name: &str,
        patch: AliasPatch,
        revision: Option<String>,
    ) -> Result<Arc<Alias>, Error> {
        let (f, n) = (function.to_owned(), name.to_owned());
        let alias = self.blocking(move |s| Ok(s.update_alias(&f, &n, patch, revision.as_deref())?)).await?;
        if let Some(status) = self.pool.provisioned(function, name) {
            let r = FunctionRef { name: function.to_owned(), qualifier: Some(Qualifier::Alias(name.to_owned())) };
            let targets = self.provisioned_targets(&r, status.requested)?;
            self.pool.set_provisioned(function, name, targets);
        }
        Ok(alias)
    }

    /// Deletes an alias (and its provisioned concurrency). An alias that does not exist is
    /// not an error, as on Lambda.
    pub async fn delete_alias(&self, function: &str, name: &str) -> Result<(), Error> {
        let (f, n) = (function.to_owned(), name.to_owned());
        self.blocking(move |s| Ok(s.delete_alias(&f, &n)?)).await?;
        self.urls.invalidate();
        self.pool.remove_provisioned(function, name);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Layers
    // -----------------------------------------------------------------------------------------

    /// Publishes a layer version.
    pub async fn publish_layer(
        &self,
        name: &str,
        zip: Vec<u8>,
        new: NewLayerVersion,
    ) -> Result<Arc<LayerVersion>, Error> {
        let n = name.to_owned();
        self.blocking(move |s| Ok(s.publish_layer(&n, &zip, new)?)).await
    }

    /// One layer version.
    pub fn layer(&self, name: &str, version: u32) -> Result<Arc<LayerVersion>, Error> {
        Ok(self.store.layer(name, version)?)
    }

    /// One layer version, by ARN.
    pub fn layer_by_arn(&self, arn: &str) -> Result<Arc<LayerVersion>, Error> {
        Ok(self.store.layer_by_arn(arn)?)
    }

    /// Layers with their newest matching version, a page at a time.
    pub fn list_layers(
        &self,
        runtime: Option<&str>,
        arch: Option<&str>,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<LayerVersion>>, Error> {
        Ok(self.store.list_layers(runtime, arch, marker, max)?)
    }

    /// A layer's versions, newest first, a page at a time.
    pub fn list_layer_versions(
        &self,
        name: &str,
        runtime: Option<&str>,
        arch: Option<&str>,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<LayerVersion>>, Error> {
        Ok(self.store.list_layer_versions(name, runtime, arch, marker, max)?)
    }

    /// Deletes a layer version; the functions using it keep working.
    pub async fn delete_layer(&self, name: &str, version: u32) -> Result<(), Error> {
        let n = name.to_owned();
        self.blocking(move |s| Ok(s.delete_layer(&n, version)?)).await.map(|_| ())
    }

    /// The zip of a layer version (its `Content.Location`).
    pub async fn layer_zip(&self, name: &str, version: u32) -> Result<Vec<u8>, Error> {
        let layer = self.layer(name, version)?;
        let path = self.store.zip_path(&layer.hex);
        tokio::fs::read(&path).await.map_err(|e| Error::Internal(format!("read {}: {e}", path.display())))
    }

    /// The zip of a function version's code (GetFunction's `Code.Location`).
    pub async fn code_zip(&self, r: &FunctionRef) -> Result<Vec<u8>, Error> {
        let config = self.get(r)?.config;
        let path = config.code_image.with_extension("zip");
        tokio::fs::read(&path).await.map_err(|e| Error::Internal(format!("read {}: {e}", path.display())))
    }

    // -----------------------------------------------------------------------------------------
    // Tags
    // -----------------------------------------------------------------------------------------

    /// The function a taggable resource ARN names (functions are the only taggable
    /// resources here; tags belong to the function, not to a version or alias).
    fn tagged_function(&self, resource: &str) -> Result<String, Error> {
        if !resource.starts_with("arn:") || !resource.contains(":function:") {
            return Err(Error::Invalid(format!(
                "{resource} is not a taggable resource of this host: only functions (by unqualified ARN) take tags."
            )));
        }
        let r = FunctionRef::parse(resource).map_err(|e| Error::NotFound(e.to_string()))?;
        if r.qualifier.is_some() {
            return Err(Error::Invalid(
                "Tags are not supported for function versions or aliases: use the unqualified function ARN.".into(),
            ));
        }
        if !self.store.exists(&r.name)? {
            return Err(Error::NotFound(format!("Function not found: {resource}")));
        }
        Ok(r.name)
    }

    /// Adds tags to a function.
    pub async fn tag(&self, resource: &str, tags: BTreeMap<String, String>) -> Result<(), Error> {
        let name = self.tagged_function(resource)?;
        self.blocking(move |s| Ok(s.tag(&name, &tags)?)).await
    }

    /// Removes tags from a function.
    pub async fn untag(&self, resource: &str, keys: Vec<String>) -> Result<(), Error> {
        let name = self.tagged_function(resource)?;
        self.blocking(move |s| Ok(s.untag(&name, &keys)?)).await
    }

    /// A function's tags.
    pub fn tags(&self, resource: &str) -> Result<BTreeMap<String, String>, Error> {
        let name = self.tagged_function(resource)?;
        Ok(self.store.meta(&name)?.tags)
    }

    // -----------------------------------------------------------------------------------------
    // Concurrency
    // -----------------------------------------------------------------------------------------

    /// Sets (or with `None` removes) a function's reserved concurrency.
    pub async fn set_reserved(&self, name: &str, reserved: Option<u32>) -> Result<(), Error> {
        let (n, limits) = (name.to_owned(), self.limits);
        self.blocking(move |s| Ok(s.set_reserved(&n, reserved, limits)?)).await?;
        self.pool.set_reserved(name, reserved);
        Ok(())
    }

    /// What the provisioned concurrency of a qualifier asks of each version: a version's
    /// own, or an alias's split between its versions by weight. `$LATEST` takes none, as on
    /// Lambda.
    fn provisioned_targets(&self, r: &FunctionRef, requested: u32) -> Result<Vec<(Arc<FunctionConfig>, u32)>, Error> {
        let unpublished = || {
            Error::Invalid("Provisioned Concurrency Configs cannot be applied to unpublished function versions.".into())
        };
        if r.qualifier.is_none() {
            return Err(Error::Invalid("The Qualifier parameter is required.".into()));
        }
        // The function, version or alias must exist before anything else is said of it.
        self.get(r)?;
        let split_of = match &r.qualifier {
            None => unreachable!("checked above"),
            Some(Qualifier::Version(v)) if v.is_latest() => return Err(unpublished()),
            Some(Qualifier::Version(v)) => vec![(*v, requested)],
            Some(Qualifier::Alias(a)) => {
                let alias = self.store.alias(&r.name, a)?;
                if alias.versions().any(Version::is_latest) {
                    return Err(unpublished());
                }
                let weights: Vec<(Version, f64)> = alias.weights.iter().map(|(v, w)| (*v, *w)).collect();
                split(requested, alias.version, &weights)
            }
        };
        split_of.into_iter().map(|(v, n)| Ok((self.store.get(&r.name, v)?, n))).collect()
    }

    /// Sets the provisioned concurrency of a version or alias.
    pub async fn set_provisioned(&self, r: &FunctionRef, requested: u32) -> Result<ProvisionedStatus, Error> {
        let targets = self.provisioned_targets(r, requested)?;
        let qualifier = r.qualifier.as_ref().expect("checked by provisioned_targets").to_string();
        let (name, q, limits) = (r.name.clone(), qualifier.clone(), self.limits);
        self.blocking(move |s| Ok(s.set_provisioned(&name, &q, Some(requested), limits)?)).await?;
        Ok(self.pool.set_provisioned(&r.name, &qualifier, targets))
    }

    /// The provisioned concurrency of a version or alias.
    pub fn provisioned(&self, r: &FunctionRef) -> Result<ProvisionedStatus, Error> {
        let qualifier = self.provisioned_qualifier(r)?;
        self.pool.provisioned(&r.name, &qualifier).ok_or(Error::NoProvisionedConfig)
    }

    /// Removes the provisioned concurrency of a version or alias.
    pub async fn remove_provisioned(&self, r: &FunctionRef) -> Result<(), Error> {
        let qualifier = self.provisioned_qualifier(r)?;
        let (name, q, limits) = (r.name.clone(), qualifier.clone(), self.limits);
        let existed = self.blocking(move |s| Ok(s.set_provisioned(&name, &q, None, limits)?)).await?;
        if !self.pool.remove_provisioned(&r.name, &qualifier) && !existed {
            return Err(Error::NoProvisionedConfig);
        }
        Ok(())
    }

    /// Every provisioned-concurrency configuration of a function, by qualifier.
    pub fn list_provisioned(&self, name: &str) -> Result<Vec<(String, ProvisionedStatus)>, Error> {
        if !self.store.exists(name)? {
            return Err(Error::NotFound(format!("Function not found: {}", ids::function_arn(name))));
        }
        Ok(self.pool.provisioned_of(name))
    }

    /// The qualifier of a provisioned-concurrency request (required), the function existing.
    fn provisioned_qualifier(&self, r: &FunctionRef) -> Result<String, Error> {
        let q = r.qualifier.as_ref().ok_or_else(|| Error::Invalid("The Qualifier parameter is required.".into()))?;
        self.get(r)?;
        Ok(q.to_string())
    }

    /// The container-image pulls under way.
    pub fn image_pulls(&self) -> Vec<crate::agent::images::PullProgress> {
        self.images.progress()
    }

    /// The account's limits and usage.
    pub fn account(&self) -> Result<AccountSettings, Error> {
        let (concurrent, unreserved) = self.pool.concurrency();
        Ok(AccountSettings { concurrent, unreserved, usage: self.store.usage()? })
    }
}
