//! The ingest service over loopback: a real server on a free port over the embedded log in
//! a temporary folder, driven by a plain HTTP/1.1 client and the generated gRPC client.

mod auth;
mod backpressure;
mod bad_input;
mod grpc;
mod http;
mod metrics;
mod routes;
mod sandbox;
mod slow_clients;
