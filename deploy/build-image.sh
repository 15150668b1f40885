#!/usr/bin/env bash
# Builds the intentd container image FROM scratch out of a statically linked release binary,
# and the compose deployment's certificates with `intentd certs init` when they are missing.
#
#   deploy/build-image.sh [IMAGE]        (default: $INTENTD_IMAGE or intentd:local)
#
# Environment: CARGO_TARGET_DIR (default: <repo>/target), SKIP_CARGO=1 to reuse the binary
# already built, KEEP_DEBUG=1 to keep debug info in the image's binary, INTENTD_CERTS
# (default: deploy/certs) and INTENTD_NET_PREFIX (172.29.71) for the certificates.
# The image holds only /intentd and an empty /data owned by uid 10001; certificates are never
# put in the image (compose.yaml mounts them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
image=${1:-${INTENTD_IMAGE:-intentd:local}}
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bin=$target_dir/$triple/release/intentd

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed"

if [[ ${SKIP_CARGO:-0} != 1 ]]; then
    log "cargo build --release --bin intentd --target $triple (static glibc)"
    # --target keeps RUSTFLAGS away from build scripts and proc macros, which must stay
    # dynamic host binaries; only the intentd binary and its dependencies get crt-static.
    (cd "$repo" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo build --release --locked --bin intentd --target "$triple")
fi
[[ -x $bin ]] || die "no binary at $bin"

# The image has no loader and no libc: the binary must be static and must run on its own.
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
    ldd "$bin" >&2 || true
    die "$bin is dynamically linked"
fi
if command -v readelf >/dev/null && readelf -l "$bin" | grep -q 'INTERP'; then
    die "$bin asks for a program interpreter (not static)"
fi
version=$(env -i "$bin" --version) || die "the static binary does not run"
env -i "$bin" serve --help >/dev/null || die "the static binary cannot parse its own flags"
log "binary ok: $version, $(du -h "$bin" | cut -f1), static"

# A minimal build context: the Dockerfile, the binary and an empty data directory.
ctx=$(mktemp -d "${TMPDIR:-/tmp}/intentd-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/Dockerfile"
# The release profile keeps debug info (about 100 MB); the image gets a copy without it
# (symbols stay, so panics still show function names). KEEP_DEBUG=1 keeps everything.
if [[ ${KEEP_DEBUG:-0} != 1 ]] && command -v objcopy >/dev/null; then
    objcopy --strip-debug "$bin" "$ctx/intentd"
else
    cp "$bin" "$ctx/intentd"
fi
chmod 0755 "$ctx/intentd"
mkdir "$ctx/data"
chmod 0700 "$ctx/data"

revision=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
log "docker build -t $image (context $(du -sh "$ctx" | cut -f1))"
# The daemon here may have no BuildKit/buildx; the classic builder handles this Dockerfile.
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --quiet \
    --label "org.opencontainers.image.title=intentd" \
    --label "org.opencontainers.image.version=${version#intentd }" \
    --label "org.opencontainers.image.revision=$revision" \
    -t "$image" "$ctx" >/dev/null
log "built $image: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$image")"

# The deployment's certificates (compose.yaml: HTTPS, gRPC TLS, mutual TLS on the Raft plane).
# Made once: an existing CA is kept, so clients that trust deploy/certs/ca.pem keep working
# across image rebuilds. Each node's certificate names its bridge address (the Raft address
# its peers dial), localhost and 127.0.0.1 (the published port).
certs=${INTENTD_CERTS:-$here/certs}
prefix=${INTENTD_NET_PREFIX:-172.29.71}
if [[ ! -f $certs/ca.pem ]]; then
    log "intentd certs init --dir $certs (nodes at $prefix.11-13)"
    nodes=()
    for n in 1 2 3; do nodes+=(--node "$n=node$n,$prefix.1$n,localhost,127.0.0.1"); done
    "$bin" certs init --dir "$certs" "${nodes[@]}" >/dev/null
else
    log "keeping the certificates in $certs"
fi
# The nodes run as uid 10001 and must read their key (mode 0600): hand the mounted files to
# that uid. ca.key is not mounted and stays the caller's.
chmod 0644 "$certs"/ca.pem "$certs"/node[123].pem
if [[ $(stat -c %u "$certs/node1.key") != 10001 ]]; then
    if [[ $(id -u) == 0 ]]; then
        chown 10001:10001 "$certs"/node[123].key
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo chown 10001:10001 "$certs"/node[123].key
    else
        die "the nodes (uid 10001) cannot read $certs/node*.key: run 'sudo chown 10001:10001 $certs/node*.key'"
    fi
fi
