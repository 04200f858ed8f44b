//! Committing sealed epochs: when commits are cut, the manifest chain and the committer operator.

pub mod cut;
pub mod manifest;
pub mod offsets;
pub mod operator;
