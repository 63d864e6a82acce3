//! Loading plugin libraries: the Go-runtime guard, `dlopen` and the versioned handshake. The
//! host function table handed to plugins is in `host.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::stat::Mutex;

use crate::abi::*;

/// Why a library could not be loaded. Every message names the library path.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin library {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "plugin library {path} carries a Go runtime, but the Go library {loaded} is already loaded in this process. \
         Only one Go runtime can live in a process: build all Go plugins into one c-shared library \
         (each registers by name; import their packages into one main package), or run this one as a NATS worker"
    )]
    SecondGoRuntime { path: PathBuf, loaded: PathBuf },
    #[error("plugin library {path}: dlopen failed: {source}")]
    Open { path: PathBuf, source: libloading::Error },
    #[error("plugin library {path} is not a weft plugin: it does not export weft_plugin_entry")]
    NoEntry { path: PathBuf },
    #[error("plugin library {path}: weft_plugin_entry returned NULL")]
    NullDescriptor { path: PathBuf },
    #[error(
        "plugin library {path} was built for weft ABI version {plugin}, but this runtime speaks ABI version {host}; \
         rebuild the plugin against the weft SDK / weft.h for ABI version {host}"
    )]
    AbiVersion { path: PathBuf, plugin: u32, host: u32 },
    #[error(
        "plugin library {path}: {what} is {plugin} bytes in the plugin but {host} bytes in this runtime (ABI version {version}); \
         the plugin was built against a different weft.h"
    )]
    StructSize {
        path: PathBuf,
        what: &'static str,
        plugin: u32,
        host: u32,
        version: u32,
    },
    #[error("plugin library {path} refused to load: {message}")]
    Registration { path: PathBuf, message: String },
    #[error("plugin library {path}: malformed descriptor: {what}")]
    Malformed { path: PathBuf, what: String },
}

/// A plugin offered by a library.
#[derive(Debug, Clone)]
pub struct PluginMeta {
    pub index: u32,
    pub name: String,
    pub phases: u32,
    /// `WEFT_PLUGIN_FLAG_*` bits as the plugin declared them.
    pub flags: u32,
    /// The header lines the plugin reads (`WeftViewHeaders`), lowercase, without repeats;
    /// `None`: every line.
    pub view_headers: Option<Arc<[http::HeaderName]>>,
}

/// A loaded library. Never unloaded: a Go runtime cannot be shut down, and native plugins may
/// have started threads of their own.
pub struct Library {
    pub path: PathBuf,
    pub runtime: u32,
    pub runtime_version: String,
    pub plugins: Vec<PluginMeta>,
    pub(crate) init: unsafe extern "C" fn(u32, u64, *const u8, usize, u32, *mut WeftBuf) -> u32,
    pub(crate) on_phase: unsafe extern "C" fn(u64, u32, *const WeftRequestView, *mut WeftBuf) -> u32,
    pub(crate) thread_start: Option<unsafe extern "C" fn()>,
    pub(crate) shutdown: Option<unsafe extern "C" fn(u64)>,
    /// Starts a worker on a worker ring; NULL for a library without blocking plugins (or one
    /// built before the field existed).
    pub(crate) attach_worker: WeftAttachWorkerFn,
    /// Told when the host stops waiting for a pending call or worker job; may be NULL.
    pub(crate) cancel: WeftCancelFn,
    /// Runs a host thread's work inside the library's runtime (`thread_entry.rs`); may be NULL.
    pub(crate) run_on_thread: WeftRunOnThreadFn,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("runtime_version", &self.runtime_version)
            .finish()
    }
}

