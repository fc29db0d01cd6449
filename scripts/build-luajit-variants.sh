#!/usr/bin/env bash
# Build extra LuaJIT interpreters used as ljleak test targets, and cache them.
#
# Layout (DIR = ${LJLEAK_VARIANTS_DIR:-/var/cache/ljleak/luajit-variants}):
#   DIR/<name>/luajit           interpreter, built with -g, not stripped
#                               (DWARF + the static `globalL` symbol)
#   DIR/<name>/luajit.stripped  same binary after `strip --strip-all`
#   DIR/<name>/info.txt         one line:
#                               variant=<name> gc64=yes|no package=<src> version=<debian version>
#   DIR/.stamp                  written last; its presence (with the right
#                               content) means the cache is complete
# Names: luajit2-gc64, luajit2-nogc64 (OpenResty branch, `apt-get source
# luajit2`), upstream-gc64, upstream-nogc64 (LuaJIT 2.1, `apt-get source
# luajit`).
#
# Debian (bookworm) only, run as root: it may enable deb-src, run
# apt-get update and install build-essential/dpkg-dev.
#
# Environment:
#   LJLEAK_VARIANTS_DIR    cache directory (see above)
#   LJLEAK_VARIANTS_FORCE  set to 1 to rebuild everything
#   LJLEAK_VARIANTS_JOBS   make -j value (default 2)
set -euo pipefail

# Bump when the build recipe or layout changes: invalidates old caches.
STAMP_CONTENT='ljleak-luajit-variants v1'
VARIANTS=(luajit2-gc64 luajit2-nogc64 upstream-gc64 upstream-nogc64)
DIR=${LJLEAK_VARIANTS_DIR:-/var/cache/ljleak/luajit-variants}
STAMP=$DIR/.stamp

# ---- warm path: builtins only, no forks ------------------------------------
cache_complete() {
    local s v
    [[ -f $STAMP ]] || return 1
    read -r s <"$STAMP" || return 1
    [[ $s == "$STAMP_CONTENT" ]] || return 1
    for v in "${VARIANTS[@]}"; do
        [[ -x $DIR/$v/luajit && -x $DIR/$v/luajit.stripped && -s $DIR/$v/info.txt ]] || return 1
    done
}
if [[ ${LJLEAK_VARIANTS_FORCE:-0} != 1 ]] && cache_complete; then
    echo "luajit variants: cached in $DIR"
    exit 0
fi

