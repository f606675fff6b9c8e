//! The function store: metadata in SQLite and code by content address, under the data dir.
//!
//! ```text
//! <data dir>/ember.db            functions (WAL mode, synchronous=FULL: survives kill -9 and power loss)
//! <data dir>/ember.lock          held (flock) while an agent uses the data dir
//! <data dir>/code/<sha256>.zip   the uploaded package, by the sha256 of its bytes (hex)
//! <data dir>/code/<sha256>.ext4  the read-only code image built from it
//! <data dir>/code/.tmp-*         work in progress: removed on open, so a crash leaves none
//! ```
//!
//! Writes are all-or-nothing. Code blobs are written under temporary names, fsynced and renamed
//! into place before the row that refers to them is committed; a blob that no row refers to is
//! deleted (after a failed create, an update or a delete, and on open for what a crash left), but
//! never while a create or update is between writing it and committing its row (it is *pinned*).
//! Lock order: `pins` before `writer`; `reader` alone.
//!
//! Reads (the invoke path) use their own connection and one indexed lookup; WAL lets them run
//! while a write commits. Nothing here is async: the API calls writes on blocking threads.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use sha2::{Digest, Sha256};

use super::codezip::{self, CodeError};
use super::ApiError;

/// The account id in every ARN (there is one account per host).
pub const ACCOUNT_ID: &str = "000000000000";
/// The only version there is until versions are written.
pub const LATEST: &str = "$LATEST";
/// The most functions one [`Store::list`] page holds (Lambda's page size).
pub const MAX_PAGE: usize = 50;

const TEMP_PREFIX: &str = ".tmp-";

/// The region in ARNs: `AWS_REGION`, or `us-east-1`. Read once.
pub fn region() -> &'static str {
    static REGION: OnceLock<String> = OnceLock::new();
    REGION.get_or_init(|| {
        std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()).unwrap_or_else(|| "us-east-1".to_string())
    })
}

/// `arn:aws:lambda:<region>:000000000000:function:<name>`.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{}:{ACCOUNT_ID}:function:{name}", region())
}

/// A function's configuration as stored (the `$LATEST` version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    /// The function's name, `[a-zA-Z0-9-_]{1,64}`.
    pub name: String,
    /// `arn:aws:lambda:<region>:000000000000:function:<name>`.
    pub arn: String,
    /// `provided.al2023` or `python3.11`.
    pub runtime: String,
    /// The handler (`module.function` for Python; free for provided runtimes, may be empty).
    pub handler: String,
    /// The execution role's ARN (stored, not used).
    pub role: String,
    /// Free text.
    pub description: String,
    /// Guest memory, 128 to 10240 MiB.
    pub memory_mib: u32,
    /// 1 to 900 s.
    pub timeout_s: u32,
    /// /tmp size, 512 to 10240 MiB.
    pub ephemeral_mib: u32,
    /// The function's environment variables.
    pub environment: BTreeMap<String, String>,
    /// Lambda's `CodeSha256`: the base64 of the sha256 of the zip.
    pub code_sha256: String,
    /// The zip's size in bytes.
    pub code_size: u64,
    /// The read-only ext4 code image, mounted at /var/task.
    pub code_image: PathBuf,
    /// Changes with every change to the function.
    pub revision_id: String,
    /// When it last changed, as Lambda writes it: `2026-11-22T08:30:00.000+0000`.
    pub last_modified: String,
    /// `$LATEST`.
    pub version: String,
    /// SnapStart (`ApplyOn: PublishedVersions`): cold starts restore an init snapshot. Ember
    /// has no published versions yet, so it applies to `$LATEST`.
    pub snap_start: bool,
}

/// The configuration of a function to create (already validated by the API).
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
}

/// A change of configuration: `None` keeps the current value.
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
}

