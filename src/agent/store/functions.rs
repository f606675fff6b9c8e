//! Functions and their versions: the `functions` table (one row a function: the next version
//! number, reserved concurrency, tags) and the `versions` table (one row a version: `$LATEST`,
//! stored as 0, and every published version, each a frozen copy of the configuration and a
//! reference to its code and layers).
//!
//! Version numbers come from the function's row and are never reused, even after the version
//! they named is deleted. Publishing when `$LATEST` has not changed since the last published
//! version returns that version, as Lambda does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use super::code::Pinned;
use super::layers::LayerRef;
use super::{
    check_revision, from_json, function_not_found, lock, map_json, version_not_found, Page, Store, StoreError,
};
use crate::agent::codezip::{self, CodeError};
use crate::agent::ids::{self, random_uuid, Version};
use crate::agent::images::manifest::RunConfig;
use crate::agent::limits;

/// A version's state, as Lambda reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Ready to invoke.
    Active,
    /// Being prepared (a SnapStart version's snapshot is being taken).
    Pending,
    /// Could not be prepared; `StateReason` says why.
    Failed,
}

impl State {
    /// Lambda's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "Active",
            State::Pending => "Pending",
            State::Failed => "Failed",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "Pending" => State::Pending,
            "Failed" => State::Failed,
            _ => State::Active,
        }
    }
}

/// One version's configuration: `$LATEST`'s as it is now, or a published version's, frozen.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    /// The function's name, `[a-zA-Z0-9-_]{1,64}`.
    pub name: String,
    /// Which version this is.
    pub version: Version,
    /// `provided.al2023`, `python3.11` or `nodejs20.x`.
    pub runtime: String,
    /// The handler (`module.function` for Python; free for provided runtimes, may be empty).
    pub handler: String,
    /// The execution role's ARN (stored, not used).
    pub role: String,
    /// Free text.
    pub description: String,
    /// Guest memory, MB.
    pub memory_mib: u32,
    /// Seconds an invocation may run.
    pub timeout_s: u32,
    /// /tmp, MB.
    pub ephemeral_mib: u32,
    /// The function's environment variables.
    pub environment: BTreeMap<String, String>,
    /// Lambda's `CodeSha256`: the base64 of the sha256 of the zip.
    pub code_sha256: String,
    /// The zip's size in bytes.
    pub code_size: u64,
    /// The code's unzipped size in bytes.
    pub code_unzipped: u64,
    /// The read-only ext4 code image, mounted at /var/task.
    pub code_image: PathBuf,
    /// Its layers, in order.
    pub layers: Vec<LayerRef>,
    /// The layers merged into one read-only image, mounted at /opt (none without layers).
    pub opt_image: Option<PathBuf>,
    /// Changes with every change to the version (only `$LATEST` changes).
    pub revision_id: String,
    /// When it last changed, as Lambda writes it: `2026-11-22T08:30:00.000+0000`.
    pub last_modified: String,
    /// SnapStart (`ApplyOn: PublishedVersions`): a published version's cold starts restore
    /// its init snapshot; `$LATEST` boots.
    pub snap_start: bool,
    /// `DeadLetterConfig.TargetArn`: the queue that gets an asynchronous event whose retries
    /// are exhausted.
    pub dead_letter: Option<String>,
    /// A container-image function's image (`PackageType: Image`); `None` for a zip's. Its root
    /// image is then `code_image`, and runtime, handler, code size and layers are empty.
    pub image: Option<ImageFunction>,
    /// Whether it can be invoked yet.
    pub state: State,
    /// Why it is `Failed` (or `Pending`).
    pub state_reason: Option<String>,
    /// Lambda's code for that reason (`FunctionError.RuntimeInitError`, ...).
    pub state_reason_code: Option<String>,
}

impl FunctionConfig {
    /// The version's ARN as Lambda shows it in its configuration: the function's for
    /// `$LATEST`, qualified with the number for a published version.
    pub fn arn(&self) -> String {
        if self.version.is_latest() {
            ids::function_arn(&self.name)
        } else {
            ids::qualified_arn(&self.name, self.version)
        }
    }

    /// The hex sha256 of its code (the code image's file stem).
    fn code_hex(&self) -> String {
        if self.image.is_some() {
            return String::new(); // not a blob of the code dir
        }
        self.code_image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The stem of its merged layers image, or "".
    fn opt_hex(&self) -> String {
        self.opt_image
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Whether publishing `self` (`$LATEST`) would freeze nothing new compared with the
    /// published version `other`: the same code, layers and configuration.
    fn publishes_as(&self, other: &FunctionConfig) -> bool {
        self.runtime == other.runtime
            && self.handler == other.handler
            && self.role == other.role
            && self.memory_mib == other.memory_mib
            && self.timeout_s == other.timeout_s
            && self.ephemeral_mib == other.ephemeral_mib
            && self.environment == other.environment
            && self.code_sha256 == other.code_sha256
            && self.layers == other.layers
            && self.snap_start == other.snap_start
            && self.dead_letter == other.dead_letter
            && self.image == other.image
    }

    /// The code and layers, unzipped, in bytes (at most 250 MB together).
    pub fn unzipped_total(&self) -> u64 {
        self.code_unzipped + self.layers.iter().map(|l| l.unzipped).sum::<u64>()
    }
}

/// A container-image function's image: where it came from, and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFunction {
    /// `ImageUri` as given (a tag or a digest).
    pub uri: String,
    /// `ResolvedImageUri`: the repository at the manifest digest the URI resolved to.
    pub resolved_uri: String,
    /// The manifest digest, `sha256:<hex>` (its root image is `images/<hex>.ext4`).
    pub digest: String,
    /// How the image says to run it.
    pub run: RunConfig,
    /// `ImageConfig`: what of that the function overrides.
    pub overrides: ImageConfig,
}

/// `ImageConfig`: overrides of the image's `ENTRYPOINT`, `CMD` and `WORKDIR`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Replaces `ENTRYPOINT`.
    pub entry_point: Option<Vec<String>>,
    /// Replaces `CMD`.
    pub command: Option<Vec<String>>,
    /// Replaces `WORKDIR`.
    pub working_directory: Option<String>,
}

impl ImageFunction {
    /// The argv, environment (`KEY=VALUE` of the image) and working directory it runs with:
    /// the image's, with the function's overrides.
    pub fn command(&self) -> (Vec<String>, Vec<(String, String)>, String) {
        let mut argv = self.overrides.entry_point.clone().unwrap_or_else(|| self.run.entrypoint.clone());
        argv.extend(self.overrides.command.clone().unwrap_or_else(|| self.run.cmd.clone()));
        let env = self
            .run
            .env
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let cwd = self.overrides.working_directory.clone().unwrap_or_else(|| self.run.working_dir.clone());
        (argv, env, if cwd.is_empty() { "/".into() } else { cwd })
    }
}

