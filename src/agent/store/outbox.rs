//! Messages owed to the message broker (`outbox`): a destination's record or a dead-letter
//! message is a row here, written in the transaction that finishes its event, and stays until
//! the broker has confirmed it (`broker::outbox` publishes and deletes). A broker that is down,
//! restarts, or lacks the queue loses nothing: the row is published again later.

use std::collections::BTreeMap;

use rusqlite::{params, Transaction};

use super::{from_json, lock, map_json, Store, StoreError};

/// A message for a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// The queue's name.
    pub queue: String,
    /// Its `message_id` property, the same on every publish of it (consumers can drop
    /// duplicates by it).
    pub message_id: String,
    /// The body.
    pub body: Vec<u8>,
    /// Headers (string values).
    pub headers: BTreeMap<String, String>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its row.
    pub seq: i64,
    /// The message.
    pub message: OutMessage,
}

pub(super) fn insert(tx: &Transaction<'_>, m: &OutMessage, now_ms: u64) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO outbox (queue, message_id, body, headers, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![m.queue, m.message_id, m.body, map_json(&m.headers), now_ms as i64])?;
    Ok(())
}

impl Store {
    /// Up to `limit` messages after row `after`, in order.
    pub fn outbox(&self, after: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT seq, queue, message_id, body, headers FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok(Pending {
                seq: r.get(0)?,
                message: OutMessage {
                    queue: r.get(1)?,
                    message_id: r.get(2)?,
                    body: r.get(3)?,
                    headers: from_json(&r.get::<_, String>(4)?),
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the messages the broker confirmed, in one transaction.
    pub fn outbox_done(&self, seqs: &[i64]) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        for seq in seqs {
            tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?.execute([seq])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How many messages wait for the broker.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let conn = lock(&self.reader);
        Ok(conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_dir;
    use super::*;

    #[test]
    fn messages_stay_until_confirmed() {
        let dir = temp_dir("outbox");
        let store = Store::open(&dir).unwrap();
        let m = |q: &str| OutMessage {
            queue: q.into(),
            message_id: format!("id-{q}"),
            body: q.as_bytes().to_vec(),
            headers: BTreeMap::from([("RequestID".into(), "r".into())]),
        };
        {
            let mut conn = lock(&store.writer);
            let tx = conn.transaction().unwrap();
            for q in ["a", "b", "c"] {
                insert(&tx, &m(q), 1).unwrap();
            }
            tx.commit().unwrap();
        }
        let all = store.outbox(0, 10).unwrap();
        assert_eq!(all.iter().map(|p| p.message.clone()).collect::<Vec<_>>(), [m("a"), m("b"), m("c")]);
        assert_eq!(store.outbox(all[0].seq, 1).unwrap()[0].message, m("b"));
        store.outbox_done(&[all[0].seq, all[2].seq]).unwrap();
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.outbox_len().unwrap(), 1);
        assert_eq!(store.outbox(0, 10).unwrap()[0].message, m("b"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
