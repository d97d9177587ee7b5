//! The `messages` log input: following the file and matching its lines.

pub mod filter;
pub mod tail;
