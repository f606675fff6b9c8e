//! Ember: run serverless functions in KVM microVMs, the way AWS Lambda does.
//!
//! The library holds the VMM (`vmm`), which boots one microVM per process, and the benchmarks
//! (`bench`) that measure it. The `ember` binary (src/main.rs) is the command-line front end.
#![deny(missing_docs)]

pub mod agent;
pub mod bench;
pub mod vmm;
