//! A Go library built for another ABI version is refused with both versions named. Its own test
//! binary, because loading it starts a Go runtime and a process gets only one.

use weft_runtime::{LoadError, Runtime, RuntimeOptions};

#[test]
fn other_abi_version_is_refused_and_names_both_versions() {
    let lib = weft_test_support::go_library("abi99");
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    let err = rt.load_library("abi99", lib).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::AbiVersion {
                plugin: 99,
                host: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("ABI version 99") && msg.contains("ABI version 1"), "{msg}");
    assert!(msg.contains("libweft_plugins_abi99.so"), "{msg}");

    // Its Go runtime is now running, so the good library is a second Go runtime: refused too.
    let good = weft_test_support::go_library("main");
    let err = rt.load_library("main", good).unwrap_err();
    assert!(matches!(err, LoadError::SecondGoRuntime { .. }), "{err:?}");
}
