//! `tether wait` as a user runs it: the real binary, real sockets and
//! servers, real signals. Asserts exit codes, NDJSON events and the words of
//! the diagnosis.

mod support;
mod wait;
