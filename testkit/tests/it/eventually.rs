//! eventually.
