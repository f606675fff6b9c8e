//! Schedules as stored (`schedules`): EventBridge Scheduler's schedule, with the time of its
//! next run. A run is one transaction: the target's event goes into `async_events` and the
//! schedule moves to its following run (or is deleted after its last one, with
//! `ActionAfterCompletion` `DELETE`), so that a run is never made twice, crash or not
//! ([`Store::fire_schedule`], through the queue's writer).

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::queue::{insert_event, NewEvent, Queued};
use super::{lock, Page, Store, StoreError};

/// One schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Its name (unique in its group).
    pub name: String,
    /// `default`.
    pub group: String,
    /// `rate(...)`, `cron(...)` or `at(...)`.
    pub expression: String,
    /// `ScheduleExpressionTimezone`, if given.
    pub timezone: Option<String>,
    /// `Target`, as given (JSON).
    pub target: serde_json::Value,
    /// `FlexibleTimeWindow`, as given (JSON).
    pub flexible: serde_json::Value,
    /// `ENABLED` or `DISABLED`.
    pub state: String,
    /// `StartDate`, Unix ms.
    pub start_ms: Option<u64>,
    /// `EndDate`, Unix ms.
    pub end_ms: Option<u64>,
    /// `Description`.
    pub description: String,
    /// `ActionAfterCompletion`: `NONE` or `DELETE`.
    pub after_completion: String,
    /// The `ClientToken` it was created with (a retried create with it succeeds).
    pub client_token: Option<String>,
    /// `CreationDate`, Unix ms.
    pub created_ms: u64,
    /// `LastModificationDate`, Unix ms.
    pub modified_ms: u64,
    /// When it runs next (Unix ms); `None` when it never will again.
    pub next_ms: Option<u64>,
}

const COLUMNS: &str = "name, grp, expression, timezone, target, flexible, state, start_ms, end_ms, description, \
                       after_completion, client_token, created_ms, modified_ms, next_ms";

fn ms(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn row(r: &Row<'_>) -> rusqlite::Result<Schedule> {
    Ok(Schedule {
        name: r.get(0)?,
        group: r.get(1)?,
        expression: r.get(2)?,
        timezone: r.get(3)?,
        target: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        flexible: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
        state: r.get(6)?,
        start_ms: ms(r.get(7)?),
        end_ms: ms(r.get(8)?),
        description: r.get(9)?,
        after_completion: r.get(10)?,
        client_token: r.get(11)?,
        created_ms: r.get::<_, i64>(12)? as u64,
        modified_ms: r.get::<_, i64>(13)? as u64,
        next_ms: ms(r.get(14)?),
    })
}

fn write(tx: &Transaction<'_>, s: &Schedule, replace: bool) -> Result<(), StoreError> {
    let verb = if replace { "INSERT OR REPLACE" } else { "INSERT" };
    tx.execute(
        &format!(
            "{verb} INTO schedules ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        params![
            s.name,
            s.group,
            s.expression,
            s.timezone,
            s.target.to_string(),
            s.flexible.to_string(),
            s.state,
            s.start_ms.map(|v| v as i64),
            s.end_ms.map(|v| v as i64),
            s.description,
            s.after_completion,
            s.client_token,
            s.created_ms as i64,
            s.modified_ms as i64,
            s.next_ms.map(|v| v as i64),
        ],
    )?;
    Ok(())
}

/// 409 text for a schedule that exists.
fn exists(name: &str) -> StoreError {
    StoreError::Exists(format!("Schedule {name} already exists."))
}

/// 404 text for a schedule.
pub fn not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("Schedule {name} does not exist."))
}

/// Runs a schedule's due run inside the queue's batch: if it is still due at `due_ms`, queues
/// `event` (if any) and moves it to `next_ms`, or deletes it (`delete`). Returns the queued
/// event, and whether the run happened.
pub(super) fn fire(
    tx: &Transaction<'_>,
    name: &str,
    due_ms: u64,
    event: Option<&NewEvent>,
    next_ms: Option<u64>,
    delete: bool,
) -> Result<(bool, Option<Queued>), StoreError> {
    let current: Option<Option<i64>> = tx
        .prepare_cached("SELECT next_ms FROM schedules WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    if current != Some(Some(due_ms as i64)) {
        // Changed or deleted since it was found due: the change decides.
        return Ok((false, None));
    }
    if delete {
        tx.execute("DELETE FROM schedules WHERE name = ?1", [name])?;
    } else {
        tx.execute("UPDATE schedules SET next_ms = ?2 WHERE name = ?1", params![name, next_ms.map(|v| v as i64)])?;
    }
    let target_exists = match event {
        Some(e) => tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([&e.function])?,
        None => false,
    };
    let queued = match event {
        Some(e) if target_exists => Some(insert_event(tx, e)?),
        Some(e) => {
            eprintln!("ember: schedule {name}: its target function {} does not exist; this run is skipped", e.function);
            None
        }
        None => None,
    };
    Ok((true, queued))
}

impl Store {
    /// Stores a new schedule. A schedule of that name created with the same client token is
    /// returned as it is (a retried create); another is `Exists`.
    pub fn create_schedule(&self, s: &Schedule) -> Result<Schedule, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let found =
            tx.query_row(&format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"), [&s.name], row).optional()?;
        if let Some(existing) = found {
            if existing.client_token.is_some() && existing.client_token == s.client_token {
                return Ok(existing);
            }
            return Err(exists(&s.name));
        }
        write(&tx, s, false)?;
        tx.commit()?;
        Ok(s.clone())
    }

