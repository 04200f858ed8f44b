//! Committing sealed epochs: the manifest chain and the committer operator.

pub mod manifest;
