//! Writing sealed epochs as Parquet objects, one per commit and (stream, kind, hour).

pub mod encode;
mod object;
pub mod operator;
pub mod upload;