    /// Replaces a schedule (UpdateSchedule), keeping its creation date and client token;
    /// `change` sees the stored one.
    pub fn update_schedule(
        &self,
        name: &str,
        change: impl FnOnce(&Schedule) -> Result<Schedule, StoreError>,
    ) -> Result<Schedule, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let current = tx
            .query_row(&format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"), [name], row)
            .optional()?
            .ok_or_else(|| not_found(name))?;
        let mut new = change(&current)?;
        new.created_ms = current.created_ms;
        new.client_token = current.client_token;
        write(&tx, &new, true)?;
        tx.commit()?;
        Ok(new)
    }

    /// A schedule.
    pub fn schedule(&self, name: &str) -> Result<Schedule, StoreError> {
        let conn = lock(&self.reader);
        let found = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"))?
            .query_row([name], row)
            .optional()?;
        found.ok_or_else(|| not_found(name))
    }

    /// Deletes a schedule.
    pub fn delete_schedule(&self, name: &str) -> Result<(), StoreError> {
        let conn = lock(&self.writer);
        if conn.execute("DELETE FROM schedules WHERE name = ?1", [name])? == 0 {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// Every schedule that will run again: (name, next run).
    pub fn pending_schedules(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT name, next_ms FROM schedules WHERE next_ms IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of schedules by name, after `marker`, with a name prefix and a state if given.
    pub fn list_schedules(
        &self,
        prefix: Option<&str>,
        state: Option<&str>,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<Schedule>>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE name > ?1 AND (?2 IS NULL OR state = ?2) ORDER BY name"
        ))?;
        let rows = stmt.query_map(params![marker.unwrap_or(""), state], row)?;
        let prefix = prefix.unwrap_or("");
        Page::collect(rows, max, |_, s| s.name.starts_with(prefix), |s| s.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::QueueWrite;
    use super::super::queue::Written;
    use super::super::tests::{new_function, python_zip, temp_dir};
    use super::*;

    pub(crate) fn schedule(name: &str, next_ms: Option<u64>) -> Schedule {
        Schedule {
            name: name.into(),
            group: "default".into(),
            expression: "rate(1 minute)".into(),
            timezone: None,
            target: serde_json::json!({"Arn": crate::agent::ids::function_arn("f"), "RoleArn": "r"}),
            flexible: serde_json::json!({"Mode": "OFF"}),
            state: "ENABLED".into(),
            start_ms: None,
            end_ms: None,
            description: String::new(),
            after_completion: "NONE".into(),
            client_token: Some("tok".into()),
            created_ms: 1,
            modified_ms: 1,
            next_ms,
        }
    }

    fn event(id: &str) -> NewEvent {
        NewEvent {
            request_id: id.into(),
            function: "f".into(),
            qualifier: None,
            payload: b"{}".to_vec(),
            client_context: None,
            accepted_ms: 5,
        }
    }

    #[test]
    fn a_run_queues_its_event_and_moves_on_in_one_transaction_once() {
        let dir = temp_dir("schedules");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("a"), false).unwrap();
        store.create_schedule(&schedule("s", Some(100))).unwrap();
        // A retried create (same token) is the same schedule; another is a conflict.
        assert_eq!(store.create_schedule(&schedule("s", Some(999))).unwrap().next_ms, Some(100));
        let other = Schedule { client_token: Some("other".into()), ..schedule("s", None) };
        assert!(matches!(store.create_schedule(&other), Err(StoreError::Exists(_))));
        let fire = |due, id: &str, next, delete| QueueWrite::Fire {
            schedule: "s".into(),
            due_ms: due,
            event: Some(event(id)),
            next_ms: next,
            delete,
        };
        let w = store.write_queue(&[fire(100, "run-1", Some(160), false)]).unwrap();
        assert!(matches!(&w[0], Written::Fired(Some(q)) if q.function == "f"));
        // The same run again (a stale timer) does nothing.
        assert_eq!(store.write_queue(&[fire(100, "run-1b", Some(160), false)]).unwrap(), [Written::Fired(None)]);
        assert_eq!(store.queued().unwrap().len(), 1);
        assert_eq!(store.pending_schedules().unwrap(), [("s".to_string(), 160)]);
        // The last run of a DELETE schedule removes it.
        store.write_queue(&[fire(160, "run-2", None, true)]).unwrap();
        assert!(matches!(store.schedule("s"), Err(StoreError::NotFound(_))));
        assert_eq!(store.queued().unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn updates_keep_the_creation_and_lists_filter() {
        let dir = temp_dir("schedules-list");
        let store = Store::open(&dir).unwrap();
        for name in ["a1", "a2", "b1"] {
            store.create_schedule(&schedule(name, Some(10))).unwrap();
        }
        let updated = store
            .update_schedule("a2", |s| Ok(Schedule { state: "DISABLED".into(), created_ms: 77, ..s.clone() }))
            .unwrap();
        assert_eq!((updated.state.as_str(), updated.created_ms), ("DISABLED", 1));
        assert!(matches!(store.update_schedule("zz", |s| Ok(s.clone())), Err(StoreError::NotFound(_))));
        let names = |p: Page<Arc<Schedule>>| p.items.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(store.list_schedules(Some("a"), None, None, 50).unwrap()), ["a1", "a2"]);
        assert_eq!(names(store.list_schedules(None, Some("DISABLED"), None, 50).unwrap()), ["a2"]);
        let page = store.list_schedules(None, None, None, 2).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("a2"));
        assert_eq!(names(store.list_schedules(None, None, Some("a2"), 2).unwrap()), ["b1"]);
        store.delete_schedule("a1").unwrap();
        assert!(matches!(store.delete_schedule("a1"), Err(StoreError::NotFound(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
