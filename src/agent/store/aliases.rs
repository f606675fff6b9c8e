//! Aliases: the `aliases` table, one row an alias: the version it points to, the weights of
//! the versions it also routes to (`RoutingConfig.AdditionalVersionWeights`), its description
//! and revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::{check_revision, from_json, function_not_found, lock, version_not_found, Page, Store, StoreError};
use crate::agent::ids::{self, random_uuid, Version};
use crate::agent::limits;

/// An alias of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    /// The function's name.
    pub function: String,
    /// The alias's name.
    pub name: String,
    /// The version it points to.
    pub version: Version,
    /// Other versions it routes to, with the share of invocations each gets (0 to 1); the
    /// pointed-to version gets the rest.
    pub weights: BTreeMap<Version, f64>,
    /// Free text.
    pub description: String,
    /// Changes with every change to the alias.
    pub revision_id: String,
}

impl Alias {
    /// `arn:aws:lambda:...:function:<function>:<alias>`.
    pub fn arn(&self) -> String {
        ids::qualified_arn(&self.function, &self.name)
    }

    /// Every version it routes to.
    pub fn versions(&self) -> impl Iterator<Item = Version> + '_ {
        std::iter::once(self.version).chain(self.weights.keys().copied())
    }
}

/// An alias to create (already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlias {
    /// See [`Alias`].
    pub name: String,
    /// See [`Alias`].
    pub version: Version,
    /// See [`Alias`].
    pub weights: BTreeMap<Version, f64>,
    /// See [`Alias`].
    pub description: String,
}

/// A change to an alias: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AliasPatch {
    /// See [`Alias`].
    pub version: Option<Version>,
    /// See [`Alias`] (replaces all the weights).
    pub weights: Option<BTreeMap<Version, f64>>,
    /// See [`Alias`].
    pub description: Option<String>,
}

const COLUMNS: &str = "function, name, version, weights, description, revision_id";

fn alias_from_row(row: &Row<'_>) -> rusqlite::Result<Alias> {
    let weights: String = row.get("weights")?;
    let weights: BTreeMap<u32, f64> = from_json(&weights);
    Ok(Alias {
        function: row.get("function")?,
        name: row.get("name")?,
        version: Version::from_stored(row.get("version")?),
        weights: weights.into_iter().map(|(v, w)| (Version::from_stored(v), w)).collect(),
        description: row.get("description")?,
        revision_id: row.get("revision_id")?,
    })
}

fn weights_json(weights: &BTreeMap<Version, f64>) -> String {
    let stored: BTreeMap<u32, f64> = weights.iter().map(|(v, w)| (v.stored(), *w)).collect();
    serde_json::to_string(&stored).expect("weights serialize")
}

fn alias_not_found(function: &str, name: &str) -> StoreError {
    StoreError::NotFound(format!("Alias not found: {}", ids::qualified_arn(function, name)))
}

/// The names of the aliases of `function` that route to `version`.
pub(super) fn aliases_routing_to(
    tx: &Transaction<'_>,
    function: &str,
    version: Version,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM aliases WHERE function = ?1 ORDER BY name"))?;
    let aliases = stmt.query_map([function], alias_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(aliases.into_iter().filter(|a| a.versions().any(|v| v == version)).map(|a| a.name).collect())
}

/// Checks inside a write that the function and every version the alias routes to exist.
fn check_targets(tx: &Transaction<'_>, function: &str, alias: &Alias) -> Result<(), StoreError> {
    if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([function])? {
        return Err(function_not_found(function));
    }
    for version in alias.versions() {
        let found = tx
            .prepare_cached("SELECT 1 FROM versions WHERE function = ?1 AND version = ?2")?
            .exists(params![function, version.stored()])?;
        if !found {
            return Err(version_not_found(function, version));
        }
    }
    Ok(())
}

fn write_alias(tx: &Transaction<'_>, a: &Alias) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT OR REPLACE INTO aliases ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![a.function, a.name, a.version.stored(), weights_json(&a.weights), a.description, a.revision_id],
    )?;
    Ok(())
}

