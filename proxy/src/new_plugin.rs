//! `weft-proxy new-plugin DIR`: writes a Go plugin project that builds on its own, outside this
//! repository: a module whose `go.mod` finds the SDK, a plugin package with a `wefttest` test,
//! the c-shared `main` package, a `weft.yaml` that loads the library, and a README.
//!
//! The templates are files under `proxy/templates/new-plugin/`, compiled into the binary so
//! the command works wherever the binary is copied.

use std::path::{Path, PathBuf};

/// What to write: the project directory and the values the templates take.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// Project directory; created, or else it must be empty.
    pub dir: PathBuf,
    /// Plugin name (registry name, library file name): 1..=64 of `a-z 0-9 -`, starting with a
    /// letter. The Go package name is the same without dashes.
    pub name: String,
    /// Go module path of the new project.
    pub module: String,
    /// Directory of the SDK's Go module (the `cgo/` folder of a weft checkout).
    pub sdk: PathBuf,
}

/// (path in the project, template); `{{PKG}}` in a path is the Go package name.
const FILES: &[(&str, &str)] = &[
    ("go.mod", include_str!("../templates/new-plugin/go.mod.tmpl")),
    (
        "{{PKG}}/{{PKG}}.go",
        include_str!("../templates/new-plugin/plugin.go.tmpl"),
    ),
    (
        "{{PKG}}/{{PKG}}_test.go",
        include_str!("../templates/new-plugin/plugin_test.go.tmpl"),
    ),
    (
        "cmd/plugin/main.go",
        include_str!("../templates/new-plugin/main.go.tmpl"),
    ),
    ("weft.yaml", include_str!("../templates/new-plugin/weft.yaml.tmpl")),
    ("README.md", include_str!("../templates/new-plugin/README.md.tmpl")),
];

/// The SDK of the checkout this binary was built from, if it is still there.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cgo");
    sdk.join("go.mod").is_file().then(|| sdk.canonicalize().ok()).flatten()
}

/// The plugin name a directory suggests: its last component, lowercased.
pub fn name_from_dir(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase().replace('_', "-"))
        .unwrap_or_default()
}

/// Checks a plugin name; the error says what is allowed.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?} is not usable: use 1 to 64 of a-z, 0-9 and '-', starting with a letter \
             and not ending with '-' (--name NAME)"
        ))
    }
}

/// Writes the project; returns the files written, relative to the project directory. Nothing
/// is written unless every check passes.
pub fn write(p: &NewPlugin) -> Result<Vec<PathBuf>, String> {
    check_name(&p.name)?;
    if p.module.is_empty() || p.module.contains(char::is_whitespace) {
        return Err(format!("module path {:?} is not usable (--module PATH)", p.module));
    }
    if !p.sdk.join("go.mod").is_file() {
        return Err(format!(
            "no Go module at {} (the SDK is the cgo/ folder of a weft checkout: --sdk PATH)",
            p.sdk.display()
        ));
    }
    let sdk = std::path::absolute(&p.sdk).map_err(|e| format!("{}: {e}", p.sdk.display()))?;
    let sdk = sdk.to_str().ok_or("the SDK path is not UTF-8")?;
    if sdk.contains(char::is_whitespace) {
        return Err(format!(
            "the SDK path {sdk:?} contains whitespace, which go.mod cannot hold unquoted"
        ));
    }
    ensure_empty_dir(&p.dir)?;
    let pkg = p.name.replace('-', "");
    let fill = |s: &str| {
        s.replace("{{NAME}}", &p.name)
            .replace("{{PKG}}", &pkg)
            .replace("{{MODULE}}", &p.module)
            .replace("{{SDK}}", sdk)
    };
    let mut written = Vec::new();
    for (path, template) in FILES {
        let rel = PathBuf::from(fill(path));
        let full = p.dir.join(&rel);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&full, fill(template)).map_err(|e| format!("{}: {e}", full.display()))?;
        written.push(rel);
    }
    Ok(written)
}

fn ensure_empty_dir(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!("{} exists and is not empty", dir.display()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "rate-limit", "auth2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2fa", "Rate", "a b", "x-", "a_b", "-a", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(name_from_dir(Path::new("/tmp/My_Plugin")), "my-plugin");
    }

    #[test]
    fn writes_every_template_filled_and_refuses_a_non_empty_dir() {
        let dir = std::env::temp_dir().join(format!("weft-new-plugin-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sdk = default_sdk().expect("the checkout's cgo/ exists in a test build");
        let p = NewPlugin {
            dir: dir.clone(),
            name: "rate-limit".into(),
            module: "example.com/rl".into(),
            sdk: sdk.clone(),
        };
        let files = write(&p).unwrap();
        assert_eq!(files.len(), FILES.len());
        assert!(files.contains(&PathBuf::from("ratelimit/ratelimit_test.go")));
        for f in &files {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
        }
        let gomod = std::fs::read_to_string(dir.join("go.mod")).unwrap();
        assert!(gomod.contains(&format!("=> {}", sdk.display())), "{gomod}");
        let err = write(&p).unwrap_err();
        assert!(err.contains("not empty"), "{err}");
        let bad_sdk = NewPlugin {
            dir: dir.join("other"),
            sdk: dir.join("nowhere"),
            ..p
        };
        assert!(write(&bad_sdk).unwrap_err().contains("--sdk"));
        assert!(!dir.join("other").exists(), "nothing written when a check fails");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