/// What is kept per function rather than per version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FunctionMeta {
    /// The function's name.
    pub name: String,
    /// Reserved concurrency, if set.
    pub reserved: Option<u32>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// The number the next published version gets.
    pub next_version: u32,
}

/// A function to create (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFunction {
    /// See [`FunctionConfig`].
    pub name: String,
    /// See [`FunctionConfig`].
    pub runtime: String,
    /// See [`FunctionConfig`].
    pub handler: String,
    /// See [`FunctionConfig`].
    pub role: String,
    /// See [`FunctionConfig`].
    pub description: String,
    /// See [`FunctionConfig`].
    pub memory_mib: u32,
    /// See [`FunctionConfig`].
    pub timeout_s: u32,
    /// See [`FunctionConfig`].
    pub ephemeral_mib: u32,
    /// See [`FunctionConfig`].
    pub environment: BTreeMap<String, String>,
    /// See [`FunctionConfig`].
    pub snap_start: bool,
    /// See [`FunctionConfig`].
    pub dead_letter: Option<String>,
    /// Layer version ARNs, in order.
    pub layers: Vec<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// A change of `$LATEST`'s configuration: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigPatch {
    /// See [`FunctionConfig`].
    pub runtime: Option<String>,
    /// See [`FunctionConfig`].
    pub handler: Option<String>,
    /// See [`FunctionConfig`].
    pub role: Option<String>,
    /// See [`FunctionConfig`].
    pub description: Option<String>,
    /// See [`FunctionConfig`].
    pub memory_mib: Option<u32>,
    /// See [`FunctionConfig`].
    pub timeout_s: Option<u32>,
    /// See [`FunctionConfig`].
    pub ephemeral_mib: Option<u32>,
    /// Replaces all the variables.
    pub environment: Option<BTreeMap<String, String>>,
    /// See [`FunctionConfig`].
    pub snap_start: Option<bool>,
    /// `Some(None)` removes the dead-letter queue.
    pub dead_letter: Option<Option<String>>,
    /// Replaces the layers (layer version ARNs, in order; empty: none).
    pub layers: Option<Vec<String>>,
    /// Replaces an image function's `ImageConfig`.
    pub image_config: Option<ImageConfig>,
}

/// What [`Store::publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The version.
    pub config: Arc<FunctionConfig>,
    /// False when `$LATEST` had not changed since this version was published.
    pub created: bool,
}

const VERSION_COLUMNS: &str = "function, version, runtime, handler, role, description, memory_mib, timeout_s, \
     ephemeral_mib, environment, code_hex, code_b64, code_size, code_unzipped, layers, opt_hex, revision_id, \
     last_modified, snap_start, state, state_reason, state_reason_code, dead_letter, image";

/// The layers that a create or update uses: their rows, and their merged image, pinned.
struct LayersFor<'a> {
    refs: Vec<LayerRef>,
    image: Option<Pinned<'a>>,
}

impl Store {
    /// One version of a function (on the invoke path: from the cache once read).
    pub fn get(&self, name: &str, version: Version) -> Result<Arc<FunctionConfig>, StoreError> {
        let mut cache = lock(&self.cache);
        if let Some(config) = cache.get(name).and_then(|c| c.versions.get(&version)) {
            return Ok(config.clone());
        }
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {VERSION_COLUMNS} FROM versions WHERE function = ?1 AND version = ?2"))?;
        let config =
            stmt.query_row(params![name, version.stored()], |row| config_from_row(&self.code_dir, row)).optional()?;
        let config = Arc::new(config.ok_or_else(|| {
            if version.is_latest() {
                function_not_found(name)
            } else {
                version_not_found(name, version)
            }
        })?);
        cache.entry(name.to_owned()).or_default().versions.insert(version, config.clone());
        Ok(config)
    }

