# shellcheck shell=bash
# Common helpers for Ember's scripts. Source it from bash:
#   . "$(dirname "$0")/lib.sh"
#
# Provides:
#   ember_repo            the repository's root directory
#   ember_cache           ${EMBER_CACHE:-$HOME/.cache/ember}
#   ember_have_hw_kvm     true when /dev/kvm is hardware KVM (kvm_intel/kvm_amd, not kvm_pvm)
#   ember_on_kvm_host CMD ARGS...
#                         runs CMD directly on a hardware KVM host, else inside the emulated
#                         KVM host (scripts/kvm-host.sh); returns CMD's exit status
#   ember_apt_update      apt-get update, at most once (also across nested scripts)
#   ember_apt_install PKG...
#                         installs the packages that are not installed yet

ember_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ember_cache=${EMBER_CACHE:-$HOME/.cache/ember}
# The release binary (.cargo/config.toml builds for an explicit target, statically linked).
ember_exe=${CARGO_TARGET_DIR:-$ember_repo/target}/x86_64-unknown-linux-gnu/release/ember

ember_have_hw_kvm() {
    [ -e /dev/kvm ] || return 1
    [ -e /sys/module/kvm_pvm ] && return 1
    [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]
}

ember_on_kvm_host() {
    if ember_have_hw_kvm; then
        "$@"
    else
        "$ember_repo/scripts/kvm-host.sh" -- "$@"
    fi
}

# Runs a command as root: directly when we are root, else through sudo.
_ember_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

ember_apt_update() {
    [ -n "${EMBER_APT_UPDATED:-}" ] && return 0
    local log
    log=$(mktemp)
    if ! _ember_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "ember: apt-get update failed" >&2
        return 1
    fi
    rm -f "$log"
    export EMBER_APT_UPDATED=1
}

ember_apt_install() {
    local missing=() p status log
    for p in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    ember_apt_update || return 1
    echo "ember: installing ${missing[*]}" >&2
    log=$(mktemp)
    if ! _ember_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "ember: apt-get install ${missing[*]} failed" >&2
        return 1
    fi
    rm -f "$log"
}
