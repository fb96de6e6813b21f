//! Revision integration tests: parsing, linting, planning (data-driven and property tests).

mod lint;
mod parse;
mod plan;
mod prop;
