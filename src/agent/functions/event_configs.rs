//! Event invoke configs (Put/Get/Update/Delete/ListFunctionEventInvokeConfig(s)): how one
//! qualifier's asynchronous invocations are retried and where their outcomes go. The queue
//! reads them when an attempt is decided, so a change applies to events already queued.

use std::sync::Arc;

use super::{Control, Error};
use crate::agent::ids::{self, FunctionRef, LATEST};
use crate::agent::store::queue::EventConfig;
use crate::agent::store::Page;

/// What a Put or an Update sets (values checked by `validate`). For an Update, `None` keeps
/// the current value; a destination of `Some(None)` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventConfigInput {
    /// `MaximumRetryAttempts`.
    pub max_retries: Option<u32>,
    /// `MaximumEventAgeInSeconds`.
    pub max_age_s: Option<u32>,
    /// `DestinationConfig.OnSuccess`.
    pub on_success: Option<Option<String>>,
    /// `DestinationConfig.OnFailure`.
    pub on_failure: Option<Option<String>>,
}

fn no_config(function: &str, qualifier: &str) -> Error {
    Error::NotFound(format!(
        "The function {} doesn't have an EventInvokeConfig",
        ids::qualified_arn(function, qualifier)
    ))
}

impl Control {
    /// The qualifier a config is kept under (`$LATEST` when none is named), once the
    /// function, version or alias is known to exist.
    fn config_qualifier(&self, r: &FunctionRef) -> Result<String, Error> {
        self.get(r)?;
        Ok(r.qualifier.as_ref().map_or_else(|| LATEST.to_owned(), ToString::to_string))
    }

    /// PutFunctionEventInvokeConfig: replaces the qualifier's config.
    pub async fn put_event_config(&self, r: &FunctionRef, input: EventConfigInput) -> Result<EventConfig, Error> {
        let config = EventConfig {
            function: r.name.clone(),
            qualifier: self.config_qualifier(r)?,
            max_retries: input.max_retries,
            max_age_s: input.max_age_s,
            on_success: input.on_success.flatten(),
            on_failure: input.on_failure.flatten(),
            last_modified_ms: ids::unix_ms(),
        };
        let stored = config.clone();
        self.blocking(move |s| Ok(s.put_event_config(&stored)?)).await?;
        Ok(config)
    }

    /// UpdateFunctionEventInvokeConfig: changes what the input sets.
    pub async fn update_event_config(&self, r: &FunctionRef, input: EventConfigInput) -> Result<EventConfig, Error> {
        let qualifier = self.config_qualifier(r)?;
        let (name, q) = (r.name.clone(), qualifier.clone());
        let updated = self
            .blocking(move |s| {
                Ok(s.update_event_config(&name, &q, |c| {
                    c.max_retries = input.max_retries.or(c.max_retries);
                    c.max_age_s = input.max_age_s.or(c.max_age_s);
                    if let Some(d) = input.on_success {
                        c.on_success = d;
                    }
                    if let Some(d) = input.on_failure {
                        c.on_failure = d;
                    }
                    c.last_modified_ms = ids::unix_ms();
                })?)
            })
            .await?;
        updated.ok_or_else(|| no_config(&r.name, &qualifier))
    }

    /// GetFunctionEventInvokeConfig.
    pub fn event_config(&self, r: &FunctionRef) -> Result<EventConfig, Error> {
        let qualifier = self.config_qualifier(r)?;
        self.store.event_config(&r.name, &qualifier)?.ok_or_else(|| no_config(&r.name, &qualifier))
    }

    /// DeleteFunctionEventInvokeConfig.
    pub async fn delete_event_config(&self, r: &FunctionRef) -> Result<(), Error> {
        let qualifier = self.config_qualifier(r)?;
        let (name, q) = (r.name.clone(), qualifier.clone());
        if self.blocking(move |s| Ok(s.delete_event_config(&name, &q)?)).await? {
            Ok(())
        } else {
            Err(no_config(&r.name, &qualifier))
        }
    }

    /// ListFunctionEventInvokeConfigs.
    pub fn list_event_configs(
        &self,
        function: &str,
        marker: Option<&str>,
        max: usize,
    ) -> Result<Page<Arc<EventConfig>>, Error> {
        self.meta(function)?;
        Ok(self.store.list_event_configs(function, marker, max)?)
    }
}
