//! Pure routing: what a statement is ([`classify`]), where it goes ([`router`]),
//! the whole policy for one unit ([`plan`]) and what servers' answers mean for
//! it ([`outcome`]); optimistic transactions ([`optimistic`]).

pub mod catalog;
pub mod class;
pub mod classify;
pub mod lexer;
pub mod optimistic;
pub mod outcome;
pub mod plan;
pub mod router;
