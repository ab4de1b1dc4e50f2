//! The Switchboard runtime's gRPC API (`switchboard.runtime.v1`), generated from
//! `proto/switchboard/runtime/v1/runtime.proto`. Clients (a helpdesk backend) and the runtime's
//! server both use these types.
#![allow(missing_docs, unused_qualifications, missing_debug_implementations)]

/// `switchboard.runtime.v1` messages and services.
pub mod v1 {
    tonic::include_proto!("switchboard.runtime.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("switchboard_runtime_descriptor");
