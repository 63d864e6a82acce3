//! The committed include/weft.h, as libclang lays it out (through bindgen), against the
//! `#[repr(C)]` types of `weft-abi`: every struct of the header must exist in `weft_abi` with the
//! same size, alignment and field offsets, and every constant and enum value must agree. A struct
//! added to the header is picked up automatically (build.rs lists them); a header struct the
//! crate lacks fails to compile, naming it; so does a header constant it lacks.

use std::mem::{align_of, offset_of, size_of};

use weft_abi as abi;
use weft_abi_check::header as h;

/// (struct, size C, size Rust, align C, align Rust, [(field, offset C, offset Rust)])
type Layout = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    Vec<(&'static str, usize, usize)>,
);

macro_rules! layout {
    ($name:ident { $($field:ident),* $(,)? }) => {
        (
            stringify!($name),
            size_of::<h::$name>(),
            size_of::<abi::$name>(),
            align_of::<h::$name>(),
            align_of::<abi::$name>(),
            vec![$((stringify!($field), offset_of!(h::$name, $field), offset_of!(abi::$name, $field))),*],
        )
    };
}

fn all_layouts() -> Vec<Layout> {
    let mut v: Vec<Layout> = Vec::new();
    macro_rules! push {
        ($($t:tt)*) => {
            v.push(layout!($($t)*));
        };
    }
    weft_abi_check::for_each_header_struct!(push);
    v
}

