#!/usr/bin/env bash
# Unpacks Debian 12's Abseil source package (20220623.1, with Debian's
# patches: its options.h and the CVE-2025-0838 fix) into the user's cache,
# where the @com_google_absl repository (third_party/absl/debian_source.bzl)
# finds it. Uses a private apt state directory with a deb-src entry, so the
# machine's apt configuration is untouched. Does nothing once unpacked.
set -euo pipefail

version="20220623.1"
cache="${GPUALLOC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpualloc}"
dest="$cache/sources/abseil-$version"
[[ -f "$dest/.complete" ]] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial"
cat >"$work/src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_opts=(-o "Dir::State::Lists=$work/lists" -o "Dir::Etc::SourceList=/dev/null"
          -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::Etc::sourcelist=$work/src.sources"
          -qq)
echo "fetch_debian_source: fetching Debian's abseil source package into $dest" >&2
apt-get "${apt_opts[@]}" update >&2
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only abseil >&2)
dsc=("$work"/abseil_"$version"-*.dsc)
[[ -f "${dsc[0]}" ]] || { echo "fetch_debian_source: no abseil $version source package" >&2; exit 1; }
dpkg-source --no-check -x "${dsc[0]}" "$work/unpacked" >/dev/null
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/unpacked" "$dest"
touch "$dest/.complete"
