//! Event source mappings as stored (`event_source_mappings`): from a queue to a function,
//! version or alias (`qualifier`, empty for the function itself).

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row};

use super::{function_not_found, lock, Page, Store, StoreError};

/// One event source mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `UUID`.
    pub uuid: String,
    /// The function.
    pub function: String,
    /// A version or alias, or empty for the function (`$LATEST`).
    pub qualifier: String,
    /// `EventSourceArn`: the queue's ARN.
    pub source_arn: String,
    /// `BatchSize`.
    pub batch_size: u32,
    /// `MaximumBatchingWindowInSeconds`.
    pub window_s: u32,
    /// `Enabled`.
    pub enabled: bool,
    /// `ScalingConfig.MaximumConcurrency`, if set.
    pub max_concurrency: Option<u32>,
    /// `FunctionResponseTypes` has `ReportBatchItemFailures`.
    pub report_failures: bool,
    /// When it was last written (Unix ms).
    pub last_modified_ms: u64,
}

const COLUMNS: &str =
    "uuid, function, qualifier, source_arn, batch_size, window_s, enabled, max_concurrency, report_failures, \
     last_modified_ms";

fn row(r: &Row<'_>) -> rusqlite::Result<Mapping> {
    Ok(Mapping {
        uuid: r.get(0)?,
        function: r.get(1)?,
        qualifier: r.get(2)?,
        source_arn: r.get(3)?,
        batch_size: r.get(4)?,
        window_s: r.get(5)?,
        enabled: r.get(6)?,
        max_concurrency: r.get(7)?,
        report_failures: r.get(8)?,
        last_modified_ms: r.get::<_, i64>(9)? as u64,
    })
}

fn mapping_not_found(uuid: &str) -> StoreError {
    StoreError::NotFound(format!("The resource you requested does not exist. (Service: Lambda, UUID: {uuid})"))
}

