//! Layers: the `layers` table (one row a layer version: its zip, by content, and what
//! PublishLayerVersion was told) and `layer_names` (the next version number of each layer
//! name, so that numbers are never reused).
//!
//! A function version refers to its layers by value ([`LayerRef`]: ARN, sizes, digest) and
//! to their merged image, so deleting a layer version leaves the functions that use it working.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{from_json, lock, Page, Store, StoreError};
use crate::agent::ids::{self, layer_version_arn};
use crate::agent::limits;

/// A layer version as a function uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Its layer version ARN.
    pub arn: String,
    /// The zip's size.
    pub code_size: u64,
    /// Its unzipped size.
    pub unzipped: u64,
    /// The hex sha256 of its zip.
    pub hex: String,
}

/// A layer version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerVersion {
    /// The layer's name.
    pub name: String,
    /// Its number, from 1.
    pub version: u32,
    /// The hex sha256 of its zip.
    pub hex: String,
    /// Lambda's `CodeSha256`.
    pub code_sha256: String,
    /// The zip's size.
    pub code_size: u64,
    /// Its unzipped size.
    pub unzipped: u64,
    /// Free text.
    pub description: String,
    /// `LicenseInfo`.
    pub license: String,
    /// `CompatibleRuntimes`.
    pub runtimes: Vec<String>,
    /// `CompatibleArchitectures`.
    pub architectures: Vec<String>,
    /// When it was published, as Lambda writes it.
    pub created: String,
}

impl LayerVersion {
    /// Its layer version ARN.
    pub fn arn(&self) -> String {
        layer_version_arn(&self.name, self.version)
    }

    fn to_ref(&self) -> LayerRef {
        LayerRef { arn: self.arn(), code_size: self.code_size, unzipped: self.unzipped, hex: self.hex.clone() }
    }
}

/// A layer version to publish (already validated, but for its zip).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewLayerVersion {
    /// See [`LayerVersion`].
    pub description: String,
    /// See [`LayerVersion`].
    pub license: String,
    /// See [`LayerVersion`].
    pub runtimes: Vec<String>,
    /// See [`LayerVersion`].
    pub architectures: Vec<String>,
}

const COLUMNS: &str =
    "name, version, hex, code_b64, code_size, unzipped, description, license, runtimes, architectures, created";

fn layer_from_row(row: &Row<'_>) -> rusqlite::Result<LayerVersion> {
    let runtimes: String = row.get("runtimes")?;
    let architectures: String = row.get("architectures")?;
    Ok(LayerVersion {
        name: row.get("name")?,
        version: row.get("version")?,
        hex: row.get("hex")?,
        code_sha256: row.get("code_b64")?,
        code_size: row.get::<_, i64>("code_size")? as u64,
        unzipped: row.get::<_, i64>("unzipped")? as u64,
        description: row.get("description")?,
        license: row.get("license")?,
        runtimes: from_json(&runtimes),
        architectures: from_json(&architectures),
        created: row.get("created")?,
    })
}

fn layer_not_found(name: &str, version: u32) -> StoreError {
    StoreError::NotFound(format!("Layer version {} does not exist.", layer_version_arn(name, version)))
}

/// `name:version` of a layer version ARN of this account and region.
fn parse_layer_arn(arn: &str) -> Option<(&str, u32)> {
    let rest = arn.strip_prefix("arn:")?;
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [partition, "lambda", region, account, "layer", name, version]
            if partition.starts_with("aws") && *region == ids::region() && *account == ids::ACCOUNT_ID =>
        {
            let version = version.parse().ok().filter(|v| *v >= 1)?;
            Some((name, version))
        }
        _ => None,
    }
}

