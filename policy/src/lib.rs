//! The Wardline policy language as code: documents, validation, compilation
//! to dataplane tables and the reference verdict. Pure: no I/O.
#![forbid(unsafe_code)]

pub mod compile;
pub mod error;
pub mod model;
pub mod name;
pub mod nodes;
pub mod packet;
pub mod parse;
pub mod reference;
pub mod yaml;

pub use compile::{CompileOptions, Dataplane, Schedule};
pub use error::{PolicyError, PolicyErrors};
pub use model::*;
pub use name::{NameError, NameProblem, NodeName};
pub use parse::{SourceDocument, documents, parse, validate};