impl Library {
    pub fn plugin(&self, name: &str) -> Option<&PluginMeta> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

/// Process-wide record of loaded libraries: the one Go runtime, and every library by canonical
/// path, so that several runtimes in one process (a config reload builds a new one) share it.
struct Loaded {
    go: Option<PathBuf>,
    libraries: Vec<(PathBuf, Arc<Library>)>,
}

static LOADED: Mutex<Loaded> = Mutex::new(Loaded {
    go: None,
    libraries: Vec::new(),
});

/// How many libraries this process has loaded, for threads that run inside every loaded library
/// ([`loaded_libraries`]) to enter one loaded after they started.
fn load_count() -> &'static tokio::sync::watch::Sender<usize> {
    static COUNT: std::sync::OnceLock<tokio::sync::watch::Sender<usize>> = std::sync::OnceLock::new();
    COUNT.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// The libraries this process has loaded (by any runtime; never unloaded, so the list only grows)
/// from the `from`-th on, how many it has loaded in all, and a receiver that changes when it
/// loads another.
pub(crate) fn loaded_libraries(from: usize) -> (Vec<Arc<Library>>, usize, tokio::sync::watch::Receiver<usize>) {
    let loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    // Subscribed under the lock: a library loaded after the list was taken changes the receiver.
    let changes = load_count().subscribe();
    let all = &loaded.libraries;
    let new = all.iter().skip(from).map(|(_, l)| Arc::clone(l)).collect();
    (new, all.len(), changes)
}

/// Whether the file is a Go binary: every Go executable and c-shared library carries a
/// `.go.buildinfo` section. Checked before `dlopen`, because opening a second Go library already
/// starts its runtime.
fn is_go_elf(data: &[u8]) -> bool {
    use object::{Object, ObjectSection};
    match object::File::parse(data) {
        Ok(file) => file.sections().any(|s| s.name() == Ok(".go.buildinfo")),
        Err(_) => false,
    }
}

/// Loads the library at `path`, or returns the one already loaded from the same file. A new
/// library's entry point is handed `host_api`, which it may keep for the life of the process.
pub(crate) fn load(path: &Path, host_api: &'static WeftHostApi) -> Result<Arc<Library>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.into(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(read_err)?;
    // Hold the lock across dlopen and the handshake so two threads cannot both start a Go
    // runtime or load one file twice.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, lib)) = loaded.libraries.iter().find(|(p, _)| *p == canonical) {
        return Ok(Arc::clone(lib));
    }
    let data = std::fs::read(&canonical).map_err(read_err)?;
    let go = is_go_elf(&data);
    drop(data);
    if go {
        if let Some(first) = &loaded.go {
            return Err(LoadError::SecondGoRuntime {
                path: path.into(),
                loaded: first.clone(),
            });
        }
    }
    // SAFETY: loading runs the library's initialisers; that is the point of a plugin library.
    let lib = unsafe { libloading::Library::new(&canonical) }.map_err(|source| LoadError::Open {
        path: path.into(),
        source,
    })?;
    // Whatever happens next, the library stays mapped: a Go runtime has started threads, and
    // unloading it would pull code from under them.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    if go {
        loaded.go = Some(canonical.clone());
    }
    let lib = handshake(path, lib, go, host_api)?;
    loaded.libraries.push((canonical, Arc::clone(&lib)));
    load_count().send_modify(|n| *n += 1);
    Ok(lib)
}

fn handshake(
    path: &Path,
    lib: &'static libloading::Library,
    go: bool,
    host_api: &'static WeftHostApi,
) -> Result<Arc<Library>, LoadError> {
    // SAFETY: the symbol's type is fixed by the ABI (weft.h declares it).
    let entry: libloading::Symbol<'static, unsafe extern "C" fn(*const WeftHostApi) -> *const WeftPluginDescriptor> =
        unsafe { lib.get(b"weft_plugin_entry\0") }.map_err(|_| LoadError::NoEntry { path: path.into() })?;
    // SAFETY: `host_api` lives for the whole process, as the ABI promises.
    let desc = unsafe { entry(host_api) };
    // SAFETY: whatever the plugin returned; only what its reported sizes allow is read.
    unsafe { read_descriptor(path, desc, go) }
}

/// `descriptor_size` of ABI version 1 as first published: every field up to and including
/// `shutdown`, before `attach_worker` was appended. Accepted under the append-only policy
/// (docs/abi.md); the missing fields read as NULL.
pub(crate) const DESCRIPTOR_SIZE_BEFORE_ATTACH_WORKER: usize =
    std::mem::offset_of!(WeftPluginDescriptor, attach_worker);

/// `descriptor_size` before `cancel` was appended (accepted likewise).
pub(crate) const DESCRIPTOR_SIZE_BEFORE_CANCEL: usize = std::mem::offset_of!(WeftPluginDescriptor, cancel);