impl Store {
    /// Stores a new mapping, its function existing and without one from the same queue to
    /// the same function, version or alias (`Exists`, as Lambda refuses it).
    pub fn create_mapping(&self, m: &Mapping) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([&m.function])? {
            return Err(function_not_found(&m.function));
        }
        let twin = tx
            .prepare_cached(
                "SELECT uuid FROM event_source_mappings WHERE function = ?1 AND qualifier = ?2 AND source_arn = ?3",
            )?
            .query_row([&m.function, &m.qualifier, &m.source_arn], |r| r.get::<_, String>(0))
            .optional()?;
        if let Some(uuid) = twin {
            return Err(StoreError::Exists(format!(
                "An event source mapping with SQS arn (\" {} \") and function (\" {} \") already exists. Please \
                 update or delete the existing mapping with UUID {uuid}",
                m.source_arn, m.function
            )));
        }
        write(&tx, m, "INSERT")?;
        tx.commit()?;
        Ok(())
    }

    /// One mapping.
    pub fn mapping(&self, uuid: &str) -> Result<Mapping, StoreError> {
        let conn = lock(&self.reader);
        let found = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM event_source_mappings WHERE uuid = ?1"))?
            .query_row([uuid], row)
            .optional()?;
        found.ok_or_else(|| mapping_not_found(uuid))
    }

    /// Changes a mapping with `change` (which may refuse) in one transaction; the function it
    /// then names must exist.
    pub fn update_mapping<E: From<StoreError>>(
        &self,
        uuid: &str,
        change: impl FnOnce(&mut Mapping) -> Result<(), E>,
    ) -> Result<Mapping, E> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(StoreError::from)?;
        let found = tx
            .prepare_cached(&format!("SELECT {COLUMNS} FROM event_source_mappings WHERE uuid = ?1"))
            .and_then(|mut s| s.query_row([uuid], row).optional())
            .map_err(StoreError::from)?;
        let mut m = found.ok_or_else(|| mapping_not_found(uuid))?;
        change(&mut m)?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM functions WHERE name = ?1")
            .and_then(|mut s| s.exists([&m.function]))
            .map_err(StoreError::from)?;
        if !exists {
            return Err(function_not_found(&m.function).into());
        }
        write(&tx, &m, "INSERT OR REPLACE")?;
        tx.commit().map_err(StoreError::from)?;
        Ok(m)
    }

    /// Deletes a mapping; returns what it was.
    pub fn delete_mapping(&self, uuid: &str) -> Result<Mapping, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let found = tx
            .prepare_cached(&format!("SELECT {COLUMNS} FROM event_source_mappings WHERE uuid = ?1"))?
            .query_row([uuid], row)
            .optional()?;
        let m = found.ok_or_else(|| mapping_not_found(uuid))?;
        tx.execute("DELETE FROM event_source_mappings WHERE uuid = ?1", [uuid])?;
        tx.commit()?;
        Ok(m)
    }

    /// A page of mappings by UUID after `marker`, of one function (any qualifier) and one
    /// source when given.
    pub fn list_mappings(
        &self,
        function: Option<&str>,
        source_arn: Option<&str>,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<Mapping>>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM event_source_mappings WHERE uuid > ?1 AND (?2 IS NULL OR function = ?2) AND \
             (?3 IS NULL OR source_arn = ?3) ORDER BY uuid"
        ))?;
        let rows = stmt.query_map(params![marker.unwrap_or(""), function, source_arn], row)?;
        Page::collect(rows, max, |_, _| true, |m| m.uuid.clone())
    }

    /// Every mapping (for the consumers).
    pub fn all_mappings(&self) -> Result<Vec<Mapping>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM event_source_mappings ORDER BY uuid"))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn write(tx: &rusqlite::Transaction<'_>, m: &Mapping, verb: &str) -> Result<(), StoreError> {
    tx.execute(
        &format!("{verb} INTO event_source_mappings ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            m.uuid,
            m.function,
            m.qualifier,
            m.source_arn,
            m.batch_size,
            m.window_s,
            m.enabled,
            m.max_concurrency,
            m.report_failures,
            m.last_modified_ms as i64
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_function, python_zip, temp_dir};
    use super::*;

    fn mapping(uuid: &str, function: &str, queue: &str) -> Mapping {
        Mapping {
            uuid: uuid.into(),
            function: function.into(),
            qualifier: String::new(),
            source_arn: format!("arn:aws:sqs:us-east-1:000000000000:{queue}"),
            batch_size: 10,
            window_s: 0,
            enabled: true,
            max_concurrency: None,
            report_failures: false,
            last_modified_ms: 1,
        }
    }

    #[test]
    fn mappings_are_kept_listed_changed_and_go_with_their_function() {
        let dir = temp_dir("mappings");
        let store = Store::open(&dir).unwrap();
        assert!(matches!(store.create_mapping(&mapping("u1", "f", "q")), Err(StoreError::NotFound(_))));
        for f in ["f", "g"] {
            store.create(new_function(f), &python_zip(f), false).unwrap();
        }
        store.create_mapping(&mapping("u1", "f", "q")).unwrap();
        store.create_mapping(&mapping("u2", "f", "r")).unwrap();
        store.create_mapping(&mapping("u3", "g", "q")).unwrap();
        assert!(matches!(store.create_mapping(&mapping("u4", "g", "q")), Err(StoreError::Exists(_))));
        let uuids = |p: Page<Arc<Mapping>>| p.items.iter().map(|m| m.uuid.clone()).collect::<Vec<_>>();
        assert_eq!(uuids(store.list_mappings(Some("f"), None, None, 50).unwrap()), ["u1", "u2"]);
        let q = "arn:aws:sqs:us-east-1:000000000000:q";
        assert_eq!(uuids(store.list_mappings(None, Some(q), None, 50).unwrap()), ["u1", "u3"]);
        let page = store.list_mappings(None, None, None, 2).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("u2"));
        assert_eq!(uuids(store.list_mappings(None, None, Some("u2"), 2).unwrap()), ["u3"]);
        let changed = store
            .update_mapping::<StoreError>("u1", |m| {
                m.enabled = false;
                Ok(())
            })
            .unwrap();
        assert!(!changed.enabled);
        assert_eq!(store.mapping("u1").unwrap(), changed);
        // A change to a function that does not exist is refused whole.
        let refused = store.update_mapping::<StoreError>("u1", |m| {
            m.function = "nope".into();
            Ok(())
        });
        assert!(matches!(refused, Err(StoreError::NotFound(_))));
        assert_eq!(store.mapping("u1").unwrap().function, "f");
        assert_eq!(store.delete_mapping("u2").unwrap().uuid, "u2");
        assert!(matches!(store.mapping("u2"), Err(StoreError::NotFound(_))));
        store.delete_function("f").unwrap();
        assert_eq!(uuids(store.list_mappings(None, None, None, 50).unwrap()), ["u3"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
