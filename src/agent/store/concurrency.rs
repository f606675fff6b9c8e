//! Concurrency settings as stored: each function's reserved concurrency (a column of
//! `functions`) and provisioned concurrency per qualifier (the `provisioned` table), checked
//! against the host's limits inside the write that changes them, so that two concurrent
//! requests cannot together break them.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{function_not_found, lock, Store, StoreError};
use crate::agent::ids;

/// The host's concurrency, as the account's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Instances at once on this host (`ConcurrentExecutions`).
    pub concurrent: u32,
    /// What reservations must leave to the functions without one.
    pub min_unreserved: u32,
}

/// One stored provisioned-concurrency setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedSetting {
    /// The function.
    pub function: String,
    /// The version number or alias name.
    pub qualifier: String,
    /// Instances asked for.
    pub requested: u32,
}

/// The account's code storage and functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of code stored as Lambda counts them: every version's and layer version's zip.
    pub total_code_bytes: u64,
    /// Functions.
    pub functions: u64,
}

fn reserved_of(tx: &Transaction<'_>, function: &str) -> Result<Option<u32>, StoreError> {
    tx.query_row("SELECT reserved FROM functions WHERE name = ?1", [function], |r| r.get::<_, Option<u32>>(0))
        .optional()?
        .ok_or_else(|| function_not_found(function))
}

/// Provisioned concurrency of `function` over all its qualifiers but `except`.
fn provisioned_of(tx: &Transaction<'_>, function: &str, except: &str) -> Result<u32, StoreError> {
    Ok(tx.query_row(
        "SELECT COALESCE(SUM(requested), 0) FROM provisioned WHERE function = ?1 AND qualifier != ?2",
        params![function, except],
        |r| r.get(0),
    )?)
}