/// `descriptor_size` before `run_on_thread` was appended (accepted likewise).
pub(crate) const DESCRIPTOR_SIZE_BEFORE_RUN_ON_THREAD: usize =
    std::mem::offset_of!(WeftPluginDescriptor, run_on_thread);

/// `descriptor_size` before `view_headers` was appended (accepted likewise).
pub(crate) const DESCRIPTOR_SIZE_BEFORE_VIEW_HEADERS: usize = std::mem::offset_of!(WeftPluginDescriptor, view_headers);

/// The most names one plugin's `WeftViewHeaders` may list.
pub const MAX_VIEW_HEADERS: usize = crate::abi::WEFT_MAX_VIEW_HEADERS as usize;

/// Reads one plugin's `WeftViewHeaders` list (`names_len` bytes of comma-separated names):
/// lowercase names without repeats, or what is wrong with it.
pub fn parse_view_headers(list: &[u8]) -> Result<Vec<http::HeaderName>, String> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    if list.is_empty() {
        return Ok(names);
    }
    for (i, raw) in list.split(|&b| b == b',').enumerate() {
        if i == MAX_VIEW_HEADERS {
            return Err(format!("more than {MAX_VIEW_HEADERS} names"));
        }
        let shown = || String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned();
        if raw.len() > crate::mutation::MAX_NAME_LEN {
            return Err(format!(
                "name {:?}... longer than {} bytes",
                shown(),
                crate::mutation::MAX_NAME_LEN
            ));
        }
        // `from_bytes` lowercases; an empty name (",," or a trailing comma) or a space is refused.
        let name = http::HeaderName::from_bytes(raw).map_err(|_| format!("{:?} is not a header name", shown()))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `request_view_size` before `server_name` was appended to the view. Accepted: the host lays
/// out the whole current view, and such a plugin reads only the prefix it knows.
pub(crate) const VIEW_SIZE_BEFORE_SERVER_NAME: usize = std::mem::offset_of!(WeftRequestView, server_name);

/// Checks and reads the descriptor a plugin's `weft_plugin_entry` returned.
///
/// # Safety
/// `desc` is NULL or points to at least the stable prefix (8 bytes), and to `descriptor_size`
/// readable bytes when that prefix names this ABI version.
unsafe fn read_descriptor(path: &Path, desc: *const WeftPluginDescriptor, go: bool) -> Result<Arc<Library>, LoadError> {
    // SAFETY: the caller's contract.
    let d = unsafe { copy_descriptor(path, desc)? };
    let d = &d;
    // SAFETY (here and below): the descriptor's pointers, as the caller's contract says.
    let load_error = unsafe { descriptor_text(path, d.load_error, d.load_error_len, "load_error")? };
    if !load_error.is_empty() {
        return Err(LoadError::Registration {
            path: path.into(),
            message: plugin_text(load_error.as_bytes(), MAX_PLUGIN_MESSAGE),
        });
    }
    let runtime_version =
        unsafe { descriptor_text(path, d.runtime_version, d.runtime_version_len, "runtime_version")? };
    let (Some(init), Some(on_phase)) = (d.init, d.on_phase) else {
        return Err(LoadError::Malformed {
            path: path.into(),
            what: "init or on_phase is NULL".into(),
        });
    };
    let plugins = unsafe { read_plugins(path, d)? };
    if go != (d.runtime == WEFT_RUNTIME_GO) {
        tracing::warn!(library = %path.display(), "descriptor runtime field disagrees with the ELF contents");
    }
    Ok(Arc::new(Library {
        path: path.into(),
        runtime: if go { WEFT_RUNTIME_GO } else { d.runtime },
        runtime_version,
        plugins,
        init,
        on_phase,
        thread_start: d.thread_start,
        shutdown: d.shutdown,
        attach_worker: d.attach_worker,
        cancel: d.cancel,
        run_on_thread: d.run_on_thread,
    }))
}

/// The descriptor at `desc`, copied into host memory after its version and the sizes of the
/// structs it was built with are checked. A descriptor of an earlier version-1 header is copied
/// into a zeroed one: the fields it predates read as NULL, and nothing past it is read.
///
/// # Safety
/// As [`read_descriptor`].
unsafe fn copy_descriptor(path: &Path, desc: *const WeftPluginDescriptor) -> Result<WeftPluginDescriptor, LoadError> {
    if desc.is_null() {
        return Err(LoadError::NullDescriptor { path: path.into() });
    }
    // SAFETY: the stable prefix (abi_version, descriptor_size) is readable in every ABI version.
    let (version, desc_size) = unsafe {
        let p = desc.cast::<u32>();
        (p.read_unaligned(), p.add(1).read_unaligned())
    };
    if version != WEFT_ABI_VERSION {
        return Err(LoadError::AbiVersion {
            path: path.into(),
            plugin: version,
            host: WEFT_ABI_VERSION,
        });
    }
    let size_error = |what, plugin: u32, host: usize| LoadError::StructSize {
        path: path.into(),
        what,
        plugin,
        host: host as u32,
        version,
    };
    let size_check = |what, plugin: u32, host: usize| {
        if plugin as usize == host {
            Ok(())
        } else {
            Err(size_error(what, plugin, host))
        }
    };
    // The descriptor grows append-only: one built against this header, or against an earlier
    // version-1 header (without `view_headers`, without `run_on_thread` too, without `cancel`
    // too, or without `attach_worker` too), is accepted; any other size is not.
    let earlier = [
        DESCRIPTOR_SIZE_BEFORE_ATTACH_WORKER,
        DESCRIPTOR_SIZE_BEFORE_CANCEL,
        DESCRIPTOR_SIZE_BEFORE_RUN_ON_THREAD,
        DESCRIPTOR_SIZE_BEFORE_VIEW_HEADERS,
    ];
    if !earlier.contains(&(desc_size as usize)) {
        size_check("WeftPluginDescriptor", desc_size, size_of::<WeftPluginDescriptor>())?;
    }
    let d = unsafe {
        let mut copy = std::mem::MaybeUninit::<WeftPluginDescriptor>::zeroed();
        std::ptr::copy_nonoverlapping(desc.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), desc_size as usize);
        // SAFETY: all-zero is a valid descriptor (integers, raw pointers, `Option`s of function
        // pointers), and the copied prefix holds the plugin's values of the same fields.
        copy.assume_init()
    };
    if d.request_view_size as usize != VIEW_SIZE_BEFORE_SERVER_NAME {
        size_check("WeftRequestView", d.request_view_size, size_of::<WeftRequestView>())?;
    }
    size_check("WeftMutation", d.mutation_size, size_of::<WeftMutation>())?;
    if d.host_api_size as usize > size_of::<WeftHostApi>() {
        return Err(size_error("WeftHostApi", d.host_api_size, size_of::<WeftHostApi>()));
    }
    Ok(d)
}

