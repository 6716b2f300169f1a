// SPDX-License-Identifier: GPL-2.0

//! Host build of `rust/kmcl/wire`: the same source files that `kmcl.ko`
//! compiles, built here as a `no_std` library so that `cargo test` can run
//! them on the build machine.

#![no_std]

#[path = "../../../rust/kmcl/wire/mod.rs"]
mod wire;

pub use wire::*;