/// One page of [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Functions in name order.
    pub functions: Vec<FunctionConfig>,
    /// The marker of the next page, if there is one.
    pub next_marker: Option<String>,
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such function (holds its ARN).
    #[error("Function not found: {0}")]
    NotFound(String),
    /// A function of that name exists.
    #[error("Function already exist: {0}")]
    Exists(String),
    /// The caller's `RevisionId` is not the current one.
    #[error(
        "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to \
         retrieve the latest Revision Id"
    )]
    RevisionMismatch,
    /// The code was refused or could not be built.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// Another agent holds the data dir.
    #[error("{0} is in use by another agent")]
    Locked(PathBuf),
    /// SQLite failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError::not_found(e.to_string()),
            StoreError::Exists(_) => ApiError::conflict(e.to_string()),
            StoreError::RevisionMismatch => ApiError::precondition_failed(e.to_string()),
            StoreError::Code(e) => e.into(),
            StoreError::Locked(_) | StoreError::Db(_) | StoreError::Io { .. } => ApiError::service(e.to_string()),
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS functions (
    name          TEXT PRIMARY KEY NOT NULL,
    runtime       TEXT NOT NULL,
    handler       TEXT NOT NULL,
    role          TEXT NOT NULL,
    description   TEXT NOT NULL,
    memory_mib    INTEGER NOT NULL,
    timeout_s     INTEGER NOT NULL,
    ephemeral_mib INTEGER NOT NULL,
    environment   TEXT NOT NULL,
    code_hex      TEXT NOT NULL,
    code_b64      TEXT NOT NULL,
    code_size     INTEGER NOT NULL,
    revision_id   TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    snap_start    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS functions_code ON functions (code_hex);
CREATE TABLE IF NOT EXISTS provisioned (
    name          TEXT PRIMARY KEY NOT NULL,
    requested     INTEGER NOT NULL
) WITHOUT ROWID;
";

const COLUMNS: &str = "name, runtime, handler, role, description, memory_mib, timeout_s, ephemeral_mib, environment, \
                       code_hex, code_b64, code_size, revision_id, last_modified, snap_start";

/// Function metadata and code under one data dir.
pub struct Store {
    dir: PathBuf,
    code_dir: PathBuf,
    /// Every write goes through this connection.
    writer: Mutex<Connection>,
    /// Lookups (the invoke path), never blocked by a write in progress.
    reader: Mutex<Connection>,
    /// Code (by hex sha256) that a create or update is about to refer to: not to be collected.
    pins: Mutex<HashMap<String, usize>>,
    /// Functions read since their last change, so that an invoke does not query SQLite. Filled
    /// under this lock (held across the read); every write drops its function's entry after it
    /// commits, under the writer connection's lock.
    cache: Mutex<HashMap<String, FunctionConfig>>,
    /// Held open for its lock on `ember.lock`.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a connection leaves nothing half-done that SQLite did not roll back.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`: takes the data dir's lock, removes
    /// work a crash left in `code/`, and deletes code no function refers to.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let code_dir = data_dir.join("code");
        fs::create_dir_all(&code_dir).map_err(io_err(format!("create {}", code_dir.display())))?;
        let lock_path = data_dir.join("ember.lock");
        let lock_file = File::create(&lock_path).map_err(io_err(format!("open {}", lock_path.display())))?;
        if lock_file.try_lock().is_err() {
            return Err(StoreError::Locked(data_dir.to_path_buf()));
        }
        remove_temp_files(&code_dir)?;

        let db = data_dir.join("ember.db");
        let writer = Connection::open(&db)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(rusqlite::Error::InvalidQuery));
        }
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(10))?;
        writer.execute_batch(SCHEMA)?;
        // Data dirs from before SnapStart lack its column.
        let has_snap_start: bool = writer.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('functions') WHERE name = 'snap_start'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_snap_start {
            writer.execute_batch("ALTER TABLE functions ADD COLUMN snap_start INTEGER NOT NULL DEFAULT 0")?;
        }
        let reader = Connection::open_with_flags(
            &db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;

        let store = Store {
            dir: data_dir.to_path_buf(),
            code_dir,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            pins: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            _lock: lock_file,
        };
        store.collect_orphans()?;
        Ok(store)
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The uploaded zip of a function's code.
    pub fn code_zip(&self, function: &FunctionConfig) -> PathBuf {
        function.code_image.with_extension("zip")
    }

    /// One function, by name (on the invoke path: from the cache once read).
    pub fn get(&self, name: &str) -> Result<FunctionConfig, StoreError> {
        let mut cache = lock(&self.cache);
        if let Some(config) = cache.get(name) {
            return Ok(config.clone());
        }
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM functions WHERE name = ?1"))?;
        let config = stmt
            .query_row([name], |row| self.config_from_row(row))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(function_arn(name)))?;
        cache.insert(name.to_owned(), config.clone());
        Ok(config)
    }

    /// Forgets the cached copy of `name`; called with the writer connection held, after a commit.
    fn invalidate(&self, name: &str) {
        lock(&self.cache).remove(name);
    }

    /// Functions in name order after `marker` (the name that ended the previous page), at most
    /// `max_items` (capped at [`MAX_PAGE`]).
    pub fn list(&self, marker: Option<&str>, max_items: usize) -> Result<Page, StoreError> {
        let limit = max_items.clamp(1, MAX_PAGE);
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM functions WHERE name > ?1 ORDER BY name LIMIT ?2"))?;
        let mut functions = stmt
            .query_map(params![marker.unwrap_or(""), limit as i64 + 1], |row| self.config_from_row(row))?
            .collect::<Result<Vec<_>, _>>()?;
        let next_marker = if functions.len() > limit {
            functions.truncate(limit);
            functions.last().map(|f| f.name.clone())
        } else {
            None
        };
        Ok(Page { functions, next_marker })
    }

    /// Creates a function from its configuration and zip: stores the code (building its image
    /// unless the same zip is stored already) and the row, or nothing at all.
    pub fn create(&self, new: NewFunction, zip: &[u8]) -> Result<FunctionConfig, StoreError> {
        if self.exists(&new.name)? {
            return Err(StoreError::Exists(new.name));
        }
        let code = self.put_code(zip, &new.runtime)?;
        let config = FunctionConfig {
            arn: function_arn(&new.name),
            name: new.name,
            runtime: new.runtime,
            handler: new.handler,
            role: new.role,
            description: new.description,
            memory_mib: new.memory_mib,
            timeout_s: new.timeout_s,
            ephemeral_mib: new.ephemeral_mib,
            environment: new.environment,
            code_sha256: code.b64.clone(),
            code_size: code.size,
            code_image: self.image_path(&code.hex),
            revision_id: random_uuid(),
            last_modified: lambda_time(SystemTime::now()),
            version: LATEST.to_string(),
            snap_start: new.snap_start,
        };
        {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let inserted = tx.execute(
                &format!("INSERT INTO functions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
                params![
                    config.name,
                    config.runtime,
                    config.handler,
                    config.role,
                    config.description,
                    config.memory_mib,
                    config.timeout_s,
                    config.ephemeral_mib,
                    env_json(&config.environment),
                    code.hex,
                    config.code_sha256,
                    config.code_size as i64,
                    config.revision_id,
                    config.last_modified,
                    config.snap_start,
                ],
            );
            match inserted {
                Ok(_) => tx.commit()?,
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    return Err(StoreError::Exists(config.name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        drop(code);
        Ok(config)
    }

    /// Replaces a function's code. `revision_id`, when given, must be the current one.
    pub fn update_code(&self, name: &str, zip: &[u8], revision_id: Option<&str>) -> Result<FunctionConfig, StoreError> {
        let current = self.get(name)?;
        check_revision(&current, revision_id)?;
        let code = self.put_code(zip, &current.runtime)?;
        let (config, old_hex) = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let (mut config, old_hex) = self.read_for_update(&tx, name, revision_id)?;
            if config.runtime != current.runtime {
                codezip::check(zip, &config.runtime)?; // changed meanwhile: check against the new one
            }
            config.code_sha256 = code.b64.clone();
            config.code_size = code.size;
            config.code_image = self.image_path(&code.hex);
            config.revision_id = random_uuid();
            config.last_modified = lambda_time(SystemTime::now());
            tx.execute(
                "UPDATE functions SET code_hex = ?2, code_b64 = ?3, code_size = ?4, revision_id = ?5, \
                 last_modified = ?6 WHERE name = ?1",
                params![
                    name,
                    code.hex,
                    config.code_sha256,
                    config.code_size as i64,
                    config.revision_id,
                    config.last_modified
                ],
            )?;
            tx.commit()?;
            self.invalidate(name);
            (config, old_hex)
        };
        drop(code);
        self.collect(&old_hex)?;
        Ok(config)
    }

    /// Changes a function's configuration. `revision_id`, when given, must be the current one.
    /// Switching to [`codezip::PROVIDED_RUNTIME`] checks the stored zip for a `bootstrap`.
    pub fn update_config(
        &self,
        name: &str,
        patch: ConfigPatch,
        revision_id: Option<&str>,
    ) -> Result<FunctionConfig, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let (mut config, _) = self.read_for_update(&tx, name, revision_id)?;
        if let Some(runtime) = patch.runtime {
            if runtime != config.runtime && runtime == codezip::PROVIDED_RUNTIME {
                let path = self.code_zip(&config);
                let zip = fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
                codezip::check(&zip, &runtime)?;
            }
            config.runtime = runtime;
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
            ..
        } = patch;
        config.snap_start = snap_start.unwrap_or(config.snap_start);
        config.handler = handler.unwrap_or(config.handler);
        config.role = role.unwrap_or(config.role);
        config.description = description.unwrap_or(config.description);
        config.memory_mib = memory_mib.unwrap_or(config.memory_mib);
        config.timeout_s = timeout_s.unwrap_or(config.timeout_s);
        config.ephemeral_mib = ephemeral_mib.unwrap_or(config.ephemeral_mib);
        config.environment = environment.unwrap_or(config.environment);
        config.revision_id = random_uuid();
        config.last_modified = lambda_time(SystemTime::now());
        tx.execute(
            "UPDATE functions SET runtime = ?2, handler = ?3, role = ?4, description = ?5, memory_mib = ?6, \
             timeout_s = ?7, ephemeral_mib = ?8, environment = ?9, revision_id = ?10, last_modified = ?11, \
             snap_start = ?12 WHERE name = ?1",
            params![
                name,
                config.runtime,
                config.handler,
                config.role,
                config.description,
                config.memory_mib,
                config.timeout_s,
                config.ephemeral_mib,
                env_json(&config.environment),
                config.revision_id,
                config.last_modified,
                config.snap_start,
            ],
        )?;
        tx.commit()?;
        self.invalidate(name);
        Ok(config)
    }

    /// Records `function`'s provisioned concurrency (None: removes it).
    pub fn set_provisioned(&self, function: &str, requested: Option<u32>) -> Result<(), StoreError> {
        let conn = lock(&self.writer);
        match requested {
            Some(n) => conn.execute(
                "INSERT INTO provisioned (name, requested) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET requested = ?2",
                params![function, n],
            )?,
            None => conn.execute("DELETE FROM provisioned WHERE name = ?1", [function])?,
        };
        Ok(())
    }

    /// Every function's provisioned concurrency, by name.
    pub fn provisioned(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let conn = lock(&self.writer);
        let mut stmt = conn.prepare("SELECT name, requested FROM provisioned ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Deletes a function and the code no other function uses. Returns what it was.
    pub fn delete(&self, name: &str) -> Result<FunctionConfig, StoreError> {
        let (config, hex) = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let found = self.read_for_update(&tx, name, None)?;
            tx.execute("DELETE FROM provisioned WHERE name = ?1", [name])?;
            tx.execute("DELETE FROM functions WHERE name = ?1", [name])?;
            tx.commit()?;
            self.invalidate(name);
            found
        };
        self.collect(&hex)?;
        Ok(config)
    }

    fn exists(&self, name: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?;
        Ok(stmt.exists([name])?)
    }

    /// The current row (and its code's hex) inside a write transaction, with the revision check.
    fn read_for_update(
        &self,
        tx: &rusqlite::Transaction<'_>,
        name: &str,
        revision_id: Option<&str>,
    ) -> Result<(FunctionConfig, String), StoreError> {
        let found = tx
            .query_row(&format!("SELECT {COLUMNS} FROM functions WHERE name = ?1"), [name], |row| {
                Ok((self.config_from_row(row)?, row.get::<_, String>(9)?))
            })
            .optional()?;
        let (config, hex) = found.ok_or_else(|| StoreError::NotFound(function_arn(name)))?;
        check_revision(&config, revision_id)?;
        Ok((config, hex))
    }

    fn config_from_row(&self, row: &Row<'_>) -> rusqlite::Result<FunctionConfig> {
        let name: String = row.get(0)?;
        let env: String = row.get(8)?;
        let hex: String = row.get(9)?;
        Ok(FunctionConfig {
            arn: function_arn(&name),
            name,
            runtime: row.get(1)?,
            handler: row.get(2)?,
            role: row.get(3)?,
            description: row.get(4)?,
            memory_mib: row.get(5)?,
            timeout_s: row.get(6)?,
            ephemeral_mib: row.get(7)?,
            environment: serde_json::from_str(&env).unwrap_or_default(),
            code_sha256: row.get(10)?,
            code_size: row.get::<_, i64>(11)? as u64,
            code_image: self.image_path(&hex),
            revision_id: row.get(12)?,
            last_modified: row.get(13)?,
            version: LATEST.to_string(),
            snap_start: row.get(14)?,
        })
    }

    fn image_path(&self, hex: &str) -> PathBuf {
        self.code_dir.join(format!("{hex}.ext4"))
    }

    /// Stores a zip and its image unless they are stored already, pinned until the returned
    /// guard drops (after the row that refers to them is committed, or not).
    fn put_code(&self, zip: &[u8], runtime: &str) -> Result<PinnedCode<'_>, StoreError> {
        codezip::check(zip, runtime)?;
        let digest = Sha256::digest(zip);
        let code = PinnedCode {
            store: self,
            hex: to_hex(&digest),
            b64: base64::engine::general_purpose::STANDARD.encode(digest),
            size: zip.len() as u64,
        };
        *lock(&self.pins).entry(code.hex.clone()).or_insert(0) += 1;
        let image = self.image_path(&code.hex);
        let zip_path = image.with_extension("zip");
        if image.exists() && zip_path.exists() {
            return Ok(code);
        }
        let tmp = self.code_dir.join(format!("{TEMP_PREFIX}{}", random_uuid()));
        let (tmp_zip, tmp_image, staging) =
            (tmp.with_extension("zip"), tmp.with_extension("ext4"), tmp.with_extension("d"));
        let result = (|| {
            write_synced(&tmp_zip, zip)?;
            fs::create_dir(&staging).map_err(io_err("create staging dir"))?;
            codezip::build_image(zip, runtime, &staging, &tmp_image)?;
            File::open(&tmp_image).and_then(|f| f.sync_all()).map_err(io_err("sync code image"))?;
            fs::rename(&tmp_image, &image).map_err(io_err("rename code image"))?;
            fs::rename(&tmp_zip, &zip_path).map_err(io_err("rename code zip"))?;
            File::open(&self.code_dir).and_then(|d| d.sync_all()).map_err(io_err("sync code dir"))
        })();
        for leftover in [&tmp_zip, &tmp_image] {
            let _ = fs::remove_file(leftover);
        }
        let _ = remove_tree(&staging);
        result.map(|()| code)
    }

    /// Deletes code no function refers to and no write has pinned.
    fn collect(&self, hex: &str) -> Result<(), StoreError> {
        let pins = lock(&self.pins);
        self.collect_pinned(&pins, hex)
    }

    fn collect_pinned(&self, pins: &HashMap<String, usize>, hex: &str) -> Result<(), StoreError> {
        if pins.contains_key(hex) {
            return Ok(());
        }
        let used: bool = {
            let conn = lock(&self.writer);
            let mut stmt = conn.prepare_cached("SELECT 1 FROM functions WHERE code_hex = ?1")?;
            stmt.exists([hex])?
        };
        if !used {
            for ext in ["ext4", "zip"] {
                let path = self.code_dir.join(format!("{hex}.{ext}"));
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(StoreError::Io { what: format!("remove {}", path.display()), source: e })
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Deletes every blob no function refers to (what a crash between rename and commit left).
    fn collect_orphans(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.code_dir).map_err(io_err("read code dir"))?;
        let mut hexes: Vec<String> = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_err("read code dir"))?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".zip").or_else(|| name.strip_suffix(".ext4")) {
                if !hexes.iter().any(|h| h == hex) {
                    hexes.push(hex.to_string());
                }
            }
        }
        for hex in hexes {
            self.collect(&hex)?;
        }
        Ok(())
    }
}

/// Code stored by [`Store::put_code`], protected from collection while it lives.
struct PinnedCode<'a> {
    store: &'a Store,
    hex: String,
    b64: String,
    size: u64,
}