# ---- cold path ---------------------------------------------------------------
PROG=${0##*/}
JOBS=${LJLEAK_VARIANTS_JOBS:-2}
LOG=$DIR/build.log
STEP=setup
BUILD_TMP=

DIED=0
die() { echo "$PROG: error: $*" >&2; DIED=1; exit 1; }

cleanup() {
    local rc=$?
    [[ -n $BUILD_TMP && -d $BUILD_TMP ]] && rm -rf -- "$BUILD_TMP"
    if ((rc != 0 && !DIED)); then
        echo "$PROG: error: $STEP failed (exit $rc); log: $LOG" >&2
    fi
}

(( EUID == 0 )) || die "must run as root (apt-get, cache in $DIR)"
[[ -r /etc/debian_version ]] || die "Debian only"

mkdir -p -- "$DIR"
# One builder at a time; a second caller waits, then finds the cache warm.
exec 9>"$DIR/.lock"
flock 9
if [[ ${LJLEAK_VARIANTS_FORCE:-0} != 1 ]] && cache_complete; then
    echo "luajit variants: cached in $DIR (built by a concurrent run)"
    exit 0
fi
rm -f -- "$STAMP"
: >"$LOG"
trap cleanup EXIT

# Run a command with its output in the log.
run() { echo "+ $*" >>"$LOG"; "$@" >>"$LOG" 2>&1; }

# ---- apt: deb-src, build deps ---------------------------------------------------
# Backups go to the cache dir: apt would complain about unknown files in
# sources.list.d.
backup_apt_file() {
    mkdir -p -- "$DIR/apt-backup"
    cp -p -- "$1" "$DIR/apt-backup/${1//\//_}"
}
# Add deb-src to Debian's own entries (not third-party repos). Returns 0 if
# anything changed.
enable_deb_src_deb822() { # file
    local f=$1
    # Only stanzas whose Types line is exactly "deb" get deb-src added.
    grep -qE '^Types:[[:space:]]*deb[[:space:]]*$' "$f" || return 1
    backup_apt_file "$f"
    sed -i -E 's/^(Types:[[:space:]]*)deb[[:space:]]*$/\1deb deb-src/' "$f"
    return 0
}
enable_deb_src_classic() { # file
    local f=$1 line src changed=1 tmp
    tmp=$(mktemp)
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%s\n' "$line" >>"$tmp"
        if [[ $line =~ ^deb[[:space:]] && $line == *debian* ]]; then
            src="deb-src${line#deb}"
            if ! grep -qxF -- "$src" "$f"; then
                printf '%s\n' "$src" >>"$tmp"
                changed=0
            fi
        fi
    done <"$f"
    if ((changed == 0)); then
        backup_apt_file "$f"
        cat "$tmp" >"$f"
    fi
    rm -f -- "$tmp"
    return $changed
}
enable_deb_src() {
    local changed=1 f
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        enable_deb_src_deb822 /etc/apt/sources.list.d/debian.sources && changed=0
    fi
    if [[ -f /etc/apt/sources.list ]]; then
        enable_deb_src_classic /etc/apt/sources.list && changed=0
    fi
    # Other Debian entries in sources.list.d (e.g. a hand-made debian.list).
    for f in /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] && grep -qE '^deb[[:space:]].*debian\.org' "$f" || continue
        enable_deb_src_classic "$f" && changed=0
    done
    return $changed
}

# (grep without -q in pipelines: an early exit would SIGPIPE the writer and
# pipefail would turn a match into a failure.)
has_src() { apt-cache showsrc "$1" 2>/dev/null | grep '^Package:' >/dev/null; }

STEP="enabling deb-src"
APT_UPDATED=0
apt_update() { ((APT_UPDATED)) || { STEP="apt-get update"; run apt-get update; APT_UPDATED=1; }; }
if enable_deb_src; then
    apt_update
elif ! has_src luajit2 || ! has_src luajit; then
    apt_update
fi
STEP="finding source packages"
has_src luajit2 || die "source package luajit2 not found (deb-src enabled?)"
has_src luajit || die "source package luajit not found (deb-src enabled?)"

need=()
for p in build-essential dpkg-dev xz-utils patch binutils; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == *'ok installed' ]] || need+=("$p")
done
if ((${#need[@]})); then
    STEP="apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! run apt-get install -y --no-install-recommends "${need[@]}"; then
        apt_update
        STEP="apt-get install ${need[*]}"
        run apt-get install -y --no-install-recommends "${need[@]}"
    fi
fi

# ---- build ---------------------------------------------------------------------
BUILD_TMP=$(mktemp -d "$DIR/.build.XXXXXX")

# check_variant BIN WANT_GC64(yes|no): runs, reports GC64 as wanted (at run
# time via ffi.abi and in DWARF via sizeof(GCRef)), has globalL.
check_variant() {
    local bin=$1 want=$2 out rt dw
    out=$("$bin" -e 'local ffi=require"ffi"; print(jit.version, ffi.abi("gc64"))' 2>&1) ||
        die "$bin does not run: $out"
    case $out in
        *$'\t'true) rt=yes ;;
        *$'\t'false) rt=no ;;
        *) die "$bin: unexpected output: $out" ;;
    esac
    [[ $rt == "$want" ]] || die "$bin: ffi.abi(\"gc64\") says gc64=$rt, wanted $want"
    if command -v gdb >/dev/null; then
        dw=$(gdb -nx -batch -ex 'print sizeof(struct GCRef)' "$bin" 2>/dev/null | sed -n 's/^\$1 = //p')
        case $dw in
            8) dw=yes ;; 4) dw=no ;; *) die "$bin: no DWARF for struct GCRef (got '$dw')" ;;
        esac
        [[ $dw == "$want" ]] || die "$bin: DWARF sizeof(GCRef) says gc64=$dw, wanted $want"
    fi
    nm "$bin" 2>/dev/null | grep -w globalL >/dev/null || die "$bin: no globalL symbol"
}

