//! Wire types of the earlier systems' APIs that Gustavo serves, so their shapes and quirks are
//! parsed and tested without a server.

pub mod glances;
pub mod samsung;
pub mod sinfonia;