/// A string of the descriptor (`len` bytes at `ptr`), as UTF-8 text; empty when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes (a descriptor's promise).
unsafe fn descriptor_text(path: &Path, ptr: *const u8, len: usize, what: &str) -> Result<String, LoadError> {
    if len == 0 {
        return Ok(String::new());
    }
    if ptr.is_null() || len > 1 << 20 {
        return Err(LoadError::Malformed {
            path: path.into(),
            what: format!("{what}: NULL or oversized"),
        });
    }
    // SAFETY: the plugin promises `len` readable bytes that live as long as the library.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    String::from_utf8(bytes.to_vec()).map_err(|_| LoadError::Malformed {
        path: path.into(),
        what: format!("{what}: not UTF-8"),
    })
}

/// The plugins the descriptor lists: each one named (uniquely), its phases, flags and the
/// header lines it reads.
///
/// # Safety
/// `d` is a plugin's descriptor as [`copy_descriptor`] read it: `plugins` (and `view_headers`
/// when set) point to `plugin_count` entries, their strings as [`descriptor_text`] needs.
unsafe fn read_plugins(path: &Path, d: &WeftPluginDescriptor) -> Result<Vec<PluginMeta>, LoadError> {
    if d.plugin_count > 0 && d.plugins.is_null() || d.plugin_count > 4096 {
        return Err(LoadError::Malformed {
            path: path.into(),
            what: format!("{} plugins at {:p}", d.plugin_count, d.plugins),
        });
    }
    let malformed = |what: String| LoadError::Malformed {
        path: path.into(),
        what,
    };
    let mut plugins = Vec::with_capacity(d.plugin_count as usize);
    for i in 0..d.plugin_count {
        // SAFETY: plugin_count entries, checked non-null above.
        let info = unsafe { &*d.plugins.add(i as usize) };
        // SAFETY: the entry's name, as the caller's contract says.
        let name = unsafe { descriptor_text(path, info.name, info.name_len, "plugin name")? };
        if name.is_empty() || plugins.iter().any(|p: &PluginMeta| p.name == name) {
            return Err(malformed(format!("empty or duplicate plugin name {name:?}")));
        }
        let unsupported = info.phases & !WEFT_PHASE_MASK_SUPPORTED;
        if unsupported != 0 {
            tracing::warn!(library = %path.display(), plugin = %name, mask = unsupported,
                "plugin declares phases this runtime does not drive yet; they will not be called");
        }
        if info.flags & WEFT_PLUGIN_FLAG_BLOCKING != 0 && d.attach_worker.is_none() {
            return Err(malformed(format!(
                "plugin {name:?} is flagged WEFT_PLUGIN_FLAG_BLOCKING but the library provides no attach_worker"
            )));
        }
        // SAFETY: `view_headers`, when set, has `plugin_count` entries (the descriptor's contract).
        let declared = unsafe { d.view_headers.as_ref().map(|_| &*d.view_headers.add(i as usize)) };
        let view_headers =
            view_headers_of(declared).map_err(|what| malformed(format!("plugin {name:?}: view_headers: {what}")))?;
        plugins.push(PluginMeta {
            index: i,
            name,
            phases: info.phases & WEFT_PHASE_MASK_SUPPORTED,
            flags: info.flags,
            view_headers,
        });
    }
    Ok(plugins)
}

