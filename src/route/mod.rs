//! Pure routing: what a statement is ([`classify`]) and where it goes ([`router`]).

pub mod catalog;
pub mod class;
pub mod classify;
pub mod lexer;
pub mod router;