# build_package SRCPKG PREFIX: builds PREFIX-gc64 and PREFIX-nogc64.
build_package() {
    local pkg=$1 prefix=$2 src ver arch_h default_gc64 kind want flags v out
    local work=$BUILD_TMP/$pkg
    mkdir -p -- "$work"
    STEP="apt-get source $pkg"
    (cd "$work" && run apt-get source -q "$pkg")
    src=
    for d in "$work"/*/; do [[ -f $d/src/luajit.c ]] && src=${d%/}; done
    [[ -n $src ]] || die "apt-get source $pkg: no source tree with src/luajit.c"
    ver=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)

    # Is GC64 the x86_64 default in this version? Newer lj_arch.h have an
    # opt-out (LUAJIT_DISABLE_GC64); older ones an opt-in (LUAJIT_ENABLE_GC64).
    arch_h=$src/src/lj_arch.h
    if grep -q 'LUAJIT_DISABLE_GC64' "$arch_h"; then default_gc64=yes; else default_gc64=no; fi
    echo "$pkg $ver: GC64 default on x86_64: $default_gc64" >>"$LOG"

    for kind in gc64 nogc64; do
        v=$prefix-$kind
        STEP="building $v ($pkg $ver)"
        if [[ $kind == gc64 ]]; then
            want=yes
            [[ $default_gc64 == yes ]] && flags= || flags=-DLUAJIT_ENABLE_GC64
        else
            want=no
            [[ $default_gc64 == yes ]] && flags=-DLUAJIT_DISABLE_GC64 || flags=
        fi
        run make -C "$src" clean
        run make -C "$src" -j"$JOBS" CCDEBUG=-g BUILDMODE=static Q= "XCFLAGS=$flags"
        out=$BUILD_TMP/out/$v
        mkdir -p -- "$out"
        cp -- "$src/src/luajit" "$out/luajit"
        STEP="checking $v"
        check_variant "$out/luajit" "$want"
        strip --strip-all -o "$out/luajit.stripped" "$out/luajit"
        check_variant_stripped "$out/luajit.stripped" "$want"
        printf 'variant=%s gc64=%s package=%s version=%s\n' "$v" "$want" "$pkg" "$ver" >"$out/info.txt"
        # Install this variant now (replacing any stale copy).
        rm -rf -- "${DIR:?}/$v"
        mv -- "$out" "$DIR/$v"
        echo "built $v: gc64=$want $pkg $ver ($(jit_version "$DIR/$v/luajit"))"
    done
    rm -rf -- "$work"   # keep the cache small
}

check_variant_stripped() {
    local bin=$1 want=$2 out
    out=$("$bin" -e 'local ffi=require"ffi"; print(ffi.abi("gc64") and "yes" or "no")' 2>&1) ||
        die "$bin does not run: $out"
    [[ $out == "$want" ]] || die "$bin: gc64=$out, wanted $want"
    [[ -z $(nm "$bin" 2>/dev/null || true) ]] || die "$bin: still has symbols"
}

jit_version() { "$1" -e 'io.write(jit.version)'; }

build_package luajit2 luajit2
build_package luajit upstream

STEP="writing stamp"
rm -rf -- "$BUILD_TMP"; BUILD_TMP=
printf '%s\n' "$STAMP_CONTENT" >"$STAMP"
cache_complete || die "cache incomplete after build"
rm -f -- "$LOG"
