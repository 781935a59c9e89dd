//! runnel's gRPC APIs, compiled once (`build.rs`, from `proto/`): what the services serve and
//! every client (the CLI, the tests, the benchmarks) calls.
//!
//! - [`common::v1`]: `Value`, the one value type of both APIs (an ingested field, a result
//!   column).
//! - [`ingest::v1`]: `runnel.ingest.v1.Ingest`, events in.
//! - [`serving::v1`]: `runnel.serving.v1.Serving`, results out.
//! - [`client`]: a client's connection to a service: its URL, the certificate to trust, and
//!   the bearer token on every call.
//! - [`grpc_code_name`]: a gRPC code's canonical name, as metrics and messages give it.
#![warn(missing_docs)]

pub mod client;

/// The types both APIs share.
pub mod common {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("runnel.common.v1");
    }
}

/// `runnel.ingest.v1`: events in.
pub mod ingest {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("runnel.ingest.v1");

        /// The encoded descriptor set of `ingest.proto` and its imports, for reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/ingest_descriptor.bin"));
    }
}

/// `runnel.serving.v1`: results out.
pub mod serving {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("runnel.serving.v1");

        /// The encoded descriptor set of `serving.proto` and its imports, for reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/serving_descriptor.bin"));
    }
}

/// The canonical name of a gRPC status code (`INVALID_ARGUMENT`), as the `code` label of the
/// services' metrics and the CLI's messages give it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_have_their_canonical_names() {
        assert_eq!(
            grpc_code_name(tonic::Code::InvalidArgument),
            "INVALID_ARGUMENT"
        );
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
    }
}
