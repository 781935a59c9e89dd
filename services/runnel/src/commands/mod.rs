//! The CLI's commands, one module each; what several share lives beside them in the crate
//! (`client`: reaching a service; `input`: reading a file of events; `terminal`: progress
//! bars and names shown to the user).

pub(crate) mod archive;
pub(crate) mod backfill;
pub(crate) mod demo;
pub(crate) mod health;
pub(crate) mod ingest;
pub(crate) mod log;
pub(crate) mod query;
pub(crate) mod run;
