//! Writing epochs as Parquet objects.

pub mod encode;
pub mod operator;
pub mod upload;