    /// A function's own settings (not a version's).
    pub fn meta(&self, name: &str) -> Result<FunctionMeta, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached("SELECT name, next_version, reserved, tags FROM functions WHERE name = ?1")?;
        stmt.query_row([name], |row| {
            let tags: String = row.get("tags")?;
            Ok(FunctionMeta {
                name: row.get("name")?,
                next_version: row.get("next_version")?,
                reserved: row.get("reserved")?,
                tags: from_json(&tags),
            })
        })
        .optional()?
        .ok_or_else(|| function_not_found(name))
    }

    /// Whether a function of that name exists.
    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?;
        Ok(stmt.exists([name])?)
    }

    /// Functions in name order after `marker`, at most `max_items` (capped at a page): their
    /// `$LATEST`, or with `all_versions` every version (the marker is then `name:version`).
    pub fn list(
        &self,
        marker: Option<&str>,
        max_items: usize,
        all_versions: bool,
    ) -> Result<Page<Arc<FunctionConfig>>, StoreError> {
        let limit = max_items.clamp(1, limits::MAX_PAGE);
        let conn = lock(&self.reader);
        let (after_name, after_version) = match marker {
            None => (String::new(), -1i64),
            Some(m) if all_versions => match m.rsplit_once(':') {
                Some((name, v)) => (name.to_owned(), v.parse::<i64>().unwrap_or(i64::MAX)),
                None => (m.to_owned(), i64::MAX),
            },
            Some(m) => (m.to_owned(), i64::MAX),
        };
        let filter = if all_versions { "" } else { "AND version = 0" };
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE (function > ?1 OR (function = ?1 AND version > ?2)) \
             {filter} ORDER BY function, version LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![after_name, after_version, limit as i64 + 1], |row| {
            config_from_row(&self.code_dir, row)
        })?;
        Page::collect(
            rows,
            limit,
            |_, _| true,
            |f| {
                if all_versions {
                    format!("{}:{}", f.name, f.version.stored())
                } else {
                    f.name.clone()
                }
            },
        )
    }

    /// A function's versions, `$LATEST` first, after `marker` (a stored version number).
    pub fn list_versions(
        &self,
        name: &str,
        marker: Option<&str>,
        max_items: usize,
    ) -> Result<Page<Arc<FunctionConfig>>, StoreError> {
        if !self.exists(name)? {
            return Err(function_not_found(name));
        }
        let limit = max_items.clamp(1, limits::MAX_PAGE);
        let after: i64 = match marker {
            None => -1,
            Some(m) => m.parse().map_err(|_| StoreError::Invalid(format!("Invalid Marker: {m}")))?,
        };
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE function = ?1 AND version > ?2 ORDER BY version LIMIT ?3"
        ))?;
        let rows =
            stmt.query_map(params![name, after, limit as i64 + 1], |row| config_from_row(&self.code_dir, row))?;
        Page::collect(rows, limit, |_, _| true, |f| f.version.stored().to_string())
    }

    /// Every version in `Pending` state (their preparation was cut short by a restart).
    pub fn pending_versions(&self) -> Result<Vec<Arc<FunctionConfig>>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE state = 'Pending' ORDER BY function, version"
        ))?;
        let rows = stmt.query_map([], |row| config_from_row(&self.code_dir, row))?.map(|r| r.map(Arc::new));
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The layers of a create or update: looked up, their total checked with the code's, and
    /// merged into an image (pinned until the write commits).
    fn layers_for(&self, arns: &[String], code_unzipped: u64) -> Result<LayersFor<'_>, StoreError> {
        let refs = self.resolve_layers(arns)?;
        check_unzipped(code_unzipped, &refs)?;
        if refs.is_empty() {
            return Ok(LayersFor { refs, image: None });
        }
        let hexes: Vec<String> = refs.iter().map(|l| l.hex.clone()).collect();
        Ok(LayersFor { image: Some(self.put_opt_image(&hexes)?), refs })
    }

    /// Creates a function from its configuration and zip (and with `publish`, its version 1):
    /// stores the code and layers image (unless stored already) and the rows, or nothing.
    /// Returns `$LATEST` and the published version.
    pub fn create(
        &self,
        mut new: NewFunction,
        zip: &[u8],
        publish: bool,
    ) -> Result<(Arc<FunctionConfig>, Option<Arc<FunctionConfig>>), StoreError> {
        if self.exists(&new.name)? {
            return Err(exists(&new.name));
        }
        let code = self.put_code(zip, &new.runtime)?;
        let layers = self.layers_for(&new.layers, code.unzipped)?;
        let tags = std::mem::take(&mut new.tags);
        let mut config = latest_of(new);
        config.code_sha256 = code.b64.clone();
        config.code_size = code.size;
        config.code_unzipped = code.unzipped;
        config.code_image = self.image_path(&code.stem);
        config.opt_image = layers.image.as_ref().map(|p| self.opt_path(&p.stem));
        config.layers = layers.refs;
        let published = self.insert_new(&config, &tags, publish)?;
        drop((code, layers.image));
        Ok((Arc::new(config), published))
    }

    /// Creates a container-image function (and with `publish`, its version 1) from its
    /// configuration and its image, already pulled into the image cache (`unpacked` bytes).
    pub fn create_image(
        &self,
        mut new: NewFunction,
        image: ImageFunction,
        unpacked: u64,
        publish: bool,
    ) -> Result<(Arc<FunctionConfig>, Option<Arc<FunctionConfig>>), StoreError> {
        if self.exists(&new.name)? {
            return Err(exists(&new.name));
        }
        if !new.layers.is_empty() {
            return Err(StoreError::Invalid(IMAGE_LAYERS.into()));
        }
        let tags = std::mem::take(&mut new.tags);
        let mut config = latest_of(new);
        (config.runtime, config.handler) = (String::new(), String::new());
        config.code_sha256 = image.digest.trim_start_matches("sha256:").to_owned();
        config.code_unzipped = unpacked;
        config.code_image = self.root_image_path(&image.digest);
        config.image = Some(image);
        let published = self.insert_new(&config, &tags, publish)?;
        Ok((Arc::new(config), published))
    }

    /// Inserts a new function's rows, `$LATEST` as `config` (and version 1 with `publish`), or
    /// nothing.
    fn insert_new(
        &self,
        config: &FunctionConfig,
        tags: &BTreeMap<String, String>,
        publish: bool,
    ) -> Result<Option<Arc<FunctionConfig>>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO functions (name, next_version, reserved, tags) VALUES (?1, 1, NULL, ?2)",
            params![config.name, map_json(tags)],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(exists(&config.name));
            }
            Err(e) => return Err(e.into()),
        }
        insert_version(&tx, config)?;
        let published = if publish { Some(publish_in(&tx, &self.code_dir, config, None)?.config) } else { None };
        tx.commit()?;
        self.invalidate(&config.name);
        Ok(published)
    }

    /// The root image of the image manifest `digest`, in the image cache.
    fn root_image_path(&self, digest: &str) -> PathBuf {
        images_dir(&self.code_dir).join(format!("{}.ext4", digest.trim_start_matches("sha256:")))
    }

    /// Replaces an image function's `$LATEST` image (and with `publish`, publishes it); its
    /// overrides stay. `revision_id`, when given, must be the current one.
    pub fn update_image(
        &self,
        name: &str,
        image: ImageFunction,
        unpacked: u64,
        revision_id: Option<&str>,
        publish: bool,
    ) -> Result<(Arc<FunctionConfig>, Option<Arc<FunctionConfig>>), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let mut config = self.read_latest(&tx, name, revision_id)?;
        let Some(current) = &config.image else {
            return Err(StoreError::Invalid(
                "Please provide ZipFile: the function's package type is Zip, not Image.".into(),
            ));
        };
        let overrides = current.overrides.clone();
        config.code_sha256 = image.digest.trim_start_matches("sha256:").to_owned();
        config.code_unzipped = unpacked;
        config.code_image = self.root_image_path(&image.digest);
        config.image = Some(ImageFunction { overrides, ..image });
        config.revision_id = random_uuid();
        config.last_modified = ids::now();
        update_latest(&tx, &config)?;
        let published = if publish { Some(publish_in(&tx, &self.code_dir, &config, None)?.config) } else { None };
        tx.commit()?;
        drop(conn);
        self.invalidate(name);
        Ok((Arc::new(config), published))
    }

    /// The manifest digests of the images some version uses.
    pub fn image_digests(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare("SELECT image FROM versions WHERE image != ''")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = std::collections::HashSet::new();
        for row in rows {
            if let Ok(image) = serde_json::from_str::<ImageFunction>(&row?) {
                out.insert(image.digest);
            }
        }
        Ok(out)
    }

    /// Replaces `$LATEST`'s code (and with `publish`, publishes it). `revision_id`, when given,
    /// must be the current one.
    pub fn update_code(
        &self,
        name: &str,
        zip: &[u8],
        revision_id: Option<&str>,
        publish: bool,
    ) -> Result<(Arc<FunctionConfig>, Option<Arc<FunctionConfig>>), StoreError> {
        let current = self.get(name, Version::LATEST)?;
        check_revision(&current.revision_id, revision_id)?;
        refuse_zip_on_image(&current)?;
        let code = self.put_code(zip, &current.runtime)?;
        let (config, published, old_hex) = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let mut config = self.read_latest(&tx, name, revision_id)?;
            if config.runtime != current.runtime {
                codezip::check(zip, &config.runtime)?; // changed meanwhile: check against the new one
            }
            check_unzipped(code.unzipped, &config.layers)?;
            let old_hex = config.code_hex();
            config.code_sha256 = code.b64.clone();
            config.code_size = code.size;
            config.code_unzipped = code.unzipped;
            config.code_image = self.image_path(&code.stem);
            config.revision_id = random_uuid();
            config.last_modified = ids::now();
            update_latest(&tx, &config)?;
            let published = if publish { Some(publish_in(&tx, &self.code_dir, &config, None)?.config) } else { None };
            tx.commit()?;
            self.invalidate(name);
            (config, published, old_hex)
        };
        drop(code);
        self.collect(&[old_hex])?;
        Ok((Arc::new(config), published))
    }

    /// Changes `$LATEST`'s configuration. `revision_id`, when given, must be the current one.
    /// Switching to [`codezip::PROVIDED_RUNTIME`] checks the stored zip for a `bootstrap`.
    pub fn update_config(
        &self,
        name: &str,
        patch: ConfigPatch,
        revision_id: Option<&str>,
    ) -> Result<Arc<FunctionConfig>, StoreError> {
        let current = self.get(name, Version::LATEST)?;
        check_revision(&current.revision_id, revision_id)?;
        let layers = match &patch.layers {
            Some(arns) => Some(self.layers_for(arns, current.code_unzipped)?),
            None => None,
        };
        let (config, old_opt) = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let mut config = self.read_latest(&tx, name, revision_id)?;
            let old_opt = config.opt_hex();
            match (&mut config.image, patch.image_config) {
                (Some(image), image_config) => {
                    if patch.runtime.is_some() || patch.handler.is_some() {
                        return Err(StoreError::Invalid(
                            "Runtime and Handler are not supported for functions with the Image package type: the \
                             image says how to run it (override with ImageConfig)."
                                .into(),
                        ));
                    }
                    if patch.layers.as_ref().is_some_and(|l| !l.is_empty()) {
                        return Err(StoreError::Invalid(IMAGE_LAYERS.into()));
                    }
                    if let Some(overrides) = image_config {
                        image.overrides = overrides;
                    }
                }
                (None, Some(_)) => {
                    return Err(StoreError::Invalid(
                        "ImageConfig is only supported for functions with the Image package type.".into(),
                    ))
                }
                (None, None) => {}
            }
            if let Some(runtime) = patch.runtime {
                if runtime != config.runtime && runtime == codezip::PROVIDED_RUNTIME {
                    let path = self.zip_path(&config.code_hex());
                    let zip = std::fs::read(&path).map_err(super::io_err(format!("read {}", path.display())))?;
                    codezip::check(&zip, &runtime)?;
                }
                config.runtime = runtime;
            }
            if let Some(layers) = &layers {
                check_unzipped(config.code_unzipped, &layers.refs)?;
                config.layers = layers.refs.clone();
                config.opt_image = layers.image.as_ref().map(|p| self.opt_path(&p.stem));
            }
            let ConfigPatch {
                handler,
                role,
                description,
                memory_mib,
                timeout_s,
                ephemeral_mib,
                environment,
                snap_start,
                dead_letter,
                ..
            } = patch;
            config.snap_start = snap_start.unwrap_or(config.snap_start);
            if config.snap_start && limits::NO_SNAP_START.contains(&config.runtime.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "{} is not supported for SnapStart enabled functions.",
                    config.runtime
                )));
            }
            config.dead_letter = dead_letter.unwrap_or(config.dead_letter);
            config.handler = handler.unwrap_or(config.handler);
            config.role = role.unwrap_or(config.role);
            config.description = description.unwrap_or(config.description);
            config.memory_mib = memory_mib.unwrap_or(config.memory_mib);
            config.timeout_s = timeout_s.unwrap_or(config.timeout_s);
            config.ephemeral_mib = ephemeral_mib.unwrap_or(config.ephemeral_mib);
            config.environment = environment.unwrap_or(config.environment);
            config.revision_id = random_uuid();
            config.last_modified = ids::now();
            update_latest(&tx, &config)?;
            tx.commit()?;
            self.invalidate(name);
            (config, old_opt)
        };
        drop(layers);
        self.collect(&[old_opt])?;
        Ok(Arc::new(config))
    }

    /// Publishes `$LATEST` as a new version, or returns the last published version if
    /// `$LATEST` has not changed since. `code_sha256` and `revision_id`, when given, must be
    /// `$LATEST`'s; `description` replaces its description in the version.
    pub fn publish(
        &self,
        name: &str,
        code_sha256: Option<&str>,
        revision_id: Option<&str>,
        description: Option<&str>,
    ) -> Result<Published, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let latest = self.read_latest(&tx, name, revision_id)?;
        if let Some(sha) = code_sha256.filter(|sha| *sha != latest.code_sha256) {
            return Err(StoreError::Invalid(format!(
                "CodeSHA256 ({sha}) is different from current CodeSHA256 in $LATEST ({}). Please try again from \
                 the latest state",
                latest.code_sha256
            )));
        }
        let published = publish_in(&tx, &self.code_dir, &latest, description)?;
        tx.commit()?;
        self.invalidate(name);
        Ok(published)
    }

    /// Sets a version's state (a SnapStart version's, when its snapshot is ready or failed).
    pub fn set_state(
        &self,
        name: &str,
        version: Version,
        state: State,
        reason: Option<&str>,
        reason_code: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = lock(&self.writer);
        let changed = conn.execute(
            "UPDATE versions SET state = ?3, state_reason = ?4, state_reason_code = ?5 \
             WHERE function = ?1 AND version = ?2",
            params![name, version.stored(), state.as_str(), reason.unwrap_or(""), reason_code.unwrap_or("")],
        )?;
        self.invalidate(name);
        if changed == 0 {
            return Err(version_not_found(name, version));
        }
        Ok(())
    }

    /// Deletes a function: every version, alias, setting and tag, and the code nothing else
    /// uses.
    pub fn delete_function(&self, name: &str) -> Result<(), StoreError> {
        let stems = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([name])? {
                return Err(function_not_found(name));
            }
            let mut stems = Vec::new();
            {
                let mut stmt = tx.prepare_cached("SELECT code_hex, opt_hex FROM versions WHERE function = ?1")?;
                let rows = stmt.query_map([name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    let (code, opt) = row?;
                    stems.extend([code, opt]);
                }
            }
            for table in ["versions", "aliases"] {
                tx.execute(&format!("DELETE FROM {table} WHERE function = ?1"), [name])?;
            }
            super::delete_owned(&tx, name, None)?;
            tx.execute("DELETE FROM functions WHERE name = ?1", [name])?;
            tx.commit()?;
            self.invalidate(name);
            stems.sort();
            stems.dedup();
            stems
        };
        self.collect(&stems)
    }

    /// Deletes one published version (refused while an alias routes to it) and its
    /// provisioned concurrency.
    pub fn delete_version(&self, name: &str, version: Version) -> Result<(), StoreError> {
        if version.is_latest() {
            return Err(StoreError::Invalid("$LATEST version cannot be deleted without deleting the function.".into()));
        }
        let stems = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let found: Option<(String, String)> = tx
                .query_row(
                    "SELECT code_hex, opt_hex FROM versions WHERE function = ?1 AND version = ?2",
                    params![name, version.stored()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((code, opt)) = found else {
                return Err(if self.exists(name)? {
                    version_not_found(name, version)
                } else {
                    function_not_found(name)
                });
            };
            let users = super::aliases::aliases_routing_to(&tx, name, version)?;
            if !users.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "Unable to delete version because the following aliases reference it: [{}]",
                    users.join(", ")
                )));
            }
            tx.execute("DELETE FROM versions WHERE function = ?1 AND version = ?2", params![name, version.stored()])?;
            super::delete_owned(&tx, name, Some(&version.to_string()))?;
            tx.commit()?;
            self.invalidate(name);
            vec![code, opt]
        };
        self.collect(&stems)
    }

    /// Adds (or replaces) tags on a function; at most [`limits::MAX_TAGS`] in all.
    pub fn tag(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        self.change_tags(name, |current| {
            current.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        })
    }

    /// Removes tags from a function (keys it does not have are ignored).
    pub fn untag(&self, name: &str, keys: &[String]) -> Result<(), StoreError> {
        self.change_tags(name, |current| {
            for key in keys {
                current.remove(key);
            }
        })
    }

    fn change_tags(&self, name: &str, change: impl FnOnce(&mut BTreeMap<String, String>)) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let tags: Option<String> =
            tx.query_row("SELECT tags FROM functions WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        let mut tags: BTreeMap<String, String> = from_json(&tags.ok_or_else(|| function_not_found(name))?);
        change(&mut tags);
        if tags.len() > limits::MAX_TAGS {
            return Err(StoreError::Invalid(format!(
                "Number of tags exceeds resource tag limit. A function can have at most {} tags.",
                limits::MAX_TAGS
            )));
        }
        tx.execute("UPDATE functions SET tags = ?2 WHERE name = ?1", params![name, map_json(&tags)])?;
        tx.commit()?;
        Ok(())
    }

    /// `$LATEST`'s row inside a write transaction, with the revision check.
    fn read_latest(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        revision_id: Option<&str>,
    ) -> Result<FunctionConfig, StoreError> {
        let config = tx
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE function = ?1 AND version = 0"),
                [name],
                |row| config_from_row(&self.code_dir, row),
            )
            .optional()?
            .ok_or_else(|| function_not_found(name))?;
        check_revision(&config.revision_id, revision_id)?;
        Ok(config)
    }
}

