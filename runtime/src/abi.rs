//! The weft C ABI, re-exported from the `weft-abi` crate (the one source of `include/weft.h`),
//! so `crate::abi::X` and `weft_runtime::abi::X` keep naming the same types.

pub use weft_abi::*;
