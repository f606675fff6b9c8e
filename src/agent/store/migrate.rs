//! The schema's versions and the migrations between them, applied when the store opens, all
//! in one transaction: a data dir is either brought fully up to date or left as it was.
//!
//! `PRAGMA user_version` holds the schema version. Data dirs written before it was kept are
//! version 0 (whatever the first agents made of them); migration 1 brings those, and empty
//! databases, to the last schema that had only `$LATEST`; migration 2 adds versions, aliases,
//! layers, tags and reserved concurrency; migration 3 the asynchronous event queue, event
//! invoke configs, function URLs, resource-based policies and schedules; migration 4 the message
//! broker's outbox, event source mappings and each version's dead-letter queue; migration 5
//! container-image functions. A migration may
//! leave notes for the agent's log, for changes of behaviour an operator should know about.

use std::path::Path;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::StoreError;
use crate::agent::codezip;
use crate::agent::ids::{self, random_uuid};

/// The schema version this code writes.
pub const CURRENT: u32 = 5;

/// One step: what it does and how.
struct Migration {
    to: u32,
    apply: fn(&Transaction<'_>, &Path, &mut Vec<String>) -> Result<(), StoreError>,
}

const MIGRATIONS: [Migration; 5] = [
    Migration { to: 1, apply: to_1 },
    Migration { to: 2, apply: to_2 },
    Migration { to: 3, apply: to_3 },
    Migration { to: 4, apply: to_4 },
    Migration { to: 5, apply: to_5 },
];

/// Brings the database up to [`CURRENT`]; `code_dir` holds the blobs a migration may read.
/// Returns the migrations' notes.
pub fn run(conn: &mut Connection, code_dir: &Path) -> Result<Vec<String>, StoreError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > CURRENT {
        return Err(StoreError::TooNew { found, known: CURRENT });
    }
    let mut notes = Vec::new();
    if found == CURRENT {
        return Ok(notes);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for m in MIGRATIONS.iter().filter(|m| m.to > found) {
        (m.apply)(&tx, code_dir, &mut notes).map_err(|e| StoreError::Migration { to: m.to, why: e.to_string() })?;
    }
    tx.pragma_update(None, "user_version", CURRENT)?;
    tx.commit()?;
    Ok(notes)
}

/// The schema of the agents before versions (what they created on open), kept as it was: it
/// is what migration 2 starts from (and what tests build old data dirs with).
pub const SCHEMA_1: &str = "
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

/// Version 1: the `$LATEST`-only schema. Data dirs from before SnapStart lack its column.
fn to_1(tx: &Transaction<'_>, _code_dir: &Path, _notes: &mut Vec<String>) -> Result<(), StoreError> {
    tx.execute_batch(SCHEMA_1)?;
    let has_snap_start: bool =
        tx.query_row("SELECT COUNT(*) FROM pragma_table_info('functions') WHERE name = 'snap_start'", [], |r| {
            r.get::<_, i64>(0).map(|n| n > 0)
        })?;
    if !has_snap_start {
        tx.execute_batch("ALTER TABLE functions ADD COLUMN snap_start INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// The tables of version 2.
const SCHEMA_2: &str = "
CREATE TABLE functions (
    name              TEXT PRIMARY KEY NOT NULL,
    next_version      INTEGER NOT NULL,
    reserved          INTEGER,
    tags              TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE versions (
    function          TEXT NOT NULL,
    version           INTEGER NOT NULL,
    runtime           TEXT NOT NULL,
    handler           TEXT NOT NULL,
    role              TEXT NOT NULL,
    description       TEXT NOT NULL,
    memory_mib        INTEGER NOT NULL,
    timeout_s         INTEGER NOT NULL,
    ephemeral_mib     INTEGER NOT NULL,
    environment       TEXT NOT NULL,
    code_hex          TEXT NOT NULL,
    code_b64          TEXT NOT NULL,
    code_size         INTEGER NOT NULL,
    code_unzipped     INTEGER NOT NULL,
    layers            TEXT NOT NULL,
    opt_hex           TEXT NOT NULL,
    revision_id       TEXT NOT NULL,
    last_modified     TEXT NOT NULL,
    snap_start        INTEGER NOT NULL,
    state             TEXT NOT NULL,
    state_reason      TEXT NOT NULL,
    state_reason_code TEXT NOT NULL,
    PRIMARY KEY (function, version)
) WITHOUT ROWID;
CREATE INDEX versions_code ON versions (code_hex);
CREATE INDEX versions_opt ON versions (opt_hex);
CREATE TABLE aliases (
    function          TEXT NOT NULL,
    name              TEXT NOT NULL,
    version           INTEGER NOT NULL,
    weights           TEXT NOT NULL,
    description       TEXT NOT NULL,
    revision_id       TEXT NOT NULL,
    PRIMARY KEY (function, name)
) WITHOUT ROWID;
CREATE TABLE layer_names (
    name              TEXT PRIMARY KEY NOT NULL,
    next_version      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE layers (
    name              TEXT NOT NULL,
    version           INTEGER NOT NULL,
    hex               TEXT NOT NULL,
    code_b64          TEXT NOT NULL,
    code_size         INTEGER NOT NULL,
    unzipped          INTEGER NOT NULL,
    description       TEXT NOT NULL,
    license           TEXT NOT NULL,
    runtimes          TEXT NOT NULL,
    architectures     TEXT NOT NULL,
    created           TEXT NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE INDEX layers_hex ON layers (hex);
CREATE TABLE provisioned (
    function          TEXT NOT NULL,
    qualifier         TEXT NOT NULL,
    requested         INTEGER NOT NULL,
    last_modified     TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
) WITHOUT ROWID;
";

/// Version 2: versions, aliases, layers, tags, reserved concurrency. Every function becomes
/// its `$LATEST` version (with its code's unzipped size, read from its zip). Provisioned
/// concurrency on `$LATEST`, which Lambda does not allow, moves to a version published from
/// `$LATEST` for it (a note says so); SnapStart on `$LATEST` now applies to published
/// versions only (a note says so).
fn to_2(tx: &Transaction<'_>, code_dir: &Path, notes: &mut Vec<String>) -> Result<(), StoreError> {
    tx.execute_batch(
        "ALTER TABLE functions RENAME TO functions_1;
         ALTER TABLE provisioned RENAME TO provisioned_1;
         DROP INDEX IF EXISTS functions_code;",
    )?;
    tx.execute_batch(SCHEMA_2)?;
    let old: Vec<(String, String, String, bool)> = {
        let mut stmt = tx.prepare("SELECT name, code_hex, runtime, snap_start FROM functions_1 ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (name, hex, _runtime, snap_start) in &old {
        let zip_path = code_dir.join(format!("{hex}.zip"));
        let zip = std::fs::read(&zip_path).map_err(super::io_err(format!("read {}", zip_path.display())))?;
        let unzipped = codezip::check(&zip, "")?.declared_bytes;
        tx.execute("INSERT INTO functions (name, next_version, reserved, tags) VALUES (?1, 1, NULL, '{}')", [name])?;
        tx.execute(
            "INSERT INTO versions (function, version, runtime, handler, role, description, memory_mib, timeout_s, \
             ephemeral_mib, environment, code_hex, code_b64, code_size, code_unzipped, layers, opt_hex, revision_id, \
             last_modified, snap_start, state, state_reason, state_reason_code) \
             SELECT name, 0, runtime, handler, role, description, memory_mib, timeout_s, ephemeral_mib, environment, \
             code_hex, code_b64, code_size, ?2, '[]', '', revision_id, last_modified, snap_start, 'Active', '', '' \
             FROM functions_1 WHERE name = ?1",
            params![name, unzipped as i64],
        )?;
        if *snap_start {
            notes.push(format!(
                "{name}: SnapStart now applies to its published versions, as on Lambda; its $LATEST boots"
            ));
        }
    }
    let provisioned: Vec<(String, u32)> = {
        let mut stmt = tx.prepare("SELECT name, requested FROM provisioned_1 ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (name, requested) in provisioned {
        let Some((_, _, _, snap_start)) = old.iter().find(|(n, ..)| *n == name) else { continue };
        let state = if *snap_start { "Pending" } else { "Active" };
        tx.execute(
            "INSERT INTO versions (function, version, runtime, handler, role, description, memory_mib, timeout_s, \
             ephemeral_mib, environment, code_hex, code_b64, code_size, code_unzipped, layers, opt_hex, revision_id, \
             last_modified, snap_start, state, state_reason, state_reason_code) \
             SELECT function, 1, runtime, handler, role, description, memory_mib, timeout_s, ephemeral_mib, \
             environment, code_hex, code_b64, code_size, code_unzipped, layers, opt_hex, ?2, ?3, snap_start, ?4, '', \
             '' FROM versions WHERE function = ?1 AND version = 0",
            params![name, random_uuid(), ids::now(), state],
        )?;
        tx.execute("UPDATE functions SET next_version = 2 WHERE name = ?1", [&name])?;
        tx.execute(
            "INSERT INTO provisioned (function, qualifier, requested, last_modified) VALUES (?1, '1', ?2, ?3)",
            params![name, requested, ids::now()],
        )?;
        notes.push(format!(
            "{name}: its provisioned concurrency ({requested}) was on $LATEST, which Lambda does not allow; version 1 \
             was published from $LATEST and the {requested} instances are provisioned for it: invoke {name}:1 (or an \
             alias of it) to use them"
        ));
    }
    tx.execute_batch("DROP TABLE functions_1; DROP TABLE provisioned_1;")?;
    Ok(())
}

/// The tables version 3 adds.
const SCHEMA_3: &str = "
CREATE TABLE async_events (
    seq               INTEGER PRIMARY KEY,
    request_id        TEXT NOT NULL,
    function          TEXT NOT NULL,
    qualifier         TEXT,
    payload           BLOB NOT NULL,
    client_context    TEXT,
    accepted_ms       INTEGER NOT NULL,
    due_ms            INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    throttles         INTEGER NOT NULL,
    last_response     BLOB,
    last_error        TEXT,
    last_version      TEXT
);
CREATE TABLE event_invoke_configs (
    function          TEXT NOT NULL,
    qualifier         TEXT NOT NULL,
    max_retries       INTEGER,
    max_age_s         INTEGER,
    on_success        TEXT,
    on_failure        TEXT,
    last_modified_ms  INTEGER NOT NULL,
    PRIMARY KEY (function, qualifier)
) WITHOUT ROWID;
CREATE TABLE function_urls (
    function          TEXT NOT NULL,
    qualifier         TEXT NOT NULL,
    url_id            TEXT NOT NULL UNIQUE,
    auth_type         TEXT NOT NULL,
    cors              TEXT NOT NULL,
    invoke_mode       TEXT NOT NULL,
    created           TEXT NOT NULL,
    last_modified     TEXT NOT NULL,
    PRIMARY KEY (function, qualifier)
) WITHOUT ROWID;
CREATE TABLE policy_statements (
    function          TEXT NOT NULL,
    qualifier         TEXT NOT NULL,
    sid               TEXT NOT NULL,
    statement         TEXT NOT NULL,
    PRIMARY KEY (function, qualifier, sid)
) WITHOUT ROWID;
CREATE TABLE schedules (
    name              TEXT PRIMARY KEY NOT NULL,
    grp               TEXT NOT NULL,
    expression        TEXT NOT NULL,
    timezone          TEXT,
    target            TEXT NOT NULL,
    flexible          TEXT NOT NULL,
    state             TEXT NOT NULL,
    start_ms          INTEGER,
    end_ms            INTEGER,
    description       TEXT NOT NULL,
    after_completion  TEXT NOT NULL,
    client_token      TEXT,
    created_ms        INTEGER NOT NULL,
    modified_ms       INTEGER NOT NULL,
    next_ms           INTEGER
) WITHOUT ROWID;
";

/// Version 3: the asynchronous event queue, event invoke configs, function URLs,
/// resource-based policies and schedules (new tables only).
fn to_3(tx: &Transaction<'_>, _code_dir: &Path, _notes: &mut Vec<String>) -> Result<(), StoreError> {
    tx.execute_batch(SCHEMA_3)?;
    Ok(())
}

/// What version 4 adds: messages owed to the broker (kept until it confirms them), event
/// source mappings, and each version's `DeadLetterConfig.TargetArn` ('' for none).
const SCHEMA_4: &str = "
CREATE TABLE outbox (
    seq               INTEGER PRIMARY KEY,
    queue             TEXT NOT NULL,
    message_id        TEXT NOT NULL,
    body              BLOB NOT NULL,
    headers           TEXT NOT NULL,
    created_ms        INTEGER NOT NULL
);
CREATE TABLE event_source_mappings (
    uuid              TEXT PRIMARY KEY NOT NULL,
    function          TEXT NOT NULL,
    qualifier         TEXT NOT NULL,
    source_arn        TEXT NOT NULL,
    batch_size        INTEGER NOT NULL,
    window_s          INTEGER NOT NULL,
    enabled           INTEGER NOT NULL,
    max_concurrency   INTEGER,
    report_failures   INTEGER NOT NULL,
    last_modified_ms  INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE versions ADD COLUMN dead_letter TEXT NOT NULL DEFAULT '';
";

/// Version 4: the broker's outbox, event source mappings, dead-letter queues.
fn to_4(tx: &Transaction<'_>, _code_dir: &Path, _notes: &mut Vec<String>) -> Result<(), StoreError> {
    tx.execute_batch(SCHEMA_4)?;
    Ok(())
}

/// Migration 5: container-image functions (a version's image, as JSON; empty for a zip's).
fn to_5(tx: &Transaction<'_>, _code_dir: &Path, _notes: &mut Vec<String>) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE versions ADD COLUMN image TEXT NOT NULL DEFAULT '';")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blobs, python_zip, temp_dir};
    use super::super::Store;
    use super::*;
    use crate::agent::ids::Version;
    use crate::agent::store::State;
    use sha2::Digest;
    use std::fs;

    /// A data dir as the agents before versions wrote it: `SCHEMA_1` (with or without the
    /// SnapStart column), functions with their code blobs, and provisioned concurrency.
    fn old_data_dir(tag: &str, with_snap_start: bool) -> (std::path::PathBuf, Vec<u8>) {
        let dir = temp_dir(tag);
        let code = dir.join("code");
        fs::create_dir_all(&code).unwrap();
        let zip = python_zip("old");
        let hex: String = sha2::Sha256::digest(&zip).iter().map(|b| format!("{b:02x}")).collect();
        let b64 = crate::agent::store::code::code_sha256(&zip);
        fs::write(code.join(format!("{hex}.zip")), &zip).unwrap();
        fs::write(code.join(format!("{hex}.ext4")), b"an image").unwrap();
        let conn = Connection::open(dir.join("ember.db")).unwrap();
        let schema = if with_snap_start {
            SCHEMA_1.to_owned()
        } else {
            SCHEMA_1.replace(",\n    snap_start    INTEGER NOT NULL DEFAULT 0", "")
        };
        conn.execute_batch(&schema).unwrap();
        let snap = if with_snap_start { ", snap_start" } else { "" };
        for (name, snap_start) in [("plain", 0), ("fast", 1)] {
            let value = if with_snap_start { format!(", {snap_start}") } else { String::new() };
            conn.execute(
                &format!(
                    "INSERT INTO functions (name, runtime, handler, role, description, memory_mib, timeout_s, \
                     ephemeral_mib, environment, code_hex, code_b64, code_size, revision_id, last_modified{snap}) \
                     VALUES ('{name}', 'python3.11', 'handler.echo', 'arn:aws:iam::000000000000:role/r', 'd', 256, \
                     7, 1024, '{{\"K\":\"v\"}}', '{hex}', '{b64}', {}, 'rev-{name}', '2026-11-30T10:00:00.000+0000'\
                     {value})",
                    zip.len()
                ),
                [],
            )
            .unwrap();
        }
        conn.execute("INSERT INTO provisioned (name, requested) VALUES ('fast', 2)", []).unwrap();
        (dir, zip)
    }

    #[test]
    fn a_data_dir_from_before_versions_opens_without_loss() {
        let (dir, zip) = old_data_dir("migrate-2", true);
        let blobs_before = blobs(&dir);
        let store = Store::open(&dir).unwrap();
        assert_eq!(blobs(&dir), blobs_before, "the code is kept");

        let plain = store.get("plain", Version::LATEST).unwrap();
        assert_eq!((plain.memory_mib, plain.timeout_s, plain.ephemeral_mib), (256, 7, 1024));
        assert_eq!(plain.environment.get("K").map(String::as_str), Some("v"));
        assert_eq!((plain.revision_id.as_str(), plain.description.as_str()), ("rev-plain", "d"));
        assert_eq!(plain.code_size, zip.len() as u64);
        assert_eq!(plain.code_unzipped, codezip::check(&zip, "").unwrap().declared_bytes);
        assert!(plain.code_image.exists() && plain.layers.is_empty() && plain.opt_image.is_none());
        assert_eq!(plain.state, State::Active);
        assert_eq!(store.meta("plain").unwrap().next_version, 1);

        // Provisioned concurrency on $LATEST moved to a version published for it.
        let fast = store.get("fast", Version::LATEST).unwrap();
        assert!(fast.snap_start);
        let v1 = store.get("fast", Version::published(1)).unwrap();
        assert_eq!(v1.code_sha256, fast.code_sha256);
        assert_eq!(v1.state, State::Pending, "a SnapStart version waits for its snapshot");
        assert_eq!(store.meta("fast").unwrap().next_version, 2);
        let settings = store.provisioned().unwrap();
        assert_eq!(settings.len(), 1);
        assert_eq!(
            (settings[0].function.as_str(), settings[0].qualifier.as_str(), settings[0].requested),
            ("fast", "1", 2)
        );
        let notes = store.migration_notes().join("\n");
        assert!(notes.contains("fast: its provisioned concurrency (2) was on $LATEST"), "{notes}");
        assert!(notes.contains("fast: SnapStart now applies to its published versions"), "{notes}");
        assert_eq!(store.pending_versions().unwrap().len(), 1);
        drop(store);

        // Opened again: nothing more to migrate, nothing said.
        let store = Store::open(&dir).unwrap();
        assert!(store.migration_notes().is_empty());
        assert_eq!(store.get("plain", Version::LATEST).unwrap().revision_id, "rev-plain");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_data_dir_from_before_snap_start_opens_too() {
        let (dir, _) = old_data_dir("migrate-1", false);
        let store = Store::open(&dir).unwrap();
        assert!(!store.get("fast", Version::LATEST).unwrap().snap_start);
        assert_eq!(store.get("fast", Version::published(1)).unwrap().state, State::Active);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let (dir, _) = old_data_dir("migrate-fail", true);
        // A zip the migration must read is gone: it fails, and the old schema is intact.
        for entry in fs::read_dir(dir.join("code")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "zip") {
                fs::remove_file(path).unwrap();
            }
        }
        let err = Store::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Migration { to: 2, .. }), "{err}");
        let conn = Connection::open(dir.join("ember.db")).unwrap();
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        let old_rows: i64 =
            conn.query_row("SELECT COUNT(*) FROM functions WHERE runtime = 'python3.11'", [], |r| r.get(0)).unwrap();
        assert_eq!((version, old_rows), (0, 2));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = temp_dir("migrate-new");
        fs::create_dir_all(&dir).unwrap();
        Connection::open(dir.join("ember.db")).unwrap().pragma_update(None, "user_version", CURRENT + 1).unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::TooNew { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
