//! The durable state of the agent: SQLite for metadata, files for code, under the data dir.
//!
//! ```text
//! <data dir>/ember.db               SQLite (WAL, synchronous=FULL: survives kill -9 and power loss)
//! <data dir>/ember.lock             held (flock) while an agent uses the data dir
//! <data dir>/code/<sha256>.zip      an uploaded package (function code or a layer), by the sha256 of its bytes
//! <data dir>/code/<sha256>.ext4     the read-only code image built from a function's zip (/var/task)
//! <data dir>/code/opt-<hash>.ext4   a function's layers, merged in order into one image (/opt)
//! <data dir>/code/.tmp-*            work in progress: removed on open, so a crash leaves none
//! ```
//!
//! The schema has a version (`PRAGMA user_version`); [`migrate`] brings any older data dir up to
//! date when the store opens, in one transaction. Tables, one file each for their operations:
//! `functions` and `versions` ([`functions`]: every version's frozen configuration, `$LATEST`
//! included, and per-function settings: reserved concurrency, tags, the next version number),
//! `aliases` ([`aliases`]), `layers` and `layer_names` ([`layers`]), `provisioned`
//! ([`concurrency`]), `async_events` and `event_invoke_configs` ([`queue`]), `function_urls`
//! ([`urls`]), `policy_statements` ([`policy`]), `schedules` ([`schedules`]); blobs are
//! [`code`]'s.
//!
//! Writes are all-or-nothing. Blobs are written under temporary names, fsynced and renamed into
//! place before the row that refers to them is committed; a blob that no row refers to is
//! deleted (after a failed create, an update or a delete, and on open for what a crash left),
//! but never while a write is between storing it and committing its row (it is *pinned*).
//! Lock order: `pins` before `writer` before `cache`; `reader` alone.
//!
//! Reads on the invoke path come from an in-memory cache of versions and aliases, filled from
//! the reader connection (WAL lets it read while a write commits); every write to a function
//! drops that function's entries after it commits, under the writer's lock. Nothing here is
//! async: callers run writes on blocking threads.

pub mod aliases;
pub mod code;
pub mod concurrency;
pub mod functions;
pub mod layers;
pub mod mappings;
pub mod migrate;
pub mod outbox;
pub mod policy;
pub mod queue;
pub mod schedules;
pub mod urls;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use super::codezip::CodeError;
use super::ids::{self, Version};

pub use aliases::{Alias, AliasPatch, NewAlias};
pub use functions::{
    ConfigPatch, FunctionConfig, FunctionMeta, ImageConfig, ImageFunction, NewFunction, State, IMAGE_LAYERS,
};
pub use layers::{LayerRef, LayerVersion, NewLayerVersion};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such function, version, alias or layer version (the message says which).
    #[error("{0}")]
    NotFound(String),
    /// It exists already (the message says what).
    #[error("{0}")]
    Exists(String),
    /// The caller's `RevisionId` is not the current one.
    #[error(
        "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to \
         retrieve the latest Revision Id"
    )]
    RevisionMismatch,
    /// A request that contradicts what is stored (checked in the write's transaction).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with another resource (an alias on a version being deleted).
    #[error("{0}")]
    Conflict(String),
    /// The code was refused or could not be built.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// Another agent holds the data dir.
    #[error("{0} is in use by another agent")]
    Locked(PathBuf),
    /// The data dir was written by a newer Ember.
    #[error("the data dir's schema is version {found}; this agent knows versions up to {known}")]
    TooNew {
        /// The data dir's.
        found: u32,
        /// Ours.
        known: u32,
    },
    /// A migration could not be applied (nothing was changed).
    #[error("migrating the data dir to schema {to}: {why}")]
    Migration {
        /// The version it was migrating to.
        to: u32,
        /// Why it failed.
        why: String,
    },
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

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// What a function's cache holds.
#[derive(Default)]
struct FunctionCache {
    versions: HashMap<Version, Arc<FunctionConfig>>,
    aliases: HashMap<String, Arc<Alias>>,
}

