//! The asynchronous event queue (`async_events`) and the event invoke configs
//! (`event_invoke_configs`).
//!
//! An event is a row from the moment it is accepted (committed before the caller hears 202)
//! until its last attempt is decided: each attempt's outcome is written before the next one
//! is scheduled, and the row is deleted in the same transaction that queues its destination's
//! record, so that a crash at any point loses nothing (an attempt in flight at a crash runs
//! again). Writes come in batches ([`Store::write_queue`]): one transaction, one fsync, for
//! every write that arrived while the previous batch committed.
//!
//! Rows go with their function (every row), version or alias (rows of that qualifier), in the
//! transactions that delete those (`super::delete_owned`).

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::outbox::OutMessage;
use super::{function_not_found, lock, Page, Store, StoreError};
use crate::agent::ids::LATEST;

/// An event to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its request id, the same for every attempt.
    pub request_id: String,
    /// The function.
    pub function: String,
    /// The qualifier it was invoked with, if any.
    pub qualifier: Option<String>,
    /// The event.
    pub payload: Vec<u8>,
    /// `X-Amz-Client-Context`.
    pub client_context: Option<String>,
    /// When it was accepted (Unix ms).
    pub accepted_ms: u64,
}

/// What the dispatcher keeps of a queued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its row.
    pub seq: i64,
    /// Its function.
    pub function: String,
    /// When its next attempt is due (Unix ms).
    pub due_ms: u64,
}

/// What the last attempt of an event answered (for its destination's record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastResponse {
    /// The response payload (the error JSON for a function error).
    pub payload: Vec<u8>,
    /// `Unhandled`, or `None` for a success.
    pub function_error: Option<String>,
    /// The version that ran.
    pub version: String,
}

/// A queued event, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its row.
    pub seq: i64,
    /// What was accepted.
    pub event: NewEvent,
    /// Attempts that ran the function.
    pub attempts: u32,
    /// Attempts that were throttled or failed for want of an instance.
    pub throttles: u32,
    /// What the last attempt that ran answered.
    pub last: Option<LastResponse>,
}

/// One write to the queue.
#[derive(Debug, Clone)]
pub enum QueueWrite {
    /// Queues an event (due at once).
    Accept(NewEvent),
    /// Records an attempt's outcome and when the next is due.
    Reschedule {
        /// The event's row.
        seq: i64,
        /// The next attempt's time (Unix ms).
        due_ms: u64,
        /// Attempts that ran the function, so far.
        attempts: u32,
        /// Throttled attempts, so far.
        throttles: u32,
        /// What the last attempt that ran answered.
        last: Option<LastResponse>,
    },
    /// Removes a decided event and queues its destination's record, if any, and the messages
    /// for the broker (a queue destination's record, a dead-letter message).
    Finish {
        /// The event's row.
        seq: i64,
        /// The record for a function destination.
        then: Option<NewEvent>,
        /// Messages for the broker's outbox.
        publish: Vec<OutMessage>,
    },
    /// Runs a schedule's run due at `due_ms` (if it still is): queues its target's event and
    /// moves it to `next_ms`, or deletes it (see `schedules::fire`).
    Fire {
        /// The schedule's name.
        schedule: String,
        /// The run's time.
        due_ms: u64,
        /// The target's event.
        event: Option<NewEvent>,
        /// The following run.
        next_ms: Option<u64>,
        /// Delete the schedule (its last run, with `ActionAfterCompletion` `DELETE`).
        delete: bool,
    },
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The event is queued.
    Accepted(Queued),
    /// Rescheduled (`false`: the event was gone, deleted with its function).
    Rescheduled(bool),
    /// Removed; the destination's record, if one was queued, and whether messages went to
    /// the outbox.
    Finished(Option<Queued>, bool),
    /// A schedule's run: the event queued, if it ran and its target exists.
    Fired(Option<Queued>),
}