impl Store {
    /// One alias (on the invoke path: from the cache once read).
    pub fn alias(&self, function: &str, name: &str) -> Result<Arc<Alias>, StoreError> {
        let mut cache = lock(&self.cache);
        if let Some(alias) = cache.get(function).and_then(|c| c.aliases.get(name)) {
            return Ok(alias.clone());
        }
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM aliases WHERE function = ?1 AND name = ?2"))?;
        let found = stmt.query_row(params![function, name], alias_from_row).optional()?;
        let alias = match found {
            Some(alias) => Arc::new(alias),
            None => {
                drop(stmt);
                let exists = conn.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([function])?;
                return Err(if exists { alias_not_found(function, name) } else { function_not_found(function) });
            }
        };
        cache.entry(function.to_owned()).or_default().aliases.insert(name.to_owned(), alias.clone());
        Ok(alias)
    }

    /// A function's aliases in name order after `marker` (an alias name), those routing to
    /// `version` only if it is given.
    pub fn list_aliases(
        &self,
        function: &str,
        version: Option<Version>,
        marker: Option<&str>,
        max_items: usize,
    ) -> Result<Page<Arc<Alias>>, StoreError> {
        if !self.exists(function)? {
            return Err(function_not_found(function));
        }
        let limit = max_items.clamp(1, limits::MAX_PAGE);
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM aliases WHERE function = ?1 AND name > ?2 ORDER BY name"
        ))?;
        let rows = stmt.query_map(params![function, marker.unwrap_or("")], alias_from_row)?;
        let routes_to = |a: &Alias| version.is_none_or(|v| a.versions().any(|x| x == v));
        Page::collect(rows, limit, |_, a| routes_to(a), |a| a.name.clone())
    }

    /// Creates an alias; the function and the versions it routes to must exist.
    pub fn create_alias(&self, function: &str, new: NewAlias) -> Result<Arc<Alias>, StoreError> {
        let alias = Alias {
            function: function.to_owned(),
            name: new.name,
            version: new.version,
            weights: new.weights,
            description: new.description,
            revision_id: random_uuid(),
        };
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        check_targets(&tx, function, &alias)?;
        let taken = tx
            .prepare_cached("SELECT 1 FROM aliases WHERE function = ?1 AND name = ?2")?
            .exists(params![function, alias.name])?;
        if taken {
            return Err(StoreError::Exists(format!("Alias already exists: {}", alias.arn())));
        }
        write_alias(&tx, &alias)?;
        tx.commit()?;
        self.invalidate(function);
        Ok(Arc::new(alias))
    }

    /// Changes an alias. `revision_id`, when given, must be the current one.
    pub fn update_alias(
        &self,
        function: &str,
        name: &str,
        patch: AliasPatch,
        revision_id: Option<&str>,
    ) -> Result<Arc<Alias>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM aliases WHERE function = ?1 AND name = ?2"),
                params![function, name],
                alias_from_row,
            )
            .optional()?;
        let Some(mut alias) = found else {
            let exists = tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([function])?;
            return Err(if exists { alias_not_found(function, name) } else { function_not_found(function) });
        };
        check_revision(&alias.revision_id, revision_id)?;
        alias.version = patch.version.unwrap_or(alias.version);
        alias.weights = patch.weights.unwrap_or(alias.weights);
        alias.description = patch.description.unwrap_or(alias.description);
        alias.revision_id = random_uuid();
        check_targets(&tx, function, &alias)?;
        write_alias(&tx, &alias)?;
        tx.commit()?;
        self.invalidate(function);
        Ok(Arc::new(alias))
    }

    /// Deletes an alias and its provisioned concurrency; one that does not exist is not an
    /// error.
    pub fn delete_alias(&self, function: &str, name: &str) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([function])? {
            return Err(function_not_found(function));
        }
        tx.execute("DELETE FROM aliases WHERE function = ?1 AND name = ?2", params![function, name])?;
        super::delete_owned(&tx, function, Some(name))?;
        tx.commit()?;
        self.invalidate(function);
        Ok(())
    }
}