fn exists(name: &str) -> StoreError {
    StoreError::Exists(format!("Function already exist: {name}"))
}

/// The code and layers together may unzip to at most [`limits::MAX_UNZIPPED_BYTES`].
fn check_unzipped(code: u64, layers: &[LayerRef]) -> Result<(), StoreError> {
    let total = code + layers.iter().map(|l| l.unzipped).sum::<u64>();
    if layers.is_empty() && total > limits::MAX_UNZIPPED_BYTES {
        return Err(CodeError::UnzippedTooLarge.into());
    }
    if total > limits::MAX_UNZIPPED_BYTES {
        return Err(StoreError::Invalid(format!(
            "Function code combined with layers exceeds the maximum allowed size of {} bytes. The actual size is \
             {total} bytes.",
            limits::MAX_UNZIPPED_BYTES
        )));
    }
    Ok(())
}

fn insert_version(tx: &Transaction<'_>, c: &FunctionConfig) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
             ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
        ),
        params![
            c.name,
            c.version.stored(),
            c.runtime,
            c.handler,
            c.role,
            c.description,
            c.memory_mib,
            c.timeout_s,
            c.ephemeral_mib,
            map_json(&c.environment),
            c.code_hex(),
            c.code_sha256,
            c.code_size as i64,
            c.code_unzipped as i64,
            serde_json::to_string(&c.layers).expect("layers serialize"),
            c.opt_hex(),
            c.revision_id,
            c.last_modified,
            c.snap_start,
            c.state.as_str(),
            c.state_reason.as_deref().unwrap_or(""),
            c.state_reason_code.as_deref().unwrap_or(""),
            c.dead_letter.as_deref().unwrap_or(""),
            c.image.as_ref().map(|i| serde_json::to_string(i).expect("an image serializes")).unwrap_or_default(),
        ],
    )?;
    Ok(())
}