/// How a function's asynchronous invocations are handled (one per qualifier).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// The function.
    pub function: String,
    /// `$LATEST`, a version number or an alias name.
    pub qualifier: String,
    /// `MaximumRetryAttempts`, if set.
    pub max_retries: Option<u32>,
    /// `MaximumEventAgeInSeconds`, if set.
    pub max_age_s: Option<u32>,
    /// `DestinationConfig.OnSuccess.Destination`.
    pub on_success: Option<String>,
    /// `DestinationConfig.OnFailure.Destination`.
    pub on_failure: Option<String>,
    /// When it was last written (Unix ms).
    pub last_modified_ms: u64,
}

pub(super) fn insert_event(tx: &Transaction<'_>, e: &NewEvent) -> Result<Queued, StoreError> {
    tx.prepare_cached(
        "INSERT INTO async_events (request_id, function, qualifier, payload, client_context, accepted_ms, due_ms, \
         attempts, throttles) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0, 0)",
    )?
    .execute(params![e.request_id, e.function, e.qualifier, e.payload, e.client_context, e.accepted_ms as i64])?;
    Ok(Queued { seq: tx.last_insert_rowid(), function: e.function.clone(), due_ms: e.accepted_ms })
}

fn config_row(r: &Row<'_>) -> rusqlite::Result<EventConfig> {
    Ok(EventConfig {
        function: r.get(0)?,
        qualifier: r.get(1)?,
        max_retries: r.get(2)?,
        max_age_s: r.get(3)?,
        on_success: r.get(4)?,
        on_failure: r.get(5)?,
        last_modified_ms: r.get::<_, i64>(6)? as u64,
    })
}

const CONFIG_COLUMNS: &str = "function, qualifier, max_retries, max_age_s, on_success, on_failure, last_modified_ms";

