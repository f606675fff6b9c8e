//! Function URLs as stored (`function_urls`): one per function (`qualifier` empty) or alias,
//! with its URL id (the `<url-id>` of `<url-id>.lambda-url.<region>.on.aws`), auth type, CORS
//! (JSON, as given) and invoke mode.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row};

use super::{function_not_found, lock, Page, Store, StoreError};

/// One function URL's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlConfig {
    /// The function.
    pub function: String,
    /// The alias, or empty for the function itself (`$LATEST`).
    pub qualifier: String,
    /// The URL id: 32 lower-case letters and digits.
    pub url_id: String,
    /// `NONE` (the only one served for now).
    pub auth_type: String,
    /// `Cors`, as given (an object, or null).
    pub cors: serde_json::Value,
    /// `BUFFERED`.
    pub invoke_mode: String,
    /// `CreationTime`.
    pub created: String,
    /// `LastModifiedTime`.
    pub last_modified: String,
}

const COLUMNS: &str = "function, qualifier, url_id, auth_type, cors, invoke_mode, created, last_modified";

fn row(r: &Row<'_>) -> rusqlite::Result<UrlConfig> {
    Ok(UrlConfig {
        function: r.get(0)?,
        qualifier: r.get(1)?,
        url_id: r.get(2)?,
        auth_type: r.get(3)?,
        cors: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        invoke_mode: r.get(5)?,
        created: r.get(6)?,
        last_modified: r.get(7)?,
    })
}

impl Store {
    /// Stores a new function URL; `Exists` if the qualifier has one.
    pub fn create_url(&self, url: &UrlConfig) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        if !tx.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.exists([&url.function])? {
            return Err(function_not_found(&url.function));
        }
        let exists = tx
            .prepare_cached("SELECT 1 FROM function_urls WHERE function = ?1 AND qualifier = ?2")?
            .exists([&url.function, &url.qualifier])?;
        if exists {
            return Err(StoreError::Exists(format!(
                "Failed to create function url config for [functionArn = {}]. Error message:  FunctionUrlConfig exists \
                 for this Lambda function",
                crate::agent::ids::function_arn(&url.function)
            )));
        }
        tx.execute(
            &format!("INSERT INTO function_urls ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![
                url.function,
                url.qualifier,
                url.url_id,
                url.auth_type,
                url.cors.to_string(),
                url.invoke_mode,
                url.created,
                url.last_modified
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A function's (or alias's) URL, if it has one.
    pub fn url(&self, function: &str, qualifier: &str) -> Result<Option<UrlConfig>, StoreError> {
        let conn = lock(&self.reader);
        let found = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM function_urls WHERE function = ?1 AND qualifier = ?2"))?
            .query_row([function, qualifier], row)
            .optional()?;
        Ok(found)
    }

    /// The URL with this id, if any (the URL listener's lookup).
    pub fn url_by_id(&self, url_id: &str) -> Result<Option<UrlConfig>, StoreError> {
        let conn = lock(&self.reader);
        let found = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM function_urls WHERE url_id = ?1"))?
            .query_row([url_id], row)
            .optional()?;
        Ok(found)
    }

    /// Changes a URL with `change` in one transaction; `None` if there is none.
    pub fn update_url(
        &self,
        function: &str,
        qualifier: &str,
        change: impl FnOnce(&mut UrlConfig),
    ) -> Result<Option<UrlConfig>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM function_urls WHERE function = ?1 AND qualifier = ?2"),
                [function, qualifier],
                row,
            )
            .optional()?;
        let Some(mut url) = found else { return Ok(None) };
        change(&mut url);
        tx.execute(
            "UPDATE function_urls SET auth_type = ?3, cors = ?4, invoke_mode = ?5, last_modified = ?6 WHERE function = \
             ?1 AND qualifier = ?2",
            params![function, qualifier, url.auth_type, url.cors.to_string(), url.invoke_mode, url.last_modified],
        )?;
        tx.commit()?;
        Ok(Some(url))
    }

    /// Deletes a URL; whether there was one.
    pub fn delete_url(&self, function: &str, qualifier: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.writer);
        Ok(conn.execute("DELETE FROM function_urls WHERE function = ?1 AND qualifier = ?2", [function, qualifier])? > 0)
    }

    /// A page of a function's URLs, by qualifier, after `marker`.
    pub fn list_urls(
        &self,
        function: &str,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<UrlConfig>>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM function_urls WHERE function = ?1 AND qualifier > ?2 ORDER BY qualifier"
        ))?;
        // The function's own URL has the empty qualifier: a marker of "" would skip it.
        let rows = match marker {
            Some(m) => stmt.query_map(params![function, m], row)?.collect::<Vec<_>>(),
            None => {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM function_urls WHERE function = ?1 ORDER BY qualifier"
                ))?;
                let rows = stmt.query_map([function], row)?.collect::<Vec<_>>();
                rows
            }
        };
        Page::collect(rows.into_iter(), max, |_, _| true, |u| u.qualifier.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_function, python_zip, temp_dir};
    use super::*;

    fn url(function: &str, qualifier: &str, id: &str) -> UrlConfig {
        UrlConfig {
            function: function.into(),
            qualifier: qualifier.into(),
            url_id: id.into(),
            auth_type: "NONE".into(),
            cors: serde_json::json!({"AllowOrigins": ["*"]}),
            invoke_mode: "BUFFERED".into(),
            created: "c".into(),
            last_modified: "c".into(),
        }
    }

    #[test]
    fn urls_are_one_per_qualifier_found_by_id_and_go_with_their_function() {
        let dir = temp_dir("urls");
        let store = Store::open(&dir).unwrap();
        assert!(matches!(store.create_url(&url("f", "", "a")), Err(StoreError::NotFound(_))));
        store.create(new_function("f"), &python_zip("a"), false).unwrap();
        store.create_url(&url("f", "", "aaaa")).unwrap();
        assert!(matches!(store.create_url(&url("f", "", "bbbb")), Err(StoreError::Exists(_))));
        store.create_url(&url("f", "live", "cccc")).unwrap();
        assert_eq!(store.url_by_id("cccc").unwrap().unwrap().qualifier, "live");
        assert_eq!(store.url("f", "").unwrap().unwrap().cors["AllowOrigins"][0], "*");
        let page = store.list_urls("f", None, 1).unwrap();
        assert_eq!((page.items[0].qualifier.as_str(), page.next_marker.as_deref()), ("", Some("")));
        let next = store.list_urls("f", page.next_marker.as_deref(), 1).unwrap();
        assert_eq!((next.items[0].qualifier.as_str(), next.next_marker), ("live", None));
        let updated = store.update_url("f", "", |u| u.cors = serde_json::Value::Null).unwrap().unwrap();
        assert_eq!(updated.cors, serde_json::Value::Null);
        assert_eq!(store.url("f", "").unwrap().unwrap().cors, serde_json::Value::Null);
        assert!(store.delete_url("f", "live").unwrap());
        assert!(!store.delete_url("f", "live").unwrap());
        store.delete_function("f").unwrap();
        assert_eq!(store.url_by_id("aaaa").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