fn update_latest(tx: &Transaction<'_>, c: &FunctionConfig) -> Result<(), StoreError> {
    tx.execute("DELETE FROM versions WHERE function = ?1 AND version = 0", [&c.name])?;
    insert_version(tx, c)
}

/// Publishes `latest` inside a write transaction: a new version unless the last published one
/// is the same.
fn publish_in(
    tx: &Transaction<'_>,
    code_dir: &Path,
    latest: &FunctionConfig,
    description: Option<&str>,
) -> Result<Published, StoreError> {
    let next: u32 = tx.query_row("SELECT next_version FROM functions WHERE name = ?1", [&latest.name], |r| r.get(0))?;
    let last = tx
        .query_row(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE function = ?1 AND version > 0 ORDER BY version DESC \
                 LIMIT 1"
            ),
            [&latest.name],
            |row| config_from_row(code_dir, row),
        )
        .optional()?;
    if let Some(last) = last.filter(|last| latest.publishes_as(last)) {
        return Ok(Published { config: Arc::new(last), created: false });
    }
    let mut version = latest.clone();
    version.version = Version::published(next);
    version.revision_id = random_uuid();
    version.last_modified = ids::now();
    if let Some(d) = description {
        version.description = d.to_owned();
    }
    (version.state, version.state_reason, version.state_reason_code) = if version.snap_start {
        (State::Pending, Some(PENDING_REASON.into()), Some("Creating".into()))
    } else {
        (State::Active, None, None)
    };
    insert_version(tx, &version)?;
    tx.execute("UPDATE functions SET next_version = ?2 WHERE name = ?1", params![latest.name, next + 1])?;
    Ok(Published { config: Arc::new(version), created: true })
}

