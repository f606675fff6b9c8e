//! Resource-based policies as stored (`policy_statements`): each statement's JSON, by function,
//! qualifier (empty for the function itself) and statement id. A policy's `RevisionId` is a
//! digest of its statements, so that it changes with every change and needs no row of its own.

use rusqlite::params;
use sha2::Digest;

use super::{check_revision, function_not_found, lock, Store, StoreError};

/// The revision id of a policy made of `statements` (in statement id order).
pub fn revision(statements: &[(String, String)]) -> String {
    let mut h = sha2::Sha256::new();
    for (sid, statement) in statements {
        h.update(sid.as_bytes());
        h.update([0]);
        h.update(statement.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn read(conn: &rusqlite::Connection, function: &str, qualifier: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT sid, statement FROM policy_statements WHERE function = ?1 AND qualifier = ?2 ORDER BY sid",
    )?;
    let rows = stmt.query_map([function, qualifier], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store {
    /// The statements (statement id, JSON) of a function's or qualifier's policy.
    pub fn statements(&self, function: &str, qualifier: &str) -> Result<Vec<(String, String)>, StoreError> {
        read(&lock(&self.reader), function, qualifier)
    }

    /// Adds a statement; `Exists` if its id is taken. `revision`, when given, must be the
    /// policy's current one.
    pub fn add_statement(
        &self,
        function: &str,
        qualifier: &str,
        sid: &str,
        statement: &str,
        revision_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([function])? {
            return Err(function_not_found(function));
        }
        let current = read(&tx, function, qualifier)?;
        check_revision(&revision(&current), revision_id)?;
        if current.iter().any(|(s, _)| s == sid) {
            return Err(StoreError::Conflict(format!(
                "The statement id ({sid}) provided already exists. Please provide a new statement id, or remove the \
                 existing statement."
            )));
        }
        tx.execute(
            "INSERT INTO policy_statements (function, qualifier, sid, statement) VALUES (?1, ?2, ?3, ?4)",
            params![function, qualifier, sid, statement],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a statement; whether there was one. `revision`, when given, must be the
    /// policy's current one.
    pub fn remove_statement(
        &self,
        function: &str,
        qualifier: &str,
        sid: &str,
        revision_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        check_revision(&revision(&read(&tx, function, qualifier)?), revision_id)?;
        let n = tx.execute(
            "DELETE FROM policy_statements WHERE function = ?1 AND qualifier = ?2 AND sid = ?3",
            params![function, qualifier, sid],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_function, python_zip, temp_dir};
    use super::*;

    #[test]
    fn statements_by_id_with_a_revision_that_follows_them() {
        let dir = temp_dir("policy");
        let store = Store::open(&dir).unwrap();
        store.create(new_function("f"), &python_zip("a"), false).unwrap();
        let empty = revision(&[]);
        store.add_statement("f", "", "b", "{\"x\":1}", Some(&empty)).unwrap();
        assert!(matches!(store.add_statement("f", "", "b", "{}", None), Err(StoreError::Conflict(_))));
        assert!(matches!(store.add_statement("f", "", "c", "{}", Some(&empty)), Err(StoreError::RevisionMismatch)));
        store.add_statement("f", "", "a", "{\"x\":2}", None).unwrap();
        store.add_statement("f", "live", "a", "{}", None).unwrap();
        let got = store.statements("f", "").unwrap();
        assert_eq!(got.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let rev = revision(&got);
        assert_ne!(rev, empty);
        assert!(store.remove_statement("f", "", "a", Some(&rev)).unwrap());
        assert!(!store.remove_statement("f", "", "a", None).unwrap());
        assert!(matches!(store.remove_statement("f", "", "b", Some(&rev)), Err(StoreError::RevisionMismatch)));
        store.delete_alias("f", "live").unwrap();
        assert!(store.statements("f", "live").unwrap().is_empty());
        store.delete_function("f").unwrap();
        assert!(store.statements("f", "").unwrap().is_empty());
        assert!(matches!(store.add_statement("f", "", "a", "{}", None), Err(StoreError::NotFound(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
