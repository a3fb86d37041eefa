#!/usr/bin/env bash
# Install the Debian packages that `make test` needs, and only the missing ones.
#
# Each tool is checked on its own and brings one package. Node.js and npm are the one
# pair: Node.js from its own packages (nodesource's, npm inside) conflicts with Debian's
# npm, so nothing is asked for when `npm` is on PATH, only `npm` when `node` is there
# without it, and both when neither is. `apt-get update` runs only when something is
# missing.
#
#   scripts/sysdeps.sh            install what is missing (root, apt)
#   scripts/sysdeps.sh --dry-run  print the apt commands instead of running them
#
# Only shell built-ins are used before apt runs, so a test can run this script with a
# PATH that holds just the tools it wants to be found.
set -u

dry_run=0
case "${1:-}" in
"") ;;
--dry-run) dry_run=1 ;;
*)
    echo "usage: $0 [--dry-run]" >&2
    exit 2
    ;;
esac

missing=()
need() { # need TOOL PACKAGE: PACKAGE when TOOL is not on PATH
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}

need unzip unzip             # interop tests, benchmark baselines
need zip zip                 # interop tests, benchmark baselines
need mkfs.xfs xfsprogs       # the reflink test (an XFS image on a loop device)
need fusermount3 fuse3       # the FUSE mount
need chromium chromium       # browser tests of the web pages
# Libraries, found through the linker's cache.
libs=$(ldconfig -p 2>/dev/null)
need_lib() { # need_lib SONAME PACKAGE: PACKAGE when the linker does not know SONAME
    [[ $libs == *"$1 "* ]] || missing+=("$2")
}
need_lib libfuse3.so.3 libfuse3-3 # loaded by the FUSE mount
need_lib libatomic.so.1 libatomic1 # Playwright's Node driver (browser tests); comes with gcc
# Azurite (the Azure emulator) runs on Node.js and installs with npm.
if ! command -v npm >/dev/null 2>&1; then
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    missing+=(npm)
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi
update=(apt-get update -q)
install=(apt-get install -y -q "${missing[@]}")
if ((dry_run)); then
    echo "${update[*]}"
    echo "${install[*]}"
    exit 0
fi
echo "sysdeps: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
    echo "sysdeps: no apt-get here; install the packages for: ${missing[*]}" >&2
    exit 1
fi
if ((EUID != 0)); then
    echo "sysdeps: run as root, or install them: sudo ${install[*]}" >&2
    exit 1
fi
"${update[@]}" && DEBIAN_FRONTEND=noninteractive "${install[@]}"
