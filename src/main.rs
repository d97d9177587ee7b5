//! The `astban` command line. Business logic lives in the library.

fn main() {}
