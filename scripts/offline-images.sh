#!/usr/bin/env bash
# Makes the base images the Docker tests use, without a registry: a Debian root
# filesystem made with debootstrap from the package mirror this machine's own
# apt configuration names (the repository names no host), then `docker import`. Real users' domains use public base images (python:3.12-slim, …);
# the tests point the templates at these through the node's config.
#
#   scripts/offline-images.sh            # makes what is missing
#   PESC_MIRROR=http://... scripts/offline-images.sh
#
# Images (tags are what tests/ and docs/ use):
#   pesc-offline/python:bookworm   python3 (+ pip), sh
#   pesc-offline/gcc:bookworm      python3, gcc, make, libc6-dev
#   pesc-offline/r:bookworm        R (Rscript)
#   pesc-offline/java:bookworm     Java 17 JDK (java, javac, jar)
set -euo pipefail
# The mirror: PESC_MIRROR, else the first non-security Debian source apt uses.
mirror="${PESC_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
    | grep -v -e security -e '^$' | head -1 || true)"
fi
if [ -z "$mirror" ]; then
  mirror="$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | awk '$2 !~ /^\[/ {print $2} $2 ~ /^\[/ {print $3}' | grep -v security | head -1 || true)"
fi
if [ -z "$mirror" ]; then
  echo "no Debian package mirror in this machine's apt configuration: set PESC_MIRROR" >&2
  exit 1
fi
work="${PESC_IMAGE_WORK:-/var/tmp/pesc-offline-images}"
mkdir -p "$work"

make_image() { # TAG PACKAGES
  local tag="$1" pkgs="$2"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag: present"
    return
  fi
  local root="$work/$(echo "$tag" | tr '/:' '__')"
  rm -rf "$root"
  echo "$tag: debootstrap bookworm with $pkgs"
  debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null
  rm -rf "$root"
  echo "$tag: made"
}

make_image pesc-offline/python:bookworm python3,python3-pip
make_image pesc-offline/gcc:bookworm python3,gcc,make,libc6-dev
make_image pesc-offline/r:bookworm r-base-core
make_image pesc-offline/java:bookworm default-jdk-headless