/// A new function's `$LATEST` from its request: no code, layers or image yet.
pub(super) fn latest_of(new: NewFunction) -> FunctionConfig {
    FunctionConfig {
        name: new.name,
        version: Version::LATEST,
        runtime: new.runtime,
        handler: new.handler,
        role: new.role,
        description: new.description,
        memory_mib: new.memory_mib,
        timeout_s: new.timeout_s,
        ephemeral_mib: new.ephemeral_mib,
        environment: new.environment,
        code_sha256: String::new(),
        code_size: 0,
        code_unzipped: 0,
        code_image: PathBuf::new(),
        layers: Vec::new(),
        opt_image: None,
        revision_id: random_uuid(),
        last_modified: ids::now(),
        snap_start: new.snap_start,
        dead_letter: new.dead_letter,
        image: None,
        state: State::Active,
        state_reason: None,
        state_reason_code: None,
    }
}

/// A zip for a container-image function is refused, as Lambda refuses it.
pub fn refuse_zip_on_image(config: &FunctionConfig) -> Result<(), StoreError> {
    match config.image {
        Some(_) => {
            Err(StoreError::Invalid("Please provide ImageUri when updating a function with packageType Image.".into()))
        }
        None => Ok(()),
    }
}

/// Lambda's refusal of layers on an image function.
pub const IMAGE_LAYERS: &str = "Layers are only supported for functions with the Zip package type.";

/// The image cache beside the code dir.
fn images_dir(code_dir: &Path) -> PathBuf {
    code_dir.with_file_name(crate::agent::images::DIR)
}

/// A pending SnapStart version's `StateReason`.
const PENDING_REASON: &str = "Lambda is initializing your function. It will be invocable soon.";

