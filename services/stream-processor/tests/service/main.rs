//! The stream-processor in process on an embedded log in a temporary folder. One test
//! binary for the crate.
//!
//! - `status`: the status endpoint, fetched over real HTTP on loopback, reports what the
//!   service did, matching what is in the log.
//! - `idle`: a silent source partition stops holding back a repartitioned job's watermark
//!   once it has been idle for the job's `idle-timeout`, and holds it back without one.
//! - `joins`: a join job (clicks as of a users table) across a restart: the table and its
//!   changelog offsets come back from the checkpoint; a late changelog row goes to the late
//!   topic.
//! - `isolation`: a poison event goes to its job's late topic and a failing job is given up
//!   after bounded restarts, while the other jobs and the service go on.

mod idle;
mod isolation;
mod joins;
mod status;
