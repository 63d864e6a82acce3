//! The Go SDK's test host (`wefttest`) refuses the same reserved headers as the real host, so a
//! plugin that passes its `go test` is not refused in production for a header it sets.

use std::collections::BTreeSet;

use weft_runtime::mutation::RESERVED;

#[test]
fn wefttest_reserves_the_hosts_headers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../cgo/weft/wefttest/mutations.go");
    let go = std::fs::read_to_string(path).unwrap();
    let start = go
        .find("var reservedHeaders = map[string]bool{")
        .expect("reservedHeaders in mutations.go");
    let block = &go[start..start + go[start..].find("\n}").expect("end of reservedHeaders")];
    let go_names: BTreeSet<&str> = block.split('"').skip(1).step_by(2).collect();
    let host_names: BTreeSet<&str> = RESERVED.into_iter().collect();
    assert_eq!(
        go_names, host_names,
        "wefttest's reservedHeaders differs from the host's RESERVED"
    );
}
