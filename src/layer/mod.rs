//! idemgate's own layers, one stage each, in the order a request meets them (see [`crate::stack`]).

pub mod body;
pub mod report;
pub mod route;
pub mod verify;
