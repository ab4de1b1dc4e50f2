//! AdapterPatch controller parts.

pub mod rollout;