impl Store {
    /// Applies `writes` in one transaction (one fsync): all of them or, on an error, none.
    pub fn write_queue(&self, writes: &[QueueWrite]) -> Result<Vec<Written>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(match w {
                QueueWrite::Accept(e) => Written::Accepted(insert_event(&tx, e)?),
                QueueWrite::Reschedule { seq, due_ms, attempts, throttles, last } => {
                    let n = tx
                        .prepare_cached(
                            "UPDATE async_events SET due_ms = ?2, attempts = ?3, throttles = ?4, \
                             last_response = COALESCE(?5, last_response), last_error = CASE WHEN ?5 IS NULL THEN \
                             last_error ELSE ?6 END, last_version = COALESCE(?7, last_version) WHERE seq = ?1",
                        )?
                        .execute(params![
                            seq,
                            *due_ms as i64,
                            attempts,
                            throttles,
                            last.as_ref().map(|l| &l.payload),
                            last.as_ref().and_then(|l| l.function_error.as_deref()),
                            last.as_ref().map(|l| &l.version),
                        ])?;
                    Written::Rescheduled(n == 1)
                }
                QueueWrite::Finish { seq, then, publish } => {
                    let existed = tx.prepare_cached("DELETE FROM async_events WHERE seq = ?1")?.execute([seq])? == 1;
                    let queued = match then {
                        Some(e) if existed => {
                            let target_exists =
                                tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([&e.function])?;
                            if target_exists {
                                Some(insert_event(&tx, e)?)
                            } else {
                                eprintln!(
                                    "ember: async: destination function {} does not exist; the record of {} is \
                                     dropped",
                                    e.function, e.request_id
                                );
                                None
                            }
                        }
                        _ => None,
                    };
                    if existed {
                        for m in publish {
                            super::outbox::insert(&tx, m, crate::agent::ids::unix_ms())?;
                        }
                    }
                    Written::Finished(queued, existed && !publish.is_empty())
                }
                QueueWrite::Fire { schedule, due_ms, event, next_ms, delete } => {
                    let (_, queued) =
                        super::schedules::fire(&tx, schedule, *due_ms, event.as_ref(), *next_ms, *delete)?;
                    Written::Fired(queued)
                }
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// Every queued event, in the order they were accepted (for the dispatcher at start).
    pub fn queued(&self) -> Result<Vec<Queued>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT seq, function, due_ms FROM async_events ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Queued { seq: r.get(0)?, function: r.get(1)?, due_ms: r.get::<_, i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One queued event, whole, with the config of the qualifier it was invoked with; `None`
    /// once it is gone.
    pub fn queued_event(&self, seq: i64) -> Result<Option<(StoredEvent, Option<EventConfig>)>, StoreError> {
        let conn = lock(&self.reader);
        let event = conn
            .prepare_cached(
                "SELECT request_id, function, qualifier, payload, client_context, accepted_ms, attempts, throttles, \
                 last_response, last_error, last_version FROM async_events WHERE seq = ?1",
            )?
            .query_row([seq], |r| {
                let last = match r.get::<_, Option<Vec<u8>>>(8)? {
                    Some(payload) => Some(LastResponse {
                        payload,
                        function_error: r.get(9)?,
                        version: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                    }),
                    None => None,
                };
                Ok(StoredEvent {
                    seq,
                    event: NewEvent {
                        request_id: r.get(0)?,
                        function: r.get(1)?,
                        qualifier: r.get(2)?,
                        payload: r.get(3)?,
                        client_context: r.get(4)?,
                        accepted_ms: r.get::<_, i64>(5)? as u64,
                    },
                    attempts: r.get(6)?,
                    throttles: r.get(7)?,
                    last,
                })
            })
            .optional()?;
        let Some(event) = event else { return Ok(None) };
        let qualifier = event.event.qualifier.as_deref().unwrap_or(LATEST);
        let config = conn
            .prepare_cached(&format!(
                "SELECT {CONFIG_COLUMNS} FROM event_invoke_configs WHERE function = ?1 AND qualifier = ?2"
            ))?
            .query_row(params![event.event.function, qualifier], config_row)
            .optional()?;
        Ok(Some((event, config)))
    }

    /// Writes a qualifier's event invoke config (replacing any), the function existing.
    pub fn put_event_config(&self, config: &EventConfig) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([&config.function])? {
            return Err(function_not_found(&config.function));
        }
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO event_invoke_configs ({CONFIG_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                config.function,
                config.qualifier,
                config.max_retries,
                config.max_age_s,
                config.on_success,
                config.on_failure,
                config.last_modified_ms as i64
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Changes a qualifier's event invoke config with `change` inside one transaction; `None`
    /// if it has none.
    pub fn update_event_config(
        &self,
        function: &str,
        qualifier: &str,
        change: impl FnOnce(&mut EventConfig),
    ) -> Result<Option<EventConfig>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                &format!("SELECT {CONFIG_COLUMNS} FROM event_invoke_configs WHERE function = ?1 AND qualifier = ?2"),
                params![function, qualifier],
                config_row,
            )
            .optional()?;
        let Some(mut config) = found else { return Ok(None) };
        change(&mut config);
        tx.execute(
            "UPDATE event_invoke_configs SET max_retries = ?3, max_age_s = ?4, on_success = ?5, on_failure = ?6, \
             last_modified_ms = ?7 WHERE function = ?1 AND qualifier = ?2",
            params![
                function,
                qualifier,
                config.max_retries,
                config.max_age_s,
                config.on_success,
                config.on_failure,
                config.last_modified_ms as i64
            ],
        )?;
        tx.commit()?;
        Ok(Some(config))
    }

    /// A qualifier's event invoke config, if it has one.
    pub fn event_config(&self, function: &str, qualifier: &str) -> Result<Option<EventConfig>, StoreError> {
        let conn = lock(&self.reader);
        let config = conn
            .prepare_cached(&format!(
                "SELECT {CONFIG_COLUMNS} FROM event_invoke_configs WHERE function = ?1 AND qualifier = ?2"
            ))?
            .query_row(params![function, qualifier], config_row)
            .optional()?;
        Ok(config)
    }

    /// Deletes a qualifier's event invoke config; whether there was one.
    pub fn delete_event_config(&self, function: &str, qualifier: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.writer);
        Ok(conn.execute(
            "DELETE FROM event_invoke_configs WHERE function = ?1 AND qualifier = ?2",
            params![function, qualifier],
        )? > 0)
    }

    /// A page of a function's event invoke configs, by qualifier, after `marker`.
    pub fn list_event_configs(
        &self,
        function: &str,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<std::sync::Arc<EventConfig>>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {CONFIG_COLUMNS} FROM event_invoke_configs WHERE function = ?1 AND qualifier > ?2 ORDER BY \
             qualifier"
        ))?;
        let rows = stmt.query_map(params![function, marker.unwrap_or("")], config_row)?;
        Page::collect(rows, max, |_, _| true, |c| c.qualifier.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_function, python_zip, temp_dir};
    use super::*;
    use crate::agent::ids::Version;

    fn event(id: &str, function: &str, qualifier: Option<&str>) -> NewEvent {
        NewEvent {
            request_id: id.into(),
            function: function.into(),
            qualifier: qualifier.map(str::to_string),
            payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
            client_context: None,
            accepted_ms: 1000,
        }
    }

    fn queued_ids(store: &Store) -> Vec<String> {
        store.queued().unwrap().iter().map(|q| store.queued_event(q.seq).unwrap().unwrap().0.event.request_id).collect()
    }

    #[test]
    fn events_are_kept_until_finished_and_a_batch_is_one_transaction() {
        let dir = temp_dir("queue-batch");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("a"), false).unwrap();
        store.create(new_function("collector"), &python_zip("b"), false).unwrap();
        let written = store
            .write_queue(&[QueueWrite::Accept(event("a", "f", None)), QueueWrite::Accept(event("b", "f", Some("1")))])
            .unwrap();
        let Written::Accepted(a) = &written[0] else { panic!("{written:?}") };
        assert_eq!((a.function.as_str(), a.due_ms), ("f", 1000));
        let last = LastResponse {
            payload: b"{\"errorMessage\":\"x\"}".to_vec(),
            function_error: Some("Unhandled".into()),
            version: "$LATEST".into(),
        };
        store
            .write_queue(&[QueueWrite::Reschedule {
                seq: a.seq,
                due_ms: 5000,
                attempts: 1,
                throttles: 0,
                last: Some(last.clone()),
            }])
            .unwrap();
        // A throttle keeps the last response.
        store
            .write_queue(&[QueueWrite::Reschedule { seq: a.seq, due_ms: 6000, attempts: 1, throttles: 1, last: None }])
            .unwrap();
        let (stored, config) = store.queued_event(a.seq).unwrap().unwrap();
        assert_eq!((stored.attempts, stored.throttles, stored.last.as_ref()), (1, 1, Some(&last)));
        assert_eq!(config, None);
        // Reopened, everything is still there.
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(queued_ids(&store), ["a", "b"]);
        assert_eq!(store.queued().unwrap()[0].due_ms, 6000);
        // Finishing queues the record for the destination in the same transaction.
        // So do the broker's messages.
        let dlq = OutMessage {
            queue: "dlq".into(),
            message_id: "m".into(),
            body: b"{}".to_vec(),
            headers: Default::default(),
        };
        let written = store
            .write_queue(&[QueueWrite::Finish {
                seq: a.seq,
                then: Some(event("rec", "collector", None)),
                publish: vec![dlq.clone()],
            }])
            .unwrap();
        assert!(matches!(&written[0], Written::Finished(Some(q), true) if q.function == "collector"));
        assert_eq!(queued_ids(&store), ["b", "rec"]);
        assert_eq!(store.outbox(0, 10).unwrap()[0].message, dlq);
        // Finishing again (the event is gone) queues nothing.
        let written = store
            .write_queue(&[QueueWrite::Finish {
                seq: a.seq,
                then: Some(event("rec2", "collector", None)),
                publish: vec![dlq],
            }])
            .unwrap();
        assert_eq!(written, [Written::Finished(None, false)]);
        assert_eq!(store.outbox_len().unwrap(), 1);
        // A failing write in a batch undoes the whole batch (a trigger refuses one).
        rusqlite::Connection::open(dir.join("ember.db"))
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON async_events WHEN NEW.request_id = 'bad' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        assert!(store
            .write_queue(&[QueueWrite::Accept(event("c", "f", None)), QueueWrite::Accept(event("bad", "f", None))])
            .is_err());
        assert_eq!(queued_ids(&store), ["b", "rec"]);
        // A destination function that does not exist gets nothing; the event still goes.
        let b = store.queued().unwrap()[0].seq;
        let written = store
            .write_queue(&[QueueWrite::Finish { seq: b, then: Some(event("x", "nobody", None)), publish: vec![] }])
            .unwrap();
        assert_eq!(written, [Written::Finished(None, false)]);
        assert_eq!(queued_ids(&store), ["rec"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_and_configs_go_with_their_function_version_or_alias() {
        let dir = temp_dir("queue-delete");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("a"), true).unwrap();
        store
            .create_alias(
                "f",
                crate::agent::store::NewAlias {
                    name: "live".into(),
                    version: Version::published(1),
                    weights: Default::default(),
                    description: String::new(),
                },
            )
            .unwrap();
        for q in ["$LATEST", "1", "live"] {
            store
                .put_event_config(&EventConfig {
                    function: "f".into(),
                    qualifier: q.into(),
                    max_retries: Some(1),
                    ..EventConfig::default()
                })
                .unwrap();
        }
        store
            .write_queue(&[
                QueueWrite::Accept(event("a", "f", None)),
                QueueWrite::Accept(event("b", "f", Some("live"))),
                QueueWrite::Accept(event("c", "f", Some("1"))),
            ])
            .unwrap();
        let seq_of = |store: &Store, id: &str| {
            store
                .queued()
                .unwrap()
                .into_iter()
                .find(|q| store.queued_event(q.seq).unwrap().unwrap().0.event.request_id == id)
                .unwrap()
                .seq
        };
        let (_, config) = store.queued_event(seq_of(&store, "b")).unwrap().unwrap();
        assert_eq!(config.map(|c| c.qualifier), Some("live".to_string()));
        store.delete_alias("f", "live").unwrap();
        assert_eq!(queued_ids(&store), ["a", "c"]);
        assert_eq!(store.event_config("f", "live").unwrap(), None);
        store.delete_version("f", Version::published(1)).unwrap();
        assert_eq!(queued_ids(&store), ["a"]);
        assert_eq!(store.list_event_configs("f", None, 50).unwrap().items.len(), 1);
        store.delete_function("f").unwrap();
        assert!(queued_ids(&store).is_empty());
        assert_eq!(store.event_config("f", "$LATEST").unwrap(), None);
        assert!(matches!(
            store.put_event_config(&EventConfig {
                function: "f".into(),
                qualifier: "$LATEST".into(),
                ..Default::default()
            }),
            Err(StoreError::NotFound(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn configs_update_in_place_and_list_in_pages() {
        let dir = temp_dir("queue-configs");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("a"), false).unwrap();
        assert_eq!(store.update_event_config("f", "$LATEST", |_| {}).unwrap(), None);
        for q in ["$LATEST", "1", "2"] {
            store
                .put_event_config(&EventConfig { function: "f".into(), qualifier: q.into(), ..EventConfig::default() })
                .unwrap();
        }
        let updated = store.update_event_config("f", "1", |c| c.max_age_s = Some(60)).unwrap().unwrap();
        assert_eq!(updated.max_age_s, Some(60));
        assert_eq!(store.event_config("f", "1").unwrap().unwrap().max_age_s, Some(60));
        let page = store.list_event_configs("f", None, 2).unwrap();
        assert_eq!(page.items.iter().map(|c| c.qualifier.as_str()).collect::<Vec<_>>(), ["$LATEST", "1"]);
        let next = store.list_event_configs("f", page.next_marker.as_deref(), 2).unwrap();
        assert_eq!(next.items.iter().map(|c| c.qualifier.as_str()).collect::<Vec<_>>(), ["2"]);
        assert_eq!(next.next_marker, None);
        assert!(store.delete_event_config("f", "2").unwrap());
        assert!(!store.delete_event_config("f", "2").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
