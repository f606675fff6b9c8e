//! Every Lambda limit the agent enforces, once. Validation lives with the use cases
//! (`functions::validate`); the numbers live here.

use std::ops::RangeInclusive;

/// The runtimes SnapStart is refused on, as Lambda refuses it (Node.js: Lambda has no SnapStart
/// for it).
pub const NO_SNAP_START: [&str; 1] = ["nodejs20.x"];

/// Memory, MB.
pub const MEMORY_MIB: RangeInclusive<u32> = 128..=10_240;
/// Memory when none is given, MB.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// Timeout, s.
pub const TIMEOUT_S: RangeInclusive<u32> = 1..=900;
/// Timeout when none is given, s.
pub const DEFAULT_TIMEOUT_S: u32 = 3;
/// /tmp, MB.
pub const EPHEMERAL_MIB: RangeInclusive<u32> = 512..=10_240;
/// /tmp when none is given, MB.
pub const DEFAULT_EPHEMERAL_MIB: u32 = 512;
/// Memory per whole vCPU, MB: a function gets one vCPU's CPU time per this much memory.
pub const MB_PER_VCPU: u32 = 1769;
/// The most vCPUs a function gets.
pub const MAX_VCPUS: u32 = 6;

/// The largest synchronous invocation payload, each way (6 MB).
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// The largest asynchronous (`Event`) invocation payload (1 MB).
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// `MaximumRetryAttempts` of an asynchronous invocation.
pub const ASYNC_RETRIES: RangeInclusive<u32> = 0..=2;
/// `MaximumEventAgeInSeconds` of an asynchronous invocation.
pub const ASYNC_EVENT_AGE_S: RangeInclusive<u32> = 60..=21_600;
/// The largest response a function may return.
pub const MAX_RESPONSE_BYTES: usize = MAX_SYNC_PAYLOAD;

/// The largest zip uploaded directly (50 MB).
pub const MAX_ZIPPED_BYTES: usize = 50 * 1024 * 1024;
/// The largest unzipped size of a function's code and all its layers together (250 MB).
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
/// The largest request that carries a zip: 50 MB in base64, with room for the JSON around it.
pub const MAX_CODE_REQUEST: usize = 69_905_067;
/// The largest request of any other control operation.
pub const MAX_CONTROL_REQUEST: usize = 1024 * 1024;
/// The most code all functions, versions and layers may store together (Lambda's 75 GB).
pub const TOTAL_CODE_BYTES: u64 = 75 * 1024 * 1024 * 1024;

/// The environment, measured as its JSON.
pub const MAX_ENV_BYTES: usize = 4096;
/// Descriptions of functions, versions, aliases and layers.
pub const MAX_DESCRIPTION: usize = 256;
/// A layer's `LicenseInfo`.
pub const MAX_LICENSE: usize = 512;
/// Layers one function uses.
pub const MAX_LAYERS: usize = 5;
/// A handler's length.
pub const MAX_HANDLER: usize = 128;
/// Tags on one function.
pub const MAX_TAGS: usize = 50;
/// A tag key's length.
pub const MAX_TAG_KEY: usize = 128;
/// A tag value's length.
pub const MAX_TAG_VALUE: usize = 256;

/// Items in one page of a list operation, at most.
pub const MAX_PAGE: usize = 50;
/// What a list operation's `MaxItems` may ask for (more is served as pages of [`MAX_PAGE`]).
pub const MAX_ITEMS: usize = 10_000;

/// How long a boot plus the runtime's init may take by default (Lambda's init phase).
pub const INIT_TIMEOUT_S: u64 = 10;

/// vCPUs in proportion to memory: one per [`MB_PER_VCPU`], rounded up, at most [`MAX_VCPUS`].
pub fn vcpus_for(memory_mib: u32) -> u8 {
    memory_mib.div_ceil(MB_PER_VCPU).clamp(1, MAX_VCPUS) as u8
}

/// An event source mapping's `BatchSize` for a queue, and its default.
pub const ESM_BATCH_SIZE: RangeInclusive<u32> = 1..=10_000;
/// The default `BatchSize` for a queue.
pub const ESM_DEFAULT_BATCH_SIZE: u32 = 10;
/// `MaximumBatchingWindowInSeconds`.
pub const ESM_BATCHING_WINDOW_S: RangeInclusive<u32> = 0..=300;
/// `ScalingConfig.MaximumConcurrency` for a queue.
pub const ESM_MAX_CONCURRENCY: RangeInclusive<u32> = 2..=1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_follow_memory() {
        assert_eq!(vcpus_for(128), 1);
        assert_eq!(vcpus_for(1769), 1);
        assert_eq!(vcpus_for(1770), 2);
        assert_eq!(vcpus_for(10240), 6);
    }
}