/// A `versions` row (all of [`VERSION_COLUMNS`]) as a configuration; blobs live in `code_dir`.
fn config_from_row(code_dir: &Path, row: &Row<'_>) -> rusqlite::Result<FunctionConfig> {
    let hex: String = row.get("code_hex")?;
    let opt: String = row.get("opt_hex")?;
    let env: String = row.get("environment")?;
    let layers: String = row.get("layers")?;
    let reason: String = row.get("state_reason")?;
    let reason_code: String = row.get("state_reason_code")?;
    let state: String = row.get("state")?;
    let dead_letter: String = row.get("dead_letter")?;
    let image: String = row.get("image")?;
    let image: Option<ImageFunction> = if image.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&image)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?,
        )
    };
    let code_image = match &image {
        Some(i) => images_dir(code_dir).join(format!("{}.ext4", i.digest.trim_start_matches("sha256:"))),
        None => code_dir.join(format!("{hex}.ext4")),
    };
    Ok(FunctionConfig {
        name: row.get("function")?,
        version: Version::from_stored(row.get("version")?),
        runtime: row.get("runtime")?,
        handler: row.get("handler")?,
        role: row.get("role")?,
        description: row.get("description")?,
        memory_mib: row.get("memory_mib")?,
        timeout_s: row.get("timeout_s")?,
        ephemeral_mib: row.get("ephemeral_mib")?,
        environment: from_json(&env),
        code_sha256: row.get("code_b64")?,
        code_size: row.get::<_, i64>("code_size")? as u64,
        code_unzipped: row.get::<_, i64>("code_unzipped")? as u64,
        code_image,
        layers: from_json(&layers),
        opt_image: (!opt.is_empty()).then(|| code_dir.join(format!("{opt}.ext4"))),
        revision_id: row.get("revision_id")?,
        last_modified: row.get("last_modified")?,
        snap_start: row.get("snap_start")?,
        dead_letter: (!dead_letter.is_empty()).then_some(dead_letter),
        image,
        state: State::parse(&state),
        state_reason: (!reason.is_empty()).then_some(reason),
        state_reason_code: (!reason_code.is_empty()).then_some(reason_code),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blobs, make_zip, new_function, python_zip, temp_dir, Entry};
    use super::*;
    use crate::agent::store::{AliasPatch, NewAlias};
    use std::fs;
    use std::path::Path;

    fn hex_of(config: &FunctionConfig) -> String {
        config.code_hex()
    }

    #[test]
    fn create_get_list_update_delete() {
        let dir = temp_dir("store");
        let store = Store::open(&dir).unwrap();
        let zip = python_zip("one");
        let (created, published) = store.create(new_function("fn-a"), &zip, false).unwrap();
        assert!(published.is_none());
        assert_eq!(created.arn(), format!("arn:aws:lambda:{}:000000000000:function:fn-a", ids::region()));
        assert_eq!(created.version, Version::LATEST);
        assert_eq!(created.code_size, zip.len() as u64);
        assert_eq!(created.code_sha256, super::super::code::code_sha256(&zip));
        assert!(created.code_image.exists());
        assert_eq!(store.get("fn-a", Version::LATEST).unwrap(), created);
        assert!(
            matches!(store.get("nope", Version::LATEST), Err(StoreError::NotFound(m)) if m.ends_with(":function:nope"))
        );
        assert!(matches!(store.create(new_function("fn-a"), &zip, false), Err(StoreError::Exists(_))));

        // The same zip for another function shares the blob.
        store.create(new_function("fn-b"), &zip, false).unwrap();
        store.create(new_function("fn-c"), &python_zip("three"), false).unwrap();
        assert_eq!(blobs(&dir).len(), 4);

        let page = store.list(None, 2, false).unwrap();
        assert_eq!(page.items.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["fn-a", "fn-b"]);
        assert_eq!(page.next_marker.as_deref(), Some("fn-b"));
        let page = store.list(page.next_marker.as_deref(), 2, false).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next_marker, None);

        let patch = ConfigPatch { memory_mib: Some(256), environment: Some(BTreeMap::new()), ..Default::default() };
        let updated = store.update_config("fn-a", patch.clone(), Some(&created.revision_id)).unwrap();
        assert_eq!(updated.memory_mib, 256);
        assert!(updated.environment.is_empty());
        assert_ne!(updated.revision_id, created.revision_id);
        assert_eq!(store.get("fn-a", Version::LATEST).unwrap(), updated);
        assert!(matches!(
            store.update_config("fn-a", patch, Some(&created.revision_id)),
            Err(StoreError::RevisionMismatch)
        ));

        // New code for fn-a: the old blob stays (fn-b uses it).
        let new_zip = python_zip("two");
        let (recoded, _) = store.update_code("fn-a", &new_zip, None, false).unwrap();
        assert_ne!(recoded.code_sha256, created.code_sha256);
        assert_eq!(recoded.memory_mib, 256);
        assert!(created.code_image.exists());
        assert_eq!(blobs(&dir).len(), 6);
        // fn-b moves too: the first blob is no longer used.
        store.update_code("fn-b", &new_zip, None, false).unwrap();
        assert!(!created.code_image.exists());
        assert_eq!(blobs(&dir).len(), 4);

        store.delete_function("fn-a").unwrap();
        assert!(recoded.code_image.exists(), "fn-b still uses it");
        store.delete_function("fn-b").unwrap();
        assert!(!recoded.code_image.exists());
        assert!(matches!(store.delete_function("fn-b"), Err(StoreError::NotFound(_))));
        assert_eq!(blobs(&dir).len(), 2);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_freeze_their_configuration_and_numbers_are_never_reused() {
        let dir = temp_dir("store-versions");
        let store = Store::open(&dir).unwrap();
        let (latest, v1) = store.create(new_function("f"), &python_zip("1"), true).unwrap();
        let v1 = v1.unwrap();
        assert_eq!((v1.version, v1.state), (Version::published(1), State::Active));
        assert_eq!(v1.arn(), ids::qualified_arn("f", 1));
        assert_eq!(
            (v1.code_sha256.as_str(), v1.environment.get("A").map(String::as_str)),
            (latest.code_sha256.as_str(), Some("1"))
        );
        assert_ne!(v1.revision_id, latest.revision_id);

        // Nothing changed: publishing returns version 1.
        let again = store.publish("f", None, None, None).unwrap();
        assert!(!again.created);
        assert_eq!(again.config.version, Version::published(1));
        // A new RevisionId alone (the same code uploaded again) changes nothing either.
        store.update_code("f", &python_zip("1"), None, false).unwrap();
        assert!(!store.publish("f", None, None, None).unwrap().created);

        // Change code and environment, publish 2 with a description; 1 is as it was.
        let (latest, _) = store.update_code("f", &python_zip("2"), None, false).unwrap();
        let env = BTreeMap::from([("A".to_string(), "2".to_string())]);
        let latest2 =
            store.update_config("f", ConfigPatch { environment: Some(env), ..Default::default() }, None).unwrap();
        assert!(matches!(
            store.publish("f", Some("not-the-sha"), None, None),
            Err(StoreError::Invalid(m)) if m.contains("CodeSHA256")
        ));
        assert!(matches!(store.publish("f", None, Some(&latest.revision_id), None), Err(StoreError::RevisionMismatch)));
        let v2 =
            store.publish("f", Some(&latest2.code_sha256), Some(&latest2.revision_id), Some("second")).unwrap().config;
        assert_eq!((v2.version, v2.description.as_str()), (Version::published(2), "second"));
        assert_eq!(v2.environment.get("A").map(String::as_str), Some("2"));
        let v1_now = store.get("f", Version::published(1)).unwrap();
        assert_eq!(v1_now.environment.get("A").map(String::as_str), Some("1"));
        assert_ne!(v1_now.code_sha256, v2.code_sha256);
        assert!(v1_now.code_image.exists() && v2.code_image.exists());

        let listed = store.list_versions("f", None, 50).unwrap();
        assert_eq!(listed.items.iter().map(|v| v.version.to_string()).collect::<Vec<_>>(), ["$LATEST", "1", "2"]);
        let page = store.list_versions("f", None, 2).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("1"));
        assert_eq!(store.list_versions("f", Some("1"), 2).unwrap().items[0].version, Version::published(2));
        let all = store.list(None, 50, true).unwrap();
        assert_eq!(all.items.len(), 3);

        // An alias on 1 keeps it; deleting 2 frees its number for nothing.
        let alias = NewAlias {
            name: "live".into(),
            version: Version::published(1),
            weights: BTreeMap::from([(Version::published(2), 0.3)]),
            description: String::new(),
        };
        store.create_alias("f", alias).unwrap();
        assert!(
            matches!(store.delete_version("f", Version::published(2)), Err(StoreError::Conflict(m)) if m.contains("[live]"))
        );
        store
            .update_alias("f", "live", AliasPatch { weights: Some(BTreeMap::new()), ..Default::default() }, None)
            .unwrap();
        store.delete_version("f", Version::published(2)).unwrap();
        assert!(matches!(store.get("f", Version::published(2)), Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_version("f", Version::LATEST), Err(StoreError::Invalid(_))));
        assert!(matches!(store.delete_version("f", Version::published(9)), Err(StoreError::NotFound(_))));
        store.update_code("f", &python_zip("3"), None, false).unwrap();
        assert_eq!(store.publish("f", None, None, None).unwrap().config.version, Version::published(3));
        assert_eq!(blobs(&dir).len(), 4, "the zip and image of v1, and of v3 (which $LATEST has too)");

        // A SnapStart version starts Pending.
        store.update_config("f", ConfigPatch { snap_start: Some(true), ..Default::default() }, None).unwrap();
        let v4 = store.publish("f", None, None, None).unwrap().config;
        assert_eq!((v4.version, v4.state), (Version::published(4), State::Pending));
        assert_eq!(store.pending_versions().unwrap().len(), 1);
        store.set_state("f", v4.version, State::Failed, Some("init failed"), Some("FunctionError")).unwrap();
        let failed = store.get("f", v4.version).unwrap();
        assert_eq!((failed.state, failed.state_reason_code.as_deref()), (State::Failed, Some("FunctionError")));

        assert_eq!(store.list_versions("f", None, 50).unwrap().items.len(), 4);
        store.delete_function("f").unwrap();
        assert!(blobs(&dir).is_empty());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_create_leaves_nothing() {
        let dir = temp_dir("store-fail");
        let store = Store::open(&dir).unwrap();
        assert!(matches!(store.create(new_function("bad"), b"not a zip", false), Err(StoreError::Code(_))));
        let mut evil = new_function("evil");
        evil.runtime = codezip::PROVIDED_RUNTIME.to_string();
        assert!(matches!(store.create(evil, &python_zip("x"), false), Err(StoreError::Code(CodeError::NoBootstrap))));
        let mut missing_layer = new_function("layered");
        missing_layer.layers = vec![ids::layer_version_arn("nope", 1)];
        assert!(matches!(store.create(missing_layer, &python_zip("y"), false), Err(StoreError::Invalid(_))));
        assert!(blobs(&dir).is_empty());
        assert!(store.list(None, 50, false).unwrap().items.is_empty());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runtime_switch_checks_stored_code() {
        let dir = temp_dir("store-runtime");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("x"), false).unwrap();
        let patch = ConfigPatch { runtime: Some(codezip::PROVIDED_RUNTIME.into()), ..Default::default() };
        assert!(matches!(store.update_config("f", patch, None), Err(StoreError::Code(CodeError::NoBootstrap))));
        assert_eq!(store.get("f", Version::LATEST).unwrap().runtime, "python3.11");

        // SnapStart and Node.js do not go together, in either order, and a refusal changes nothing.
        store.update_config("f", ConfigPatch { snap_start: Some(true), ..Default::default() }, None).unwrap();
        let before = store.get("f", Version::LATEST).unwrap();
        let to_node = ConfigPatch { runtime: Some("nodejs20.x".into()), ..Default::default() };
        let refused = store.update_config("f", to_node, None);
        assert!(
            matches!(refused, Err(StoreError::Invalid(m)) if m == "nodejs20.x is not supported for SnapStart enabled functions.")
        );
        assert_eq!(store.get("f", Version::LATEST).unwrap().revision_id, before.revision_id);
        let both = ConfigPatch { runtime: Some("nodejs20.x".into()), snap_start: Some(false), ..Default::default() };
        store.update_config("f", both, None).unwrap();
        let snap = ConfigPatch { snap_start: Some(true), ..Default::default() };
        assert!(matches!(store.update_config("f", snap, None), Err(StoreError::Invalid(_))));
        assert!(!store.get("f", Version::LATEST).unwrap().snap_start);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layers_are_merged_counted_and_outlive_their_deletion() {
        let dir = temp_dir("store-layers");
        let store = Store::open(&dir).unwrap();
        let lib = make_zip(&[Entry::File("python/mylib.py", b"X = 1\n", 0o644)]);
        let tool = make_zip(&[Entry::File("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)]);
        let l1 = store.publish_layer("lib", &lib, Default::default()).unwrap();
        let l2 = store.publish_layer("tool", &tool, Default::default()).unwrap();
        let mut new = new_function("f");
        new.layers = vec![l1.arn(), l2.arn()];
        let (f, _) = store.create(new, &python_zip("f"), false).unwrap();
        assert_eq!(f.layers.iter().map(|l| l.arn.as_str()).collect::<Vec<_>>(), [l1.arn(), l2.arn()]);
        let image = f.opt_image.clone().expect("a layers image");
        assert!(image.exists());
        assert_eq!(f.unzipped_total(), f.code_unzipped + l1.unzipped + l2.unzipped);

        // Another function with the same layers shares the image.
        let mut same = new_function("g");
        same.layers = vec![l1.arn(), l2.arn()];
        assert_eq!(store.create(same, &python_zip("g"), false).unwrap().0.opt_image, Some(image.clone()));

        // Deleting the layer versions leaves the functions working: their image stays.
        assert!(store.delete_layer("lib", 1).unwrap());
        assert!(!store.delete_layer("lib", 1).unwrap());
        store.delete_layer("tool", 1).unwrap();
        assert!(image.exists());
        assert!(!store.zip_path(&l1.hex).exists(), "no layer version refers to its zip");
        assert!(matches!(store.layer("lib", 1), Err(StoreError::NotFound(_))));
        // New layer versions get new numbers.
        assert_eq!(store.publish_layer("lib", &lib, Default::default()).unwrap().version, 2);
        // Dropping the layers from f keeps the image for g; removing them from g too drops it.
        let none = ConfigPatch { layers: Some(Vec::new()), ..Default::default() };
        assert!(store.update_config("f", none.clone(), None).unwrap().opt_image.is_none());
        assert!(image.exists());
        store.update_config("g", none, None).unwrap();
        assert!(!image.exists());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn code_and_layers_together_stay_under_250_mb() {
        let dir = temp_dir("store-big-layers");
        let store = Store::open(&dir).unwrap();
        // Zeros compress well; the unzipped sizes are what counts.
        let big = vec![0u8; 130 << 20];
        let layer = make_zip(&[Entry::File("data/big.bin", &big, 0o644)]);
        let l = store.publish_layer("big", &layer, Default::default()).unwrap();
        let l2 = store.publish_layer("big2", &layer, Default::default()).unwrap();
        let mut new = new_function("f");
        new.layers = vec![l.arn(), l2.arn()];
        let err = store.create(new, &python_zip("f"), false).unwrap_err();
        assert!(matches!(&err, StoreError::Invalid(m) if m.contains("combined with layers exceeds")), "{err}");
        let mut one = new_function("f");
        one.layers = vec![l.arn()];
        store.create(one, &python_zip("f"), false).unwrap();
        let two = ConfigPatch { layers: Some(vec![l.arn(), l2.arn()]), ..Default::default() };
        assert!(matches!(store.update_config("f", two, None), Err(StoreError::Invalid(_))));
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    const CRASH_DIR: &str = "EMBER_STORE_CRASH_DIR";

    /// The child of `survives_a_crash`: writes, leaves a temp file as a crash mid-create would,
    /// and dies without any cleanup.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR) else { return };
        let store = Store::open(Path::new(&dir)).unwrap();
        store.create(new_function("survivor"), &python_zip("s"), true).unwrap();
        store.create(new_function("doomed"), &python_zip("d"), false).unwrap();
        store.delete_function("doomed").unwrap();
        store.update_config("survivor", ConfigPatch { timeout_s: Some(42), ..Default::default() }, None).unwrap();
        let alias = NewAlias {
            name: "live".into(),
            version: Version::published(1),
            weights: BTreeMap::new(),
            description: String::new(),
        };
        store.create_alias("survivor", alias).unwrap();
        fs::write(Path::new(&dir).join("code").join(".tmp-123.zip"), b"partial").unwrap();
        fs::create_dir(Path::new(&dir).join("code").join(".tmp-123.d")).unwrap();
        // An orphan: a blob renamed into place whose row was never committed.
        fs::write(Path::new(&dir).join("code").join("ab12.zip"), b"orphan").unwrap();
        std::process::abort();
    }

    #[test]
    fn survives_a_crash() {
        let dir = temp_dir("store-crash");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["agent::store::functions::tests::crash_child", "--exact", "--test-threads=1", "--nocapture"])
            .env(CRASH_DIR, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        let store = Store::open(&dir).unwrap();
        let survivor = store.get("survivor", Version::LATEST).unwrap();
        assert_eq!(survivor.timeout_s, 42);
        assert!(survivor.code_image.exists());
        assert_eq!(store.get("survivor", Version::published(1)).unwrap().timeout_s, 3);
        assert_eq!(store.alias("survivor", "live").unwrap().version, Version::published(1));
        assert!(matches!(store.get("doomed", Version::LATEST), Err(StoreError::NotFound(_))));
        assert_eq!(blobs(&dir), [format!("{}.ext4", hex_of(&survivor)), format!("{}.zip", hex_of(&survivor))]);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