#[test]
fn every_header_struct_matches_the_weft_abi_layout() {
    let layouts = all_layouts();
    let names: Vec<&str> = layouts.iter().map(|l| l.0).collect();
    // The structs of ABI v1 must all be there (a sanity check that bindgen really read the file).
    for want in [
        "WeftStr",
        "WeftHeader",
        "WeftRequestView",
        "WeftBuf",
        "WeftMutation",
        "WeftPluginInfo",
        "WeftPluginDescriptor",
        "WeftHostApi",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from the header's structs: {names:?}"
        );
    }
    let mut problems = Vec::new();
    for (name, sc, sr, ac, ar, fields) in &layouts {
        if sc != sr {
            problems.push(format!("{name}: sizeof is {sc} in weft.h but {sr} in abi/src/lib.rs"));
        }
        if ac != ar {
            problems.push(format!("{name}: alignof is {ac} in weft.h but {ar} in abi/src/lib.rs"));
        }
        for (field, oc, or) in fields {
            if oc != or {
                problems.push(format!(
                    "{name}.{field}: offset {oc} in weft.h but {or} in abi/src/lib.rs"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "weft.h and abi/src/lib.rs disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_layout_comparison_can_fail() {
    // A deliberately different pair: the header's WeftStr against weft-abi's WeftHeader.
    assert_ne!(size_of::<h::WeftStr>(), size_of::<abi::WeftHeader>());
    assert_ne!(
        offset_of!(h::WeftRequestView, method),
        offset_of!(abi::WeftRequestView, path)
    );
}

#[test]
fn every_header_constant_matches_weft_abi() {
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    macro_rules! check {
        ($name:ident) => {
            seen.push(stringify!($name));
            if h::$name as u64 != abi::$name as u64 {
                problems.push(format!(
                    "{}: {} in weft.h but {} in abi/src/lib.rs",
                    stringify!($name),
                    h::$name,
                    abi::$name
                ));
            }
        };
    }
    weft_abi_check::for_each_header_constant!(check);
    assert!(
        problems.is_empty(),
        "weft.h and abi/src/lib.rs disagree:\n{}",
        problems.join("\n")
    );
    // A sanity check that bindgen really read the constants, the ring layout included.
    for want in [
        "WEFT_ABI_VERSION",
        "WEFT_MAX_MUTATION_RECORDS",
        "WEFT_PHASE_MASK_SUPPORTED",
        "WEFT_PLUGIN_FLAG_BLOCKING",
        "WEFT_RING_MAGIC",
        "WEFT_RING_VERSION",
        "WEFT_RING_MAX_CAPACITY",
        "WEFT_RING_DESC_SIZE",
        "WEFT_RING_OFFSET_MAGIC",
        "WEFT_RING_OFFSET_VERSION",
        "WEFT_RING_OFFSET_CAPACITY",
        "WEFT_RING_OFFSET_DESC_SIZE",
        "WEFT_RING_OFFSET_CLOSED",
        "WEFT_RING_OFFSET_RING_ID",
        "WEFT_RING_OFFSET_TAIL",
        "WEFT_RING_OFFSET_HEAD",
        "WEFT_RING_OFFSET_WAITING",
        "WEFT_RING_OFFSET_DESCRIPTORS",
    ] {
        assert!(
            seen.contains(&want),
            "{want} missing from the header's constants: {seen:?}"
        );
    }
}

#[test]
fn ring_constants_describe_the_header_job() {
    // The entry size the header states is the size C gives WeftJob.
    assert_eq!(h::WEFT_RING_DESC_SIZE as usize, size_of::<h::WeftJob>());
    assert_eq!(h::WEFT_RING_MAGIC.to_le_bytes(), *b"WFTR");
}

#[test]
fn enum_values_match() {
    use abi::WeftResult as R;
    let results = [
        (h::WeftResult_WEFT_RESULT_OK, R::Ok),
        (h::WeftResult_WEFT_RESULT_PANIC, R::Panic),
        (h::WeftResult_WEFT_RESULT_INVALID_ARGUMENT, R::InvalidArgument),
        (h::WeftResult_WEFT_RESULT_UNKNOWN_PLUGIN, R::UnknownPlugin),
        (h::WeftResult_WEFT_RESULT_MUTATION_OVERFLOW, R::MutationOverflow),
        (h::WeftResult_WEFT_RESULT_INIT_FAILED, R::InitFailed),
        (h::WeftResult_WEFT_RESULT_ABI_MISMATCH, R::AbiMismatch),
        (h::WeftResult_WEFT_RESULT_UNSUPPORTED_PHASE, R::UnsupportedPhase),
        (h::WeftResult_WEFT_RESULT_INVALID_MUTATION, R::InvalidMutation),
        (h::WeftResult_WEFT_RESULT_HANDLER_FAILED, R::HandlerFailed),
        (h::WeftResult_WEFT_RESULT_INTERNAL, R::Internal),
        (h::WeftResult_WEFT_RESULT_PENDING, R::Pending),
        (h::WeftResult_WEFT_RESULT_STALE_HANDLE, R::StaleHandle),
        (h::WeftResult_WEFT_RESULT_ALREADY_COMPLETED, R::AlreadyCompleted),
        (h::WeftResult_WEFT_RESULT_CANCELLED, R::Cancelled),
        (h::WeftResult_WEFT_RESULT_BUSY, R::Busy),
    ];
    for (c, r) in results {
        assert_eq!(c, r as u32, "{r:?}");
        assert_eq!(R::from_raw(c), r);
    }
    use abi::WeftPhase as P;
    let phases = [
        (h::WeftPhase_WEFT_PHASE_REQUEST_HEADERS, P::RequestHeaders),
        (h::WeftPhase_WEFT_PHASE_REQUEST_BODY, P::RequestBody),
        (h::WeftPhase_WEFT_PHASE_RESPONSE_HEADERS, P::ResponseHeaders),
        (h::WeftPhase_WEFT_PHASE_RESPONSE_BODY, P::ResponseBody),
        (h::WeftPhase_WEFT_PHASE_LOG, P::Log),
        (h::WeftPhase_WEFT_PHASE_WEB_SOCKET_OPEN, P::WebSocketOpen),
        (h::WeftPhase_WEFT_PHASE_WEB_SOCKET_MESSAGE, P::WebSocketMessage),
        (h::WeftPhase_WEFT_PHASE_WEB_SOCKET_CLOSE, P::WebSocketClose),
    ];
    for (c, p) in phases {
        assert_eq!(c, p as u32, "{p:?}");
    }
    use abi::WeftMutationOp as M;
    let ops = [
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_SET_REQUEST_HEADER,
            M::SetRequestHeader,
        ),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_ADD_REQUEST_HEADER,
            M::AddRequestHeader,
        ),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_REMOVE_REQUEST_HEADER,
            M::RemoveRequestHeader,
        ),
        (h::WeftMutationOp_WEFT_MUTATION_OP_SET_PATH, M::SetPath),
        (h::WeftMutationOp_WEFT_MUTATION_OP_SET_QUERY, M::SetQuery),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_SET_RESPONSE_HEADER,
            M::SetResponseHeader,
        ),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_ADD_RESPONSE_HEADER,
            M::AddResponseHeader,
        ),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_REMOVE_RESPONSE_HEADER,
            M::RemoveResponseHeader,
        ),
        (h::WeftMutationOp_WEFT_MUTATION_OP_SET_STATUS, M::SetStatus),
        (h::WeftMutationOp_WEFT_MUTATION_OP_LOCAL_REPLY, M::LocalReply),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_LOCAL_REPLY_HEADER,
            M::LocalReplyHeader,
        ),
        (h::WeftMutationOp_WEFT_MUTATION_OP_BODY_REPLACE, M::BodyReplace),
        (h::WeftMutationOp_WEFT_MUTATION_OP_BODY_PREPEND, M::BodyPrepend),
        (h::WeftMutationOp_WEFT_MUTATION_OP_BODY_APPEND, M::BodyAppend),
        (h::WeftMutationOp_WEFT_MUTATION_OP_BODY_DROP, M::BodyDrop),
        (h::WeftMutationOp_WEFT_MUTATION_OP_SKIP_BODY, M::SkipBody),
        (h::WeftMutationOp_WEFT_MUTATION_OP_WS_SEND_TEXT, M::WsSendText),
        (h::WeftMutationOp_WEFT_MUTATION_OP_WS_SEND_BINARY, M::WsSendBinary),
        (h::WeftMutationOp_WEFT_MUTATION_OP_WS_CLOSE, M::WsClose),
        (h::WeftMutationOp_WEFT_MUTATION_OP_WS_JOIN_ROOM, M::WsJoinRoom),
        (h::WeftMutationOp_WEFT_MUTATION_OP_WS_LEAVE_ROOM, M::WsLeaveRoom),
        (h::WeftMutationOp_WEFT_MUTATION_OP_WS_BROADCAST_TEXT, M::WsBroadcastText),
        (
            h::WeftMutationOp_WEFT_MUTATION_OP_WS_BROADCAST_BINARY,
            M::WsBroadcastBinary,
        ),
    ];
    for (c, m) in ops {
        assert_eq!(c, m as u32, "{m:?}");
    }
}