impl Store {
    /// Stores a layer's zip and publishes it as the layer's next version.
    pub fn publish_layer(&self, name: &str, zip: &[u8], new: NewLayerVersion) -> Result<Arc<LayerVersion>, StoreError> {
        let blob = self.put_layer_zip(zip)?;
        let layer = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let next: u32 = tx
                .query_row("SELECT next_version FROM layer_names WHERE name = ?1", [name], |r| r.get(0))
                .optional()?
                .unwrap_or(1);
            let layer = LayerVersion {
                name: name.to_owned(),
                version: next,
                hex: blob.stem.clone(),
                code_sha256: blob.b64.clone(),
                code_size: blob.size,
                unzipped: blob.unzipped,
                description: new.description,
                license: new.license,
                runtimes: new.runtimes,
                architectures: new.architectures,
                created: ids::now(),
            };
            tx.execute(
                "INSERT INTO layer_names (name, next_version) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET next_version = ?2",
                params![name, next + 1],
            )?;
            tx.execute(
                &format!("INSERT INTO layers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    layer.name,
                    layer.version,
                    layer.hex,
                    layer.code_sha256,
                    layer.code_size as i64,
                    layer.unzipped as i64,
                    layer.description,
                    layer.license,
                    serde_json::to_string(&layer.runtimes).expect("a list serializes"),
                    serde_json::to_string(&layer.architectures).expect("a list serializes"),
                    layer.created,
                ],
            )?;
            tx.commit()?;
            layer
        };
        drop(blob);
        Ok(Arc::new(layer))
    }

    /// One layer version.
    pub fn layer(&self, name: &str, version: u32) -> Result<Arc<LayerVersion>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM layers WHERE name = ?1 AND version = ?2"))?;
        let found = stmt.query_row(params![name, version], layer_from_row).optional()?;
        found.map(Arc::new).ok_or_else(|| layer_not_found(name, version))
    }

    /// One layer version by its ARN.
    pub fn layer_by_arn(&self, arn: &str) -> Result<Arc<LayerVersion>, StoreError> {
        let (name, version) =
            parse_layer_arn(arn).ok_or_else(|| StoreError::NotFound(format!("Layer version {arn} does not exist.")))?;
        self.layer(name, version)
    }

    /// The layer versions of these ARNs, in order, as a function refers to them.
    pub(super) fn resolve_layers(&self, arns: &[String]) -> Result<Vec<LayerRef>, StoreError> {
        arns.iter()
            .map(|arn| match self.layer_by_arn(arn) {
                Ok(layer) => Ok(layer.to_ref()),
                Err(StoreError::NotFound(_)) => {
                    Err(StoreError::Invalid(format!("Layer version {arn} does not exist.")))
                }
                Err(e) => Err(e),
            })
            .collect()
    }

    /// The versions of a layer, newest first, after `marker` (a version number), those
    /// compatible with `runtime` and `architecture` only if given.
    pub fn list_layer_versions(
        &self,
        name: &str,
        runtime: Option<&str>,
        architecture: Option<&str>,
        marker: Option<&str>,
        max_items: usize,
    ) -> Result<Page<Arc<LayerVersion>>, StoreError> {
        let limit = max_items.clamp(1, limits::MAX_PAGE);
        let before: u32 = match marker {
            None => u32::MAX,
            Some(m) => m.parse().map_err(|_| StoreError::Invalid(format!("Invalid Marker: {m}")))?,
        };
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM layers WHERE name = ?1 AND version < ?2 ORDER BY version DESC"
        ))?;
        let rows = stmt.query_map(params![name, before], layer_from_row)?;
        Page::collect(rows, limit, |_, l| compatible(l, runtime, architecture), |l| l.version.to_string())
    }

    /// Every layer with its newest version (compatible with `runtime` and `architecture` if
    /// given), in name order after `marker` (a layer name).
    pub fn list_layers(
        &self,
        runtime: Option<&str>,
        architecture: Option<&str>,
        marker: Option<&str>,
        max_items: usize,
    ) -> Result<Page<Arc<LayerVersion>>, StoreError> {
        let limit = max_items.clamp(1, limits::MAX_PAGE);
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM layers WHERE name > ?1 ORDER BY name, version DESC"))?;
        let rows = stmt.query_map([marker.unwrap_or("")], layer_from_row)?;
        // Rows come newest first within a name: the first compatible one of each name is kept.
        let newest = |kept: &[Arc<LayerVersion>], l: &LayerVersion| {
            kept.last().is_none_or(|last| last.name != l.name) && compatible(l, runtime, architecture)
        };
        Page::collect(rows, limit, newest, |l| l.name.clone())
    }

    /// Deletes a layer version. The functions that use it keep working: their merged /opt
    /// image holds its files. Its zip goes once no layer version refers to it. Returns whether
    /// it existed.
    pub fn delete_layer(&self, name: &str, version: u32) -> Result<bool, StoreError> {
        let hex = {
            let mut conn = lock(&self.writer);
            let tx = conn.transaction()?;
            let hex: Option<String> = tx
                .query_row("SELECT hex FROM layers WHERE name = ?1 AND version = ?2", params![name, version], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.execute("DELETE FROM layers WHERE name = ?1 AND version = ?2", params![name, version])?;
            tx.commit()?;
            hex
        };
        let existed = hex.is_some();
        if let Some(hex) = hex {
            self.collect(&[hex])?;
        }
        Ok(existed)
    }
}

fn compatible(layer: &LayerVersion, runtime: Option<&str>, architecture: Option<&str>) -> bool {
    runtime.is_none_or(|r| layer.runtimes.iter().any(|x| x == r))
        && architecture.is_none_or(|a| layer.architectures.iter().any(|x| x == a))
}