/// One plugin's entry of `WeftPluginDescriptor.view_headers` read: `None` for every line (no
/// array, or a NULL list).
fn view_headers_of(declared: Option<&WeftViewHeaders>) -> Result<Option<Arc<[http::HeaderName]>>, String> {
    let Some(d) = declared.filter(|d| !d.names.is_null()) else {
        return match declared {
            Some(d) if d.names_len != 0 => Err(format!("NULL names with length {}", d.names_len)),
            _ => Ok(None),
        };
    };
    // Commas included, 64 names of the longest length are ~16 KiB.
    if d.names_len > MAX_VIEW_HEADERS * (crate::mutation::MAX_NAME_LEN + 1) {
        return Err(format!("{} bytes of names", d.names_len));
    }
    // SAFETY: the plugin promises `names_len` readable bytes that live as long as the library.
    let list = unsafe { std::slice::from_raw_parts(d.names, d.names_len) };
    parse_view_headers(list).map(|names| Some(names.into()))
}

/// Longest plugin-supplied message (an init error, a library's load error) the host keeps.
pub(crate) const MAX_PLUGIN_MESSAGE: usize = 512;

/// A message a plugin wrote, made safe to log and show: invalid UTF-8 replaced, control
/// characters (NUL, CR, LF, ESC, ...) escaped, trailing NULs dropped, cut to `max` bytes.
pub(crate) fn plugin_text(bytes: &[u8], max: usize) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut out = String::new();
    for c in String::from_utf8_lossy(&bytes[..end]).chars() {
        if out.len() >= max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;

    use super::*;

    /// A host table for loads that fail before a library's entry point is called.
    fn no_host() -> &'static WeftHostApi {
        Box::leak(Box::new(WeftHostApi {
            abi_version: WEFT_ABI_VERSION,
            size: size_of::<WeftHostApi>() as u32,
            context: std::ptr::null_mut(),
            log: None,
            complete: None,
            worker_exit: None,
            worker_exit_ring: None,
        }))
    }

    #[test]
    fn plugin_text_is_printable_and_capped() {
        assert_eq!(plugin_text(b"bad config\0\0\0\0", 64), "bad config");
        assert_eq!(plugin_text(&[0; 4096], 64), "");
        assert_eq!(
            plugin_text(b"a\r\nforged: line\x1b[31m", 64),
            "a\\r\\nforged: line\\u{1b}[31m"
        );
        assert_eq!(plugin_text(b"\xff\xfeok", 64), "\u{fffd}\u{fffd}ok");
        let long = plugin_text(&[b'x'; 10_000], 512);
        assert_eq!(long.len(), 515, "{long}");
        assert!(long.ends_with("..."));
    }

    #[test]
    fn non_go_and_garbage_files_are_not_go() {
        assert!(!is_go_elf(b"not an elf file"));
        assert!(!is_go_elf(&[]));
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_go_elf(&me), "a Rust test binary is not a Go binary");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/libnothing.so"), no_host()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/libnothing.so"), "{err}");
    }

    #[test]
    fn a_library_without_entry_is_refused() {
        // libc is a real shared library without weft_plugin_entry.
        let libc = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(libc) = libc else { return };
        let err = load(Path::new(libc), no_host()).unwrap_err();
        assert!(matches!(err, LoadError::NoEntry { .. }), "{err}");
    }

    unsafe extern "C" fn test_init(_: u32, _: u64, _: *const u8, _: usize, _: u32, _: *mut WeftBuf) -> u32 {
        0
    }
    unsafe extern "C" fn test_phase(_: u64, _: u32, _: *const WeftRequestView, _: *mut WeftBuf) -> u32 {
        0
    }
    unsafe extern "C" fn test_attach(_: *mut c_void, _: usize, _: *const u8, _: u32, _: u32) -> u32 {
        0
    }
    unsafe extern "C" fn test_cancel(_: u64, _: u32, _: u32) {}
    unsafe extern "C" fn test_run_on_thread(body: WeftThreadBodyFn, arg: *mut c_void) {
        if let Some(body) = body {
            unsafe { body(arg) }
        }
    }

    /// A descriptor as a plugin compiled against this header fills it, with the
    /// `descriptor_size` chosen by the test.
    fn descriptor(size: usize, info: &'static WeftPluginInfo) -> WeftPluginDescriptor {
        WeftPluginDescriptor {
            abi_version: WEFT_ABI_VERSION,
            descriptor_size: size as u32,
            request_view_size: size_of::<WeftRequestView>() as u32,
            mutation_size: size_of::<WeftMutation>() as u32,
            host_api_size: size_of::<WeftHostApi>() as u32,
            runtime: WEFT_RUNTIME_NATIVE,
            runtime_version: std::ptr::null(),
            runtime_version_len: 0,
            plugin_count: 1,
            flags: 0,
            plugins: info,
            load_error: std::ptr::null(),
            load_error_len: 0,
            init: Some(test_init),
            on_phase: Some(test_phase),
            thread_start: None,
            shutdown: None,
            attach_worker: Some(test_attach),
            cancel: Some(test_cancel),
            run_on_thread: Some(test_run_on_thread),
            view_headers: std::ptr::null(),
        }
    }

    struct ViewHeaders(WeftViewHeaders);
    // SAFETY: points to a static string.
    unsafe impl Sync for ViewHeaders {}

    /// A plugin's list of header names is read lowercase and without repeats; a malformed one
    /// refuses the library, naming the plugin and what is wrong.
    #[test]
    fn view_headers_are_read_and_malformed_lists_refused() {
        let path = Path::new("libtest.so");
        let read = |list: Option<&'static [u8]>, len: Option<usize>| {
            let names = list.map_or(std::ptr::null(), <[u8]>::as_ptr);
            let entry = Box::leak(Box::new(WeftViewHeaders {
                names,
                names_len: len.unwrap_or(list.map_or(0, <[u8]>::len)),
            }));
            let mut d = descriptor(size_of::<WeftPluginDescriptor>(), &PLAIN.0);
            d.view_headers = entry;
            unsafe { read_descriptor(path, &d, false) }.map(|lib| lib.plugins[0].view_headers.clone())
        };
        let names = |v: Option<Arc<[http::HeaderName]>>| v.map(|n| n.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        assert_eq!(names(read(None, None).unwrap()), None, "NULL: every line");
        assert_eq!(names(read(Some(b""), None).unwrap()), Some(vec![]), "empty: no line");
        assert_eq!(
            names(read(Some(b"X-Api-Key,authorization,x-api-key"), None).unwrap()),
            Some(vec!["x-api-key".to_owned(), "authorization".to_owned()])
        );
        let many: &'static [u8] = Box::leak(
            vec!["a"; MAX_VIEW_HEADERS + 1]
                .join(",")
                .into_bytes()
                .into_boxed_slice(),
        );
        let long: &'static [u8] = Box::leak(vec![b'a'; crate::mutation::MAX_NAME_LEN + 1].into_boxed_slice());
        for (list, len, want) in [
            (None, Some(3), "NULL names with length 3"),
            (Some(&b"a,,b"[..]), None, "\"\" is not a header name"),
            (Some(&b"a,"[..]), None, "\"\" is not a header name"),
            (Some(&b"x-a, x-b"[..]), None, "\" x-b\" is not a header name"),
            (Some(&b"x\r\n"[..]), None, "is not a header name"),
            (Some(many), None, "more than 64 names"),
            (Some(long), None, "longer than 256 bytes"),
        ] {
            let err = read(list, len).unwrap_err().to_string();
            assert!(
                err.contains("plugin \"p\": view_headers: ") && err.contains(want),
                "{err}"
            );
        }
        // The array is read only when the descriptor has the field: lists of other plugins'
        // entries are each checked.
        static TWO: [ViewHeaders; 2] = [
            ViewHeaders(WeftViewHeaders {
                names: std::ptr::null(),
                names_len: 0,
            }),
            ViewHeaders(WeftViewHeaders {
                names: b"bad name".as_ptr(),
                names_len: 8,
            }),
        ];
        static INFOS: [Info; 2] = [
            Info(WeftPluginInfo {
                name: b"p".as_ptr(),
                name_len: 1,
                phases: WEFT_PHASE_MASK_REQUEST_HEADERS,
                flags: 0,
            }),
            Info(WeftPluginInfo {
                name: b"q".as_ptr(),
                name_len: 1,
                phases: WEFT_PHASE_MASK_REQUEST_HEADERS,
                flags: 0,
            }),
        ];
        let mut d = descriptor(size_of::<WeftPluginDescriptor>(), &INFOS[0].0);
        d.plugin_count = 2;
        d.view_headers = &TWO[0].0;
        let err = unsafe { read_descriptor(path, &d, false) }.unwrap_err().to_string();
        assert!(
            err.contains("plugin \"q\": view_headers: \"bad name\" is not a header name"),
            "{err}"
        );
    }

    struct Info(WeftPluginInfo);
    // SAFETY: points to a static string.
    unsafe impl Sync for Info {}
    static PLAIN: Info = Info(WeftPluginInfo {
        name: b"p".as_ptr(),
        name_len: 1,
        phases: WEFT_PHASE_MASK_REQUEST_HEADERS,
        flags: 0,
    });
    static BLOCKING: Info = Info(WeftPluginInfo {
        name: b"b".as_ptr(),
        name_len: 1,
        phases: WEFT_PHASE_MASK_REQUEST_HEADERS,
        flags: WEFT_PLUGIN_FLAG_BLOCKING,
    });

    #[test]
    fn earlier_descriptor_sizes_read_their_missing_fields_as_null() {
        let path = Path::new("libtest.so");
        let full = size_of::<WeftPluginDescriptor>();
        let (before_view, before_run) = (
            DESCRIPTOR_SIZE_BEFORE_VIEW_HEADERS,
            DESCRIPTOR_SIZE_BEFORE_RUN_ON_THREAD,
        );
        let (before_cancel, old) = (DESCRIPTOR_SIZE_BEFORE_CANCEL, DESCRIPTOR_SIZE_BEFORE_ATTACH_WORKER);
        assert_eq!(
            before_view,
            full - size_of::<*const WeftViewHeaders>(),
            "view_headers is the last field"
        );
        assert_eq!(
            before_run,
            before_view - size_of::<WeftRunOnThreadFn>(),
            "run_on_thread comes before it"
        );
        assert_eq!(
            before_cancel,
            before_run - size_of::<WeftCancelFn>(),
            "cancel comes before it"
        );
        assert_eq!(
            old,
            before_cancel - size_of::<WeftAttachWorkerFn>(),
            "attach_worker comes before it"
        );
        // The current size: every field is read.
        let d = descriptor(full, &PLAIN.0);
        let lib = unsafe { read_descriptor(path, &d, false) }.unwrap();
        assert!(lib.attach_worker.is_some() && lib.cancel.is_some() && lib.run_on_thread.is_some());
        // Before view_headers was appended: accepted, every plugin reads every line although
        // the bytes after the plugin's struct (here: a list of no names) say otherwise.
        static NONE: ViewHeaders = ViewHeaders(WeftViewHeaders {
            names: b"".as_ptr(),
            names_len: 0,
        });
        let mut d = descriptor(before_view, &PLAIN.0);
        d.view_headers = &NONE.0;
        let lib = unsafe { read_descriptor(path, &d, false) }.unwrap();
        assert!(lib.run_on_thread.is_some() && lib.plugins[0].view_headers.is_none());
        d.descriptor_size = full as u32;
        let lib = unsafe { read_descriptor(path, &d, false) }.unwrap();
        assert_eq!(lib.plugins[0].view_headers.as_deref(), Some(&[][..]));
        // Before run_on_thread was appended: accepted, run_on_thread is NULL although the
        // bytes after the plugin's struct (here: our run_on_thread) are not.
        let d = descriptor(before_run, &PLAIN.0);
        let lib = unsafe { read_descriptor(path, &d, false) }.unwrap();
        assert!(lib.cancel.is_some() && lib.run_on_thread.is_none());
        // Before cancel was appended: cancel is NULL too.
        let d = descriptor(before_cancel, &PLAIN.0);
        let lib = unsafe { read_descriptor(path, &d, false) }.unwrap();
        assert!(lib.attach_worker.is_some() && lib.cancel.is_none() && lib.run_on_thread.is_none());
        // The first size: every appended field reads as NULL.
        let d = descriptor(old, &PLAIN.0);
        let lib = unsafe { read_descriptor(path, &d, false) }.unwrap();
        assert!(
            lib.attach_worker.is_none() && lib.cancel.is_none() && lib.run_on_thread.is_none(),
            "fields the plugin predates read as NULL"
        );
        assert_eq!(lib.plugins[0].name, "p");
        // Any other size is refused, naming both.
        for bad in [
            old - 8,
            old + 4,
            before_cancel + 4,
            before_run + 4,
            before_view + 4,
            full + 8,
        ] {
            let d = descriptor(bad, &PLAIN.0);
            let err = unsafe { read_descriptor(path, &d, false) }.unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "WeftPluginDescriptor is {bad} bytes in the plugin but {full} bytes"
                )),
                "{err}"
            );
        }
        // A blocking plugin needs attach_worker: the first size cannot have it.
        let d = descriptor(old, &BLOCKING.0);
        let err = unsafe { read_descriptor(path, &d, false) }.unwrap_err().to_string();
        assert!(err.contains("flagged WEFT_PLUGIN_FLAG_BLOCKING"), "{err}");
        let d = descriptor(full, &BLOCKING.0);
        assert!(unsafe { read_descriptor(path, &d, false) }.is_ok());
    }

    #[test]
    fn a_view_without_server_name_is_accepted_and_other_sizes_are_not() {
        let path = Path::new("libtest.so");
        let full = size_of::<WeftRequestView>();
        assert_eq!(
            VIEW_SIZE_BEFORE_SERVER_NAME,
            full - size_of::<WeftStr>(),
            "server_name is last"
        );
        let mut d = descriptor(size_of::<WeftPluginDescriptor>(), &PLAIN.0);
        for ok in [full, VIEW_SIZE_BEFORE_SERVER_NAME] {
            d.request_view_size = ok as u32;
            assert!(unsafe { read_descriptor(path, &d, false) }.is_ok(), "view size {ok}");
        }
        for bad in [
            VIEW_SIZE_BEFORE_SERVER_NAME - 8,
            VIEW_SIZE_BEFORE_SERVER_NAME + 4,
            full + 8,
        ] {
            d.request_view_size = bad as u32;
            let err = unsafe { read_descriptor(path, &d, false) }.unwrap_err().to_string();
            let want = format!("WeftRequestView is {bad} bytes in the plugin but {full} bytes");
            assert!(err.contains(&want), "{err}");
        }
    }
}
