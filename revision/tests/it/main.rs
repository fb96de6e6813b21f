//! Revision integration tests: parsing, linting, planning (data-driven and property tests).

mod big;
mod guard;
mod lint;
mod parse;
mod plan;
mod prop;
