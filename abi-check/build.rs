//! Runs bindgen (libclang) over the committed include/weft.h. Besides the bindings it writes
//! `structs.rs`: one `$m!(Struct { field, ... })` line per struct of the header and one
//! `$m!(NAME)` line per integer constant of the ABI, so the tests cover every struct and
//! constant the header declares, including ones added later.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;

use bindgen::callbacks::{DeriveInfo, FieldInfo, ParseCallbacks};

#[derive(Debug, Default)]
struct Collect {
    // struct name -> fields in declaration order
    structs: Rc<RefCell<BTreeMap<String, Vec<String>>>>,
    // integer #defines of the ABI (WEFT_*), by name
    constants: Rc<RefCell<BTreeSet<String>>>,
}

/// The header's own macros that are not ABI constants of weft-abi: the runtime version (from
/// cbindgen.toml, checked against Cargo.toml by a test of its own).
fn is_abi_constant(name: &str) -> bool {
    name.starts_with("WEFT_") && !name.starts_with("WEFT_VERSION")
}

impl ParseCallbacks for Collect {
    fn int_macro(&self, name: &str, _value: i64) -> Option<bindgen::callbacks::IntKind> {
        if is_abi_constant(name) {
            self.constants.borrow_mut().insert(name.to_owned());
        }
        None
    }

    fn add_derives(&self, info: &DeriveInfo<'_>) -> Vec<String> {
        if matches!(info.kind, bindgen::callbacks::TypeKind::Struct) {
            self.structs.borrow_mut().entry(info.name.to_owned()).or_default();
        }
        vec![]
    }

    fn field_visibility(&self, info: FieldInfo<'_>) -> Option<bindgen::FieldVisibilityKind> {
        let mut s = self.structs.borrow_mut();
        let fields = s.entry(info.type_name.to_owned()).or_default();
        if !fields.iter().any(|f| f == info.field_name) {
            fields.push(info.field_name.to_owned());
        }
        None
    }
}

// bindgen requires ParseCallbacks: Debug + UnwindSafe; the Rc is only touched on this thread.
impl std::panic::UnwindSafe for Collect {}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let header = root.join("include/weft.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let structs = Rc::new(RefCell::new(BTreeMap::new()));
    let constants = Rc::new(RefCell::new(BTreeSet::new()));
    let bindings = bindgen::Builder::default()
        .header(header.to_str().unwrap())
        .clang_args(["-std=c11", "-xc"])
        .allowlist_item("Weft.*")
        .allowlist_item("WEFT_.*")
        .allowlist_item("weft_.*")
        .layout_tests(true)
        .derive_debug(false)
        .parse_callbacks(Box::new(Collect {
            structs: Rc::clone(&structs),
            constants: Rc::clone(&constants),
        }))
        .generate()
        .unwrap_or_else(|e| panic!("bindgen could not read include/weft.h (is libclang installed?): {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    bindings.write_to_file(out.join("weft_h.rs")).unwrap();
    let mut list = String::new();
    for (name, fields) in structs.borrow().iter() {
        list.push_str(&format!("        $m!({name} {{ {} }});\n", fields.join(", ")));
    }
    assert!(!list.is_empty(), "bindgen found no struct in include/weft.h");
    let mac = format!(
        "/// Calls `$m!(Struct {{ field, ... }})` for every struct of include/weft.h.\n\
         #[macro_export]\nmacro_rules! for_each_header_struct {{\n    ($m:ident) => {{\n{list}    }};\n}}\n"
    );
    let consts: String = constants
        .borrow()
        .iter()
        .map(|name| format!("        $m!({name});\n"))
        .collect();
    assert!(!consts.is_empty(), "bindgen found no WEFT_ constant in include/weft.h");
    let mac = format!(
        "{mac}\n/// Calls `$m!(NAME)` for every integer constant (`#define WEFT_*`) of include/weft.h.\n\
         #[macro_export]\nmacro_rules! for_each_header_constant {{\n    ($m:ident) => {{\n{consts}    }};\n}}\n"
    );
    std::fs::write(out.join("structs.rs"), mac).unwrap();
}
