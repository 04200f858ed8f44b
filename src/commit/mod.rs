//! Committing sealed epochs: the manifest chain and the committer operator.

pub mod manifest;
pub mod offsets;
pub mod operator;