/// `version` of runtime/Cargo.toml, following `version.workspace = true` to the root manifest.
fn runtime_version() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let value = |text: &str, key: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
            Some(rest.trim_matches('"').to_owned())
        })
    };
    let runtime = std::fs::read_to_string(root.join("runtime/Cargo.toml")).unwrap();
    if runtime
        .lines()
        .any(|l| l.trim().replace(' ', "") == "version.workspace=true")
    {
        let ws = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let section = ws
            .split("[workspace.package]")
            .nth(1)
            .expect("[workspace.package] in Cargo.toml");
        value(section, "version").expect("workspace version")
    } else {
        value(&runtime, "version").expect("runtime version")
    }
}

#[test]
fn version_macros_match_runtime_cargo_toml() {
    let version = runtime_version();
    let parts: Vec<u32> = version
        .split(['.', '-', '+'])
        .take(3)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        [h::WEFT_VERSION_MAJOR, h::WEFT_VERSION_MINOR, h::WEFT_VERSION_PATCH],
        [parts[0], parts[1], parts[2]],
        "weft.h version macros vs runtime/Cargo.toml {version}; update after_includes in abi/cbindgen.toml"
    );
    let text = std::ffi::CStr::from_bytes_with_nul(h::WEFT_VERSION)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(text, version, "WEFT_VERSION in weft.h");
    // The runtime crate's own idea of its version agrees (the test runs against the built crate).
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        version,
        "abi-check and runtime share the workspace version"
    );
}
