//! Event source mappings' control plane (Create/Get/List/Update/DeleteEventSourceMapping):
//! stored here, consumed by `broker::consume`, which follows the store.

use std::sync::Arc;

use super::{Control, Error};
use crate::agent::store::mappings::Mapping;
use crate::agent::store::Page;

impl Control {
    /// Stores a new mapping (its function must exist; one per queue and target).
    pub async fn create_mapping(&self, m: Mapping) -> Result<(), Error> {
        self.blocking(move |s| Ok(s.create_mapping(&m)?)).await
    }

    /// One mapping.
    pub async fn mapping(&self, uuid: &str) -> Result<Mapping, Error> {
        let uuid = uuid.to_owned();
        self.blocking(move |s| Ok(s.mapping(&uuid)?)).await
    }

    /// A page of mappings, of one function and one source when given.
    pub async fn list_mappings(
        &self,
        function: Option<String>,
        source_arn: Option<String>,
        marker: Option<String>,
        max: usize,
    ) -> Result<Page<Arc<Mapping>>, Error> {
        self.blocking(move |s| {
            Ok(s.list_mappings(function.as_deref(), source_arn.as_deref(), marker.as_deref(), max)?)
        })
        .await
    }

    /// Replaces a mapping with `changed` (the function it names must exist).
    pub async fn update_mapping(&self, changed: Mapping) -> Result<Mapping, Error> {
        self.blocking(move |s| {
            let uuid = changed.uuid.clone();
            s.update_mapping::<Error>(&uuid, |m| {
                *m = changed;
                Ok(())
            })
        })
        .await
    }

    /// Deletes a mapping; returns what it was.
    pub async fn delete_mapping(&self, uuid: &str) -> Result<Mapping, Error> {
        let uuid = uuid.to_owned();
        self.blocking(move |s| Ok(s.delete_mapping(&uuid)?)).await
    }
}
