//! Writing epochs as Parquet objects.

pub mod encode;
pub mod upload;