impl Drop for PinnedCode<'_> {
    fn drop(&mut self) {
        let mut pins = lock(&self.store.pins);
        let count = pins.get_mut(&self.hex).expect("pinned code is in pins");
        *count -= 1;
        if *count == 0 {
            pins.remove(&self.hex);
            // Nothing refers to it when the create that stored it failed: remove it.
            if let Err(e) = self.store.collect_pinned(&pins, &self.hex) {
                eprintln!("ember: store: cannot collect code {}: {e}", self.hex);
            }
        }
    }
}

fn check_revision(config: &FunctionConfig, revision_id: Option<&str>) -> Result<(), StoreError> {
    match revision_id {
        Some(rev) if rev != config.revision_id => Err(StoreError::RevisionMismatch),
        _ => Ok(()),
    }
}

fn env_json(env: &BTreeMap<String, String>) -> String {
    serde_json::to_string(env).expect("a string map serializes")
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io_err(format!("create {}", path.display())))?;
    file.write_all(data).and_then(|()| file.sync_all()).map_err(io_err(format!("write {}", path.display())))
}

fn remove_tree(path: &Path) -> io::Result<()> {
    // The staging tree may hold read-only directories: we are root, or made them owner-writable.
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_temp_files(code_dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(code_dir).map_err(io_err("read code dir"))? {
        let entry = entry.map_err(io_err("read code dir"))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err(format!("remove {}", path.display())))?;
    }
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random id shaped like a UUID (version 4): revision ids and request ids. Unique, cheap (no
/// system call), not secret.
pub fn random_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Every RandomState has fresh keys (seeded from the OS once per thread, then stepped).
    let state = std::collections::hash_map::RandomState::new();
    let hi = state.hash_one((n, 0u8)) & 0xffff_ffff_ffff_0fff | 0x4000;
    let lo = state.hash_one((n, 1u8)) & 0x3fff_ffff_ffff_ffff | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// A time as Lambda writes `LastModified`: `2026-11-22T08:30:00.000+0000` (UTC).
pub fn lambda_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::codezip::tests::{make_zip, temp_dir, Entry};
    use std::time::Duration;

    /// A function as the store would return it, for tests elsewhere.
    pub(crate) fn config_for(name: &str) -> FunctionConfig {
        FunctionConfig {
            name: name.into(),
            arn: function_arn(name),
            runtime: "python3.11".into(),
            handler: "handler.main".into(),
            role: String::new(),
            description: String::new(),
            memory_mib: 256,
            timeout_s: 3,
            ephemeral_mib: 512,
            environment: Default::default(),
            code_sha256: String::new(),
            code_size: 0,
            code_image: PathBuf::new(),
            revision_id: "r".into(),
            last_modified: String::new(),
            version: LATEST.into(),
            snap_start: false,
        }
    }

    pub(crate) fn new_function(name: &str) -> NewFunction {
        NewFunction {
            name: name.to_string(),
            runtime: "python3.11".to_string(),
            handler: "handler.echo".to_string(),
            role: "arn:aws:iam::000000000000:role/ember".to_string(),
            description: String::new(),
            memory_mib: 128,
            timeout_s: 3,
            ephemeral_mib: 512,
            environment: BTreeMap::from([("A".to_string(), "1".to_string())]),
            snap_start: false,
        }
    }

    pub(crate) fn python_zip(tag: &str) -> Vec<u8> {
        make_zip(&[Entry::File("handler.py", format!("def echo(e, c):\n    return e  # {tag}\n").as_bytes(), 0o644)])
    }

    fn blobs(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("code"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn hex_of(config: &FunctionConfig) -> String {
        config.code_image.file_stem().unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn time_format() {
        assert_eq!(lambda_time(UNIX_EPOCH), "1970-01-01T00:00:00.000+0000");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_336_200_123);
        assert_eq!(lambda_time(t), "2026-11-22T08:30:00.123+0000");
        assert_eq!(lambda_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000+0000");
    }

    #[test]
    fn uuids_are_unique_and_shaped() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn create_get_list_update_delete() {
        let dir = temp_dir("store");
        let store = Store::open(&dir).unwrap();
        let zip = python_zip("one");
        let created = store.create(new_function("fn-a"), &zip).unwrap();
        assert_eq!(created.arn, format!("arn:aws:lambda:{}:000000000000:function:fn-a", region()));
        assert_eq!(created.version, "$LATEST");
        assert_eq!(created.code_size, zip.len() as u64);
        let digest = Sha256::digest(&zip);
        assert_eq!(created.code_sha256, base64::engine::general_purpose::STANDARD.encode(digest));
        assert!(created.code_image.exists());
        assert!(store.code_zip(&created).exists());
        assert_eq!(store.get("fn-a").unwrap(), created);
        assert!(matches!(store.get("nope"), Err(StoreError::NotFound(arn)) if arn.ends_with(":function:nope")));
        assert!(matches!(store.create(new_function("fn-a"), &zip), Err(StoreError::Exists(_))));

        // The same zip for another function shares the blob.
        store.create(new_function("fn-b"), &zip).unwrap();
        store.create(new_function("fn-c"), &python_zip("three")).unwrap();
        assert_eq!(blobs(&dir).len(), 4);

        let page = store.list(None, 2).unwrap();
        assert_eq!(page.functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["fn-a", "fn-b"]);
        assert_eq!(page.next_marker.as_deref(), Some("fn-b"));
        let page = store.list(page.next_marker.as_deref(), 2).unwrap();
        assert_eq!(page.functions.len(), 1);
        assert_eq!(page.next_marker, None);

        let patch = ConfigPatch { memory_mib: Some(256), environment: Some(BTreeMap::new()), ..Default::default() };
        let updated = store.update_config("fn-a", patch.clone(), Some(&created.revision_id)).unwrap();
        assert_eq!(updated.memory_mib, 256);
        assert!(updated.environment.is_empty());
        assert_ne!(updated.revision_id, created.revision_id);
        assert_eq!(store.get("fn-a").unwrap(), updated);
        assert!(matches!(
            store.update_config("fn-a", patch, Some(&created.revision_id)),
            Err(StoreError::RevisionMismatch)
        ));

        // New code for fn-a: the old blob stays (fn-b uses it).
        let new_zip = python_zip("two");
        let recoded = store.update_code("fn-a", &new_zip, None).unwrap();
        assert_ne!(recoded.code_sha256, created.code_sha256);
        assert_eq!(recoded.memory_mib, 256);
        assert!(created.code_image.exists());
        assert_eq!(blobs(&dir).len(), 6);
        // fn-b moves too: the first blob is no longer used.
        store.update_code("fn-b", &new_zip, None).unwrap();
        assert!(!created.code_image.exists());
        assert_eq!(blobs(&dir).len(), 4);

        let gone = store.delete("fn-a").unwrap();
        assert_eq!(gone.name, "fn-a");
        assert!(recoded.code_image.exists(), "fn-b still uses it");
        store.delete("fn-b").unwrap();
        assert!(!recoded.code_image.exists());
        assert!(matches!(store.delete("fn-b"), Err(StoreError::NotFound(_))));
        assert_eq!(blobs(&dir).len(), 2);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_create_leaves_nothing() {
        let dir = temp_dir("store-fail");
        let store = Store::open(&dir).unwrap();
        assert!(matches!(store.create(new_function("bad"), b"not a zip"), Err(StoreError::Code(_))));
        let mut evil = new_function("evil");
        evil.runtime = codezip::PROVIDED_RUNTIME.to_string();
        assert!(matches!(store.create(evil, &python_zip("x")), Err(StoreError::Code(CodeError::NoBootstrap))));
        assert!(blobs(&dir).is_empty());
        assert!(store.list(None, 50).unwrap().functions.is_empty());

        // Losing a race for the name after the code was stored removes the new code...
        let shared = store.create(new_function("a"), &python_zip("shared")).unwrap();
        store.writer.lock().unwrap().execute("INSERT INTO functions SELECT 'b', runtime, handler, role, description, memory_mib, timeout_s, ephemeral_mib, environment, code_hex, code_b64, code_size, revision_id, last_modified, snap_start FROM functions WHERE name = 'a'", []).unwrap();
        let err = store.create(new_function("b"), &python_zip("new")).unwrap_err();
        assert!(matches!(err, StoreError::Exists(_)), "{err:?}");
        assert_eq!(blobs(&dir), [format!("{}.ext4", hex_of(&shared)), format!("{}.zip", hex_of(&shared))]);
        // ...but never code another function uses.
        assert!(matches!(store.create(new_function("a"), &python_zip("shared")), Err(StoreError::Exists(_))));
        assert!(shared.code_image.exists());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runtime_switch_checks_stored_code() {
        let dir = temp_dir("store-runtime");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("x")).unwrap();
        let patch = ConfigPatch { runtime: Some(codezip::PROVIDED_RUNTIME.into()), ..Default::default() };
        assert!(matches!(store.update_config("f", patch, None), Err(StoreError::Code(CodeError::NoBootstrap))));
        assert_eq!(store.get("f").unwrap().runtime, "python3.11");
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_agent_per_data_dir() {
        let dir = temp_dir("store-lock");
        let store = Store::open(&dir).unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::Locked(_))));
        drop(store);
        Store::open(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    const CRASH_DIR: &str = "EMBER_STORE_CRASH_DIR";

    /// The child of `survives_a_crash`: writes, leaves a temp file as a crash mid-create would,
    /// and dies without any cleanup.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR) else { return };
        let store = Store::open(Path::new(&dir)).unwrap();
        store.create(new_function("survivor"), &python_zip("s")).unwrap();
        store.create(new_function("doomed"), &python_zip("d")).unwrap();
        store.delete("doomed").unwrap();
        store.update_config("survivor", ConfigPatch { timeout_s: Some(42), ..Default::default() }, None).unwrap();
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
            .args(["agent::store::tests::crash_child", "--exact", "--test-threads=1", "--nocapture"])
            .env(CRASH_DIR, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        let store = Store::open(&dir).unwrap();
        let survivor = store.get("survivor").unwrap();
        assert_eq!(survivor.timeout_s, 42);
        assert!(survivor.code_image.exists());
        assert!(matches!(store.get("doomed"), Err(StoreError::NotFound(_))));
        assert_eq!(blobs(&dir), [format!("{}.ext4", hex_of(&survivor)), format!("{}.zip", hex_of(&survivor))]);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn snap_start_is_stored_and_old_data_dirs_gain_it() {
        let dir = temp_dir("store-snapstart");
        // A data dir from before SnapStart: the table without its column, one function.
        {
            let conn = Connection::open(dir.join("ember.db")).unwrap();
            conn.execute_batch(&SCHEMA.replace(",\n    snap_start    INTEGER NOT NULL DEFAULT 0", "")).unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO functions ({}) VALUES ('old', 'python3.11', 'h.x', 'r', '', 128, 3, 512, '{{}}', \
                          'ab', 'q', 1, 'rev', 't')",
                    COLUMNS.replace(", snap_start", "")
                ),
                [],
            )
            .unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert!(!store.get("old").unwrap().snap_start);
        let updated =
            store.update_config("old", ConfigPatch { snap_start: Some(true), ..Default::default() }, None).unwrap();
        assert!(updated.snap_start);
        let mut new = new_function("new");
        new.snap_start = true;
        store.create(new, &python_zip("x")).unwrap();
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert!(store.get("old").unwrap().snap_start && store.get("new").unwrap().snap_start);
    }
}