/// Function metadata and code under one data dir.
pub struct Store {
    dir: PathBuf,
    code_dir: PathBuf,
    /// Every write goes through this connection.
    writer: Mutex<Connection>,
    /// Lookups (the invoke path), never blocked by a write in progress.
    reader: Mutex<Connection>,
    /// Blobs (by file stem) that a write is about to refer to: not to be collected.
    pins: Mutex<HashMap<String, usize>>,
    /// Versions and aliases read since their function's last change, by function name.
    cache: Mutex<HashMap<String, FunctionCache>>,
    /// What the migrations applied at open had to say (for the agent's log).
    notes: Vec<String>,
    /// Held open for its lock on `ember.lock`.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// How often [`Store::open`] tries the data dir's lock, 50 ms apart, before calling it held.
const LOCK_TRIES: u32 = 20;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a connection leaves nothing half-done that SQLite did not roll back.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`: takes the data dir's lock,
    /// migrates the schema, removes work a crash left in `code/` and deletes blobs nothing
    /// refers to.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let code_dir = data_dir.join("code");
        fs::create_dir_all(&code_dir).map_err(io_err(format!("create {}", code_dir.display())))?;
        let lock_path = data_dir.join("ember.lock");
        let lock_file = File::create(&lock_path).map_err(io_err(format!("open {}", lock_path.display())))?;
        // The lock belongs to the open file, and a process forked from the one that held it keeps
        // a copy until it execs or exits: a holder that has just let go may still be seen briefly.
        let mut tries = 0;
        while lock_file.try_lock().is_err() {
            tries += 1;
            if tries == LOCK_TRIES {
                return Err(StoreError::Locked(data_dir.to_path_buf()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        code::remove_temp_files(&code_dir)?;

        let db = data_dir.join("ember.db");
        let mut writer = Connection::open(&db)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(rusqlite::Error::InvalidQuery));
        }
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(10))?;
        let notes = migrate::run(&mut writer, &code_dir)?;
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
            notes,
            _lock: lock_file,
        };
        store.collect_orphans()?;
        Ok(store)
    }

    /// What the migrations applied when the store opened did that an operator should know
    /// (one line each).
    pub fn migration_notes(&self) -> &[String] {
        &self.notes
    }

    /// Forgets the cached versions and aliases of `function`; called with the writer
    /// connection held, after a commit.
    fn invalidate(&self, function: &str) {
        lock(&self.cache).remove(function);
    }
}

/// One page of a list.
#[derive(Debug, Clone, Default)]
pub struct Page<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// The marker of the next page, if there is one.
    pub next_marker: Option<String>,
}

impl<T> Page<Arc<T>> {
    /// The page of `rows` that `keep` lets through (it sees what was kept before): at most
    /// `limit` items, and, if there is one more, the marker of the next page, made by `marker`
    /// from the page's last item.
    fn collect(
        rows: impl Iterator<Item = rusqlite::Result<T>>,
        limit: usize,
        mut keep: impl FnMut(&[Arc<T>], &T) -> bool,
        marker: impl Fn(&T) -> String,
    ) -> Result<Self, StoreError> {
        let mut items = Vec::new();
        for row in rows {
            let item = row?;
            if keep(&items, &item) {
                items.push(Arc::new(item));
                if items.len() > limit {
                    break;
                }
            }
        }
        let next_marker = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|i| marker(i))
        } else {
            None
        };
        Ok(Page { items, next_marker })
    }
}

/// Tables whose rows belong to one qualifier of a function (their `function` and `qualifier`
/// columns): deleted with that version or alias, and all of a function's with it.
const QUALIFIED_TABLES: [&str; 6] = [
    "provisioned",
    "async_events",
    "event_invoke_configs",
    "function_urls",
    "policy_statements",
    "event_source_mappings",
];

/// Deletes the rows of [`QUALIFIED_TABLES`] of one qualifier (`None`: all of the function's),
/// inside the transaction that deletes it.
fn delete_owned(tx: &rusqlite::Transaction<'_>, function: &str, qualifier: Option<&str>) -> Result<(), StoreError> {
    for table in QUALIFIED_TABLES {
        match qualifier {
            None => tx.execute(&format!("DELETE FROM {table} WHERE function = ?1"), [function])?,
            Some(q) => {
                tx.execute(&format!("DELETE FROM {table} WHERE function = ?1 AND qualifier = ?2"), [function, q])?
            }
        };
    }
    Ok(())
}

/// The JSON of a string map, as stored.
fn map_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).expect("a string map serializes")
}

/// A stored JSON value, or its type's default if it does not parse (it always does: only this
/// module writes it).
fn from_json<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_default()
}

/// Checks a `RevisionId` precondition.
fn check_revision(current: &str, given: Option<&str>) -> Result<(), StoreError> {
    match given {
        Some(rev) if rev != current => Err(StoreError::RevisionMismatch),
        _ => Ok(()),
    }
}

/// 404 text for a function.
fn function_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("Function not found: {}", ids::function_arn(name)))
}

/// 404 text for one version of a function.
fn version_not_found(name: &str, version: Version) -> StoreError {
    StoreError::NotFound(format!("Function not found: {}", ids::qualified_arn(name, version)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::agent::codezip::tests::{make_zip, temp_dir, Entry};

    /// A function to create, for tests here and elsewhere.
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
            dead_letter: None,
            layers: Vec::new(),
            tags: BTreeMap::new(),
        }
    }

    /// A python zip whose content differs by `tag`.
    pub(crate) fn python_zip(tag: &str) -> Vec<u8> {
        make_zip(&[Entry::File("handler.py", format!("def echo(e, c):\n    return e  # {tag}\n").as_bytes(), 0o644)])
    }

    /// A configuration as the store would return it, for tests elsewhere.
    pub(crate) fn config_for(name: &str) -> FunctionConfig {
        let new = NewFunction {
            handler: "handler.main".into(),
            role: String::new(),
            memory_mib: 256,
            environment: BTreeMap::new(),
            ..new_function(name)
        };
        FunctionConfig { revision_id: "r".into(), last_modified: String::new(), ..functions::latest_of(new) }
    }

    /// The blob files in a data dir, sorted.
    pub(crate) fn blobs(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("code"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
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
}
