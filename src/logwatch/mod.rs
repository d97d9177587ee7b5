//! The `messages` log input: following the file and matching its lines.

pub mod clock;
pub mod filter;
pub mod host;
pub mod lines;
pub mod prefix;
pub mod rule;
pub mod scan;
pub mod tail;
pub mod testlog;
