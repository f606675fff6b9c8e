# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # variables shared with scripts/build-runtimes.sh
# Recipe of the provided.al2023 runtime image, sourced by scripts/build-runtimes.sh.
# Only the common skeleton: /sbin/init, the mount points, a minimal /etc. No Debian packages,
# no dynamic loader, no shell, no CA certificates: the function's own static `bootstrap`
# (from its zip, at /var/task) brings everything it needs.

populate() {
    :
}
