#!/usr/bin/env python3
"""The rows the proxy measuring scripts share (scripts/callgrind-proxy, scripts/stat-proxy), so
they run the same plugins and the same Lua as the e2e runner:

  scripts/proxyrows.py plugins ROW     # ROW: go | c | body | none; the weft config's libraries and
                                       # plugins (body: bench-body-pass, both bodies streamed)
  scripts/proxyrows.py lua-modules     # the nginx modules the e2e runner's nginx + Lua row loads
  scripts/proxyrows.py lua-access      # its access_by_lua_block (bench-header's reads and header set)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def plugin_yaml(row):
    """The `libraries:` and `plugins:` lines of a weft config for ROW (a plugin named `b`), or
    "" for none; exits when the plugin library is not built."""
    go = f"{ROOT}/target/weft-plugins/libweft_test_plugins.so"
    c = f"{ROOT}/target/weft-c-plugins/libweft_c_stamp.so"
    if row == "go":
        lib, how = go, "scripts/build-plugins test"
        text = (f"libraries: [{{ name: ex, path: {go} }}]\n"
                "plugins: [{ name: b, library: ex, plugin: bench-header }]\n")
    elif row == "c":
        lib, how = c, "scripts/build-c-plugins plain"
        text = (f"libraries: [{{ name: cl, path: {c} }}]\n"
                "plugins: [{ name: b, library: cl, plugin: c-header-stamp, "
                "config: { header: x-bench, value: \"1\" } }]\n")
    elif row == "body":
        lib, how = go, "scripts/build-plugins test"
        text = (f"libraries: [{{ name: ex, path: {go} }}]\n"
                "plugins: [{ name: b, library: ex, plugin: bench-body-pass }]\n")
    else:
        return ""
    if not os.path.exists(lib):
        sys.exit(f"{lib} missing ({how})")
    return text


def runner_lua():
    """The e2e runner's nginx + Lua row, read from its source so every tool runs the same work:
    the modules it loads and its `access_by_lua_block`."""
    src = open(f"{ROOT}/benches/src/bin/e2e.rs").read()
    modules = re.search(r"const NGINX_LUA_MODULES: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    access = re.search(r'const NGINX_LUA_ACCESS: &str = r#"(.*?)"#;', src, re.S)
    if not modules or not access:
        sys.exit("NGINX_LUA_MODULES / NGINX_LUA_ACCESS not found in benches/src/bin/e2e.rs")
    return re.findall(r'"([^"]+)"', modules.group(1)), access.group(1).strip() + "\n    "


if __name__ == "__main__":
    what = sys.argv[1:2]
    if what == ["plugins"] and len(sys.argv) == 3:
        print(plugin_yaml(sys.argv[2]), end="")
    elif what == ["lua-modules"]:
        print(" ".join(runner_lua()[0]))
    elif what == ["lua-access"]:
        print(runner_lua()[1])
    else:
        sys.exit(__doc__)