impl Store {
    /// Sets (or with `None` removes) a function's reserved concurrency. Refused when it would
    /// leave the functions without a reservation less than `limits.min_unreserved`, or when
    /// it is below the function's provisioned concurrency.
    pub fn set_reserved(&self, function: &str, reserved: Option<u32>, limits: HostLimits) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        reserved_of(&tx, function)?;
        if let Some(n) = reserved {
            let others: u32 = tx.query_row(
                "SELECT COALESCE(SUM(reserved), 0) FROM functions WHERE name != ?1 AND reserved IS NOT NULL",
                [function],
                |r| r.get(0),
            )?;
            if u64::from(others) + u64::from(n) + u64::from(limits.min_unreserved) > u64::from(limits.concurrent) {
                return Err(StoreError::Invalid(format!(
                    "Specified ReservedConcurrentExecutions for function decreases account's \
                     UnreservedConcurrentExecution below its minimum value of [{}].",
                    limits.min_unreserved
                )));
            }
            let provisioned = provisioned_of(&tx, function, "")?;
            if n < provisioned {
                return Err(StoreError::Invalid(format!(
                    "Specified ReservedConcurrentExecutions ({n}) for function is less than the function's \
                     provisioned concurrency ({provisioned})."
                )));
            }
        }
        tx.execute("UPDATE functions SET reserved = ?2 WHERE name = ?1", params![function, reserved])?;
        tx.commit()?;
        Ok(())
    }

    /// Every reservation, by function.
    pub fn reservations(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare("SELECT name, reserved FROM functions WHERE reserved IS NOT NULL ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Records provisioned concurrency for one qualifier of a function (`None`: removes it;
    /// returns whether there was one). Within a reservation, all of the function's provisioned
    /// concurrency must fit in it; without one, the provisioned concurrency of every function
    /// without a reservation must leave `limits.min_unreserved`.
    pub fn set_provisioned(
        &self,
        function: &str,
        qualifier: &str,
        requested: Option<u32>,
        limits: HostLimits,
    ) -> Result<bool, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let reserved = reserved_of(&tx, function)?;
        let Some(n) = requested else {
            let existed = tx.execute(
                "DELETE FROM provisioned WHERE function = ?1 AND qualifier = ?2",
                params![function, qualifier],
            )? > 0;
            tx.commit()?;
            return Ok(existed);
        };
        match reserved {
            Some(r) => {
                let others = provisioned_of(&tx, function, qualifier)?;
                if u64::from(others) + u64::from(n) > u64::from(r) {
                    return Err(StoreError::Invalid(format!(
                        "Requested Provisioned Concurrency should not be greater than the reservedConcurrentExecution \
                         for function: {} provisioned of {r} reserved.",
                        u64::from(others) + u64::from(n)
                    )));
                }
            }
            None => {
                let reserved_total: u32 = tx.query_row(
                    "SELECT COALESCE(SUM(reserved), 0) FROM functions WHERE reserved IS NOT NULL",
                    [],
                    |r| r.get(0),
                )?;
                let unreserved_provisioned: u32 = tx.query_row(
                    "SELECT COALESCE(SUM(p.requested), 0) FROM provisioned p JOIN functions f ON f.name = p.function \
                     WHERE f.reserved IS NULL AND NOT (p.function = ?1 AND p.qualifier = ?2)",
                    params![function, qualifier],
                    |r| r.get(0),
                )?;
                let unreserved = u64::from(limits.concurrent).saturating_sub(u64::from(reserved_total));
                if u64::from(unreserved_provisioned) + u64::from(n) + u64::from(limits.min_unreserved) > unreserved {
                    return Err(StoreError::Invalid(format!(
                        "Requested Provisioned Concurrency exceeds the account's UnreservedConcurrentExecution: \
                         {unreserved} unreserved, of which {} must stay free.",
                        limits.min_unreserved
                    )));
                }
            }
        }
        tx.execute(
            "INSERT INTO provisioned (function, qualifier, requested, last_modified) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (function, qualifier) DO UPDATE SET requested = ?3, last_modified = ?4",
            params![function, qualifier, n, ids::now()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Every provisioned-concurrency setting.
    pub fn provisioned(&self) -> Result<Vec<ProvisionedSetting>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare("SELECT function, qualifier, requested FROM provisioned ORDER BY function, qualifier")?;
        let rows = stmt.query_map([], |r| {
            Ok(ProvisionedSetting { function: r.get(0)?, qualifier: r.get(1)?, requested: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The account's code storage and function count.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let conn = lock(&self.reader);
        let code: i64 = conn.query_row(
            "SELECT (SELECT COALESCE(SUM(code_size), 0) FROM versions) + \
                    (SELECT COALESCE(SUM(code_size), 0) FROM layers)",
            [],
            |r| r.get(0),
        )?;
        let functions: i64 = conn.query_row("SELECT COUNT(*) FROM functions", [], |r| r.get(0))?;
        Ok(Usage { total_code_bytes: code as u64, functions: functions as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_function, python_zip, temp_dir};
    use super::*;

    const LIMITS: HostLimits = HostLimits { concurrent: 10, min_unreserved: 2 };

    #[test]
    fn reservations_leave_the_minimum_and_cover_provisioned_concurrency() {
        let dir = temp_dir("store-concurrency");
        let store = Store::open(&dir).unwrap();
        for name in ["a", "b", "c"] {
            store.create(new_function(name), &python_zip(name), true).unwrap();
        }
        store.set_reserved("a", Some(5), LIMITS).unwrap();
        store.set_reserved("b", Some(3), LIMITS).unwrap();
        let e = store.set_reserved("c", Some(1), LIMITS).unwrap_err();
        assert!(e.to_string().contains("minimum value of [2]"), "{e}");
        // Changing a's own reservation counts the new value, not old and new.
        store.set_reserved("a", Some(4), LIMITS).unwrap();
        store.set_reserved("c", Some(1), LIMITS).unwrap();
        assert_eq!(store.reservations().unwrap(), [("a".into(), 4), ("b".into(), 3), ("c".into(), 1)]);
        assert!(matches!(store.set_reserved("nope", Some(1), LIMITS), Err(StoreError::NotFound(_))));

        // Provisioned concurrency fits inside the reservation.
        store.set_provisioned("a", "1", Some(3), LIMITS).unwrap();
        assert!(store.set_provisioned("a", "1", Some(5), LIMITS).is_err());
        assert!(store.set_reserved("a", Some(2), LIMITS).is_err(), "below its provisioned concurrency");
        store.set_reserved("c", None, LIMITS).unwrap();
        // Without one: within the unreserved share (10 - 7 = 3), less the minimum (2).
        store.set_provisioned("c", "1", Some(1), LIMITS).unwrap();
        assert!(store.set_provisioned("c", "1", Some(2), LIMITS).is_err());
        assert_eq!(store.provisioned().unwrap().len(), 2);
        assert!(store.set_provisioned("c", "1", None, LIMITS).unwrap());
        assert!(!store.set_provisioned("c", "1", None, LIMITS).unwrap());
        let usage = store.usage().unwrap();
        assert_eq!(usage.functions, 3);
        assert!(usage.total_code_bytes > 0);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
