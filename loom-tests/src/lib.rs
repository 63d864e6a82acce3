//! Models live in `tests/`; see README.md. Built without `--cfg weft_loom` this crate is empty.
