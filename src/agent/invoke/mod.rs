//! The invoke path: from a function reference to the version that runs (an alias picks one
//! of its versions by weight), checked that it can run, then the pool. Hot: store reads come
//! from its cache, nothing blocks.
//!
//! Asynchronous invocations go through [`queue`] (durable, retried by [`retry`]'s rules, their
//! outcomes sent to [`destinations`]).

pub mod destinations;
pub mod queue;
pub mod retry;

use std::sync::Arc;

use super::ids::{self, FunctionRef, Qualifier, Version};
use super::pool::{InvokeOutput, InvokeRequest, Pool, PoolError};
use super::store::{Alias, FunctionConfig, State, Store, StoreError};

/// Why an invocation did not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such function, version or alias.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A SnapStart version whose snapshot is not ready yet.
    #[error(
        "Lambda is initializing your function. You can invoke the function when the state of the function is Active."
    )]
    NotReady,
    /// A version that could not be prepared.
    #[error("The operation cannot be performed at this time. The function is currently in the following state: Failed{}", .0.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Failed(Option<String>),
    /// The pool could not run it.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// The version one invocation runs, and the ARN it was invoked by.
#[derive(Debug, Clone)]
pub struct Target {
    /// The version's configuration.
    pub function: Arc<FunctionConfig>,
    /// The ARN the caller used, qualifier included (what the runtime is told).
    pub invoked_arn: String,
}

/// Picks an alias's version for one invocation: `r` (uniform in `[0, 1)`) falls into one of
/// the additional versions' weights, laid end to end, or else the alias's own version.
pub fn pick(alias: &Alias, r: f64) -> Version {
    let mut upto = 0.0;
    for (version, weight) in &alias.weights {
        upto += weight;
        if r < upto {
            return *version;
        }
    }
    alias.version
}

/// Resolves references and runs invocations.
#[derive(Clone)]
pub struct Invoker {
    store: Arc<Store>,
    pool: Pool,
}

impl Invoker {
    /// Invocations of `store`'s functions on `pool`.
    pub fn new(store: Arc<Store>, pool: Pool) -> Invoker {
        Invoker { store, pool }
    }

    /// The version `r` runs now: for an alias, one of its versions by weight.
    pub fn resolve(&self, r: &FunctionRef) -> Result<Target, Error> {
        let (version, invoked_arn) = match &r.qualifier {
            None => (Version::LATEST, ids::function_arn(&r.name)),
            Some(Qualifier::Version(v)) => (*v, ids::qualified_arn(&r.name, v)),
            Some(Qualifier::Alias(a)) => {
                let alias = self.store.alias(&r.name, a)?;
                (pick(&alias, ids::random_fraction()), alias.arn())
            }
        };
        let function = self.store.get(&r.name, version)?;
        match function.state {
            State::Active => Ok(Target { function, invoked_arn }),
            State::Pending => Err(Error::NotReady),
            State::Failed => Err(Error::Failed(function.state_reason.clone())),
        }
    }

    /// Runs one invocation of `target` to its end (on a task of its own, so that a caller
    /// that goes away does not cut it short: the instance and its accounting are released
    /// when it is over, as on Lambda, where the invocation runs on).
    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeOutput, Error> {
        let pool = self.pool.clone();
        match tokio::spawn(async move { pool.invoke(req).await }).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(Error::Pool(PoolError::Host(format!("the invocation's task failed: {e}")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alias(weights: &[(u32, f64)]) -> Alias {
        Alias {
            function: "f".into(),
            name: "live".into(),
            version: Version::published(1),
            weights: weights.iter().map(|(v, w)| (Version::published(*v), *w)).collect::<BTreeMap<_, _>>(),
            description: String::new(),
            revision_id: String::new(),
        }
    }

    #[test]
    fn an_alias_picks_by_weight() {
        let (v1, v2) = (Version::published(1), Version::published(2));
        let a = alias(&[(2, 0.3)]);
        assert_eq!(pick(&a, 0.0), v2);
        assert_eq!(pick(&a, 0.299), v2);
        assert_eq!(pick(&a, 0.3), v1);
        assert_eq!(pick(&a, 0.999), v1);
        assert_eq!(pick(&alias(&[]), 0.5), v1);
        assert_eq!(pick(&alias(&[(2, 1.0)]), 0.999), v2);
        assert_eq!(pick(&alias(&[(2, 0.0)]), 0.0), v1);
        // Over many draws the share follows the weight.
        let runs = 20_000;
        let second = (0..runs).filter(|_| pick(&a, ids::random_fraction()) == v2).count();
        let share = second as f64 / f64::from(runs);
        assert!((0.27..0.33).contains(&share), "{share}");
    }
}
