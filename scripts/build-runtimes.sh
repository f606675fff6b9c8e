#!/usr/bin/env bash
# Builds the read-only runtime root images into ${EMBER_GUEST_DIR:-<repo>/target/guest}/runtimes/:
#   <name>.ext4          the image: /sbin/init = ember-init, the mount points, a minimal /etc,
#                        plus whatever rootfs/runtimes/<name>/ adds (Debian packages, wheels, ...)
#   <name>.ext4.stamp    what the image was built from (it is rebuilt when that changes)
#   <name>.command       the runtime's argv, $HANDLER standing for the handler (from the recipe)
#   <name>.env           KEY=VALUE lines the agent sets for that command (from the recipe)
# One image for each directory of rootfs/runtimes/ (see its README.md), or only the names given
# as arguments. Needs $EMBER_GUEST_DIR/ember-init, which scripts/build-guest.sh builds first.
#
# An image is rebuilt only when its stamp changes: this script, ember-init, the recipe's files
# (all but README.md, command and env) and the exact Debian package files the apt lists resolve
# its package list to. Downloads (.debs, wheels, npm's tarballs) are cached in
# ${EMBER_CACHE:-~/.cache/ember}/runtimes/, so a rebuild needs no network once they are there;
# so are the images built (images/<name>-<stamp hash>.ext4, the newest two of each runtime),
# which a clean checkout copies instead of building again.
# Nothing is mounted. Verifying an image with Debian packages needs chroot, so root (or sudo).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${EMBER_GUEST_DIR:-$repo/target/guest}"
recipes="$repo/rootfs/runtimes"
cache="${EMBER_CACHE:-$HOME/.cache/ember}/runtimes"
init="$out/ember-init"
self="$repo/scripts/build-runtimes.sh"
# Free space left in each image, on top of 10 % of its content, in MiB.
headroom_mib=4
# The directories every image has. ember-init mounts onto proc sys dev run tmp (and the code
# drive onto var/task, layers onto opt) and creates nothing on the read-only root.
skeleton_dirs=(proc sys dev run tmp var/task opt etc sbin)
# PATH inside the images (as ember-init sets it).
image_path=/usr/bin:/bin:/usr/sbin:/sbin
# Where a recipe with a `suite` file gets its Debian packages from.
debian_mirror="${EMBER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# apt-get's options for the recipe being built: none (the machine's own sources and lists), or
# a private apt state for the suites its `suite` file names (see use_suites).
apt_opts=()

umask 022
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "build-runtimes: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

sudo_if_needed() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

# Prints "<path> <size>" for one artifact, like build-guest.sh.
report() {
    local bytes
    bytes="$(stat -c %s "$1")"
    printf '%s %s (%s bytes)\n' "$1" "$(numfmt --to=iec-i --suffix=B "$bytes")" "$bytes"
}

apt_install() {
    log "installing $*"
    sudo_if_needed apt-get update -qq
    sudo_if_needed apt-get install -y -qq "$@" >/dev/null
}

# Runs a command inside the image being built ($staging), with a clean environment.
in_image() {
    sudo_if_needed env -i PATH="$image_path" LANG=C.UTF-8 chroot "$staging" "$@"
}

# The words of a list file: comments (#...) and blank lines dropped.
list_words() {
    sed 's/#.*//' "$1" | tr -s ' \t' '\n' | sed '/^$/d'
}

# A recipe's packages from other Debian suites than the machine's (e.g. trixie, for a runtime
# bookworm does not have): a private apt state in $cache/apt/<suites>/ with only those suites'
# lists and an empty dpkg status (so that the machine's installed packages play no part), used
# by resolve_debs and fetch_debs through apt_opts. Its lists are fetched the first time.
use_suites() {
    local suites=("$@") dir suite
    dir="$cache/apt/$(
        IFS=+
        echo "${suites[*]}"
    )"
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    for suite in "${suites[@]}"; do
        echo "deb $debian_mirror $suite main"
    done >"$dir/sources.list"
    [[ -f "$dir/status" ]] || : >"$dir/status"
    apt_opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$dir/lists" -o "Dir::State::status=$dir/status" -o "Dir::Cache=$dir/cache")
    # apt drops to its _apt user to download, which cannot write to a private directory.
    [[ "$(id -u)" != 0 ]] || apt_opts+=(-o APT::Sandbox::User=root)
    if ! compgen -G "$dir/lists/*_Packages*" >/dev/null; then
        log "fetching the apt lists of ${suites[*]} from $debian_mirror"
        apt-get "${apt_opts[@]}" update -qq >&2 || die "cannot fetch the apt lists of ${suites[*]}"
    fi
}

# Resolves a package list to the candidates of the apt lists (the machine's, or those of the
# recipe's suites), printing "<file name> <sha256>" a line. Updates the lists once if a package
# is unknown to them.
resolve_debs() {
    local list="$1" packages uris
    mapfile -t packages < <(list_words "$list")
    if ! uris="$(apt-get "${apt_opts[@]}" download --print-uris "${packages[@]}" 2>/dev/null)"; then
        log "updating the apt lists to resolve $list"
        sudo_if_needed apt-get "${apt_opts[@]}" update -qq
        uris="$(apt-get "${apt_opts[@]}" download --print-uris "${packages[@]}")" || die "cannot resolve $list"
    fi
    # Lines look like: 'URI' FILE SIZE SHA256:HEX
    awk '{ sub(/^SHA256:/, "", $4); print $2, $4 }' <<<"$uris" | sort
}

# Makes sure every .deb of a resolve_debs listing is in the cache, downloading the missing ones.
fetch_debs() {
    local resolved="$1" file sha missing=()
    mkdir -p "$cache/debs"
    while read -r file sha; do
        if [[ ! -f "$cache/debs/$file" ]] || [[ "$(sha256sum <"$cache/debs/$file" | cut -d' ' -f1)" != "$sha" ]]; then
            missing+=("${file%%_*}")
        fi
    done <<<"$resolved"
    ((${#missing[@]})) || return 0
    log "downloading ${#missing[@]} Debian package(s): ${missing[*]}"
    local partial sandbox=()
    partial="$(mktemp -d "$cache/debs/partial.XXXXXX")"
    # apt drops to its _apt user to download, which cannot write to a private directory.
    [[ "$(id -u)" != 0 ]] || sandbox=(-o APT::Sandbox::User=root)
    (cd "$partial" && apt-get "${apt_opts[@]}" download -q "${sandbox[@]}" "${missing[@]}" >&2)
    while read -r file sha; do
        if [[ -f "$partial/$file" ]]; then
            [[ "$(sha256sum <"$partial/$file" | cut -d' ' -f1)" == "$sha" ]] ||
                die "$file: checksum differs from the apt lists'"
            mv "$partial/$file" "$cache/debs/$file"
        fi
        [[ -f "$cache/debs/$file" ]] || die "$file was not downloaded"
    done <<<"$resolved"
    rm -rf "$partial"
}

# Downloads the pinned wheels of a requirements file into $2, from the cache when it has them.
fetch_wheels() {
    local requirements="$1" dest="$2" args
    command -v python3 >/dev/null || apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    args=(download --disable-pip-version-check --quiet --no-deps --only-binary=:all:
        --platform "$wheel_platform" --python-version "$wheel_python" --implementation cp
        --abi "cp${wheel_python/./}" --abi abi3 --abi none -r "$requirements")
    mkdir -p "$cache/wheels"
    if ! python3 -m pip "${args[@]}" --no-index --find-links "$cache/wheels" -d "$dest" >/dev/null 2>&1; then
        log "downloading the wheels of $requirements"
        python3 -m pip "${args[@]}" -d "$cache/wheels" >&2
        python3 -m pip "${args[@]}" --no-index --find-links "$cache/wheels" -d "$dest" >&2
    fi
}

# Unpacks wheels (their purelib/platlib content) into a directory, as pip --target would.
install_wheels() {
    python3 - "$@" <<'EOF'
import os, shutil, sys, zipfile
target, wheels = sys.argv[1], sys.argv[2:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    sys.exit(f"{wheel}: {info.filename}: only purelib/platlib data is supported")
                parts = parts[2:]
            if info.is_dir() or ".." in parts or parts[0] == "":
                continue
            dest = os.path.join(target, *parts)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(dest, 0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
EOF
}

# Checks that every dynamically linked ELF file in the image finds all its libraries there.
check_elf_deps() {
    local file rel listing bad=0
    while IFS= read -r -d '' file; do
        [[ "$(head -c 4 "$file")" == $'\x7fELF' ]] || continue
        readelf -d "$file" 2>/dev/null | grep -q '(NEEDED)' || continue
        rel="/${file#"$staging"/}"
        if ! listing="$(in_image /lib64/ld-linux-x86-64.so.2 --list "$rel" 2>&1)" ||
            grep -q 'not found' <<<"$listing"; then
            log "error: $rel does not load in the image:"
            grep 'not found' <<<"$listing" >&2 || echo "$listing" >&2
            bad=1
        fi
    done < <(find "$staging" -type f \( -name '*.so*' -o -perm -u+x \) -print0)
    ((bad == 0)) || die "libraries are missing from the $name image (add their packages to $recipe_dir/packages)"
}

# Helpers for recipes' populate() (see rootfs/runtimes/README.md).

# TLS roots as the one bundle OpenSSL's default paths point at (from the ca-certificates
# package): the job of update-ca-certificates and of the openssl package's links on Debian.
bundle_ca_certificates() {
    compgen -G "$staging/usr/share/ca-certificates/mozilla/*.crt" >/dev/null ||
        die "no CA certificates in the $name image (add ca-certificates to its packages)"
    mkdir -p "$staging/etc/ssl/certs" "$staging/usr/lib/ssl"
    cat "$staging"/usr/share/ca-certificates/mozilla/*.crt >"$staging/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$staging/usr/share/ca-certificates" "$staging/usr/sbin/update-ca-certificates" \
        "$staging/etc/ca-certificates"
    ln -s /etc/ssl/certs "$staging/usr/lib/ssl/certs"
    ln -s /etc/ssl/certs/ca-certificates.crt "$staging/usr/lib/ssl/cert.pem"
}

# The time zone: UTC, as on Lambda (tzdata gives the zoneinfo files).
set_utc() {
    ln -s /usr/share/zoneinfo/Etc/UTC "$staging/etc/localtime"
    echo Etc/UTC >"$staging/etc/timezone"
}

# smoke_test HANDLER [KEY=VALUE...] -- EVENTS...: runs the runtime's `command` ($HANDLER
# replaced), chrooted in the image, in /var/task, with those variables, against
# tests/functions/fake_runtime_api.py, which hands it the EVENTS' --event values and checks
# the --expect ones; dies with the client's output if it fails. The handler's files must be in
# $staging/var/task (the recipe's check empties it afterwards).
smoke_test() {
    local handler="$1" env=() as_root=() command log="$work/smoke.log"
    shift
    while [[ $# -gt 0 && "$1" != -- ]]; do
        env+=(--env "$1")
        shift
    done
    shift
    [[ "$(id -u)" == 0 ]] || as_root=(sudo --preserve-env)
    command="$(sed "s|\$HANDLER|$handler|" "$recipe_dir/command")"
    python3 "$repo/tests/functions/fake_runtime_api.py" "$@" "${env[@]}" --env _HANDLER="$handler" \
        -- "${as_root[@]}" chroot "$staging" /bin/sh -c "cd /var/task && exec $command" >"$log" 2>&1 || {
        cat "$log" >&2
        die "the $name image failed the smoke test of $handler"
    }
}

# /bin/sh and the usual commands from busybox-static (/bin/busybox): what `busybox --install -s`
# would do at boot, done here since the root is read-only in the VM. One relative symlink per
# applet at the path `busybox --list-full` gives (the binary is static: it runs on the host).
# sbin and usr/sbin are not on the guest's PATH, so an applet listed there also gets a link in
# bin or usr/bin. A file the image already has is kept (the runtime's own binaries, ember-init as
# /sbin/init); init and linuxrc (BusyBox's init, for initramfs) are not linked at all.
link_busybox_applets() {
    local busybox="$staging/bin/busybox" applet links link dir up kept=() count=0
    [[ -x "$busybox" ]] || die "busybox-static did not install /bin/busybox"
    rm -rf "$staging/usr/share/initramfs-tools" # busybox-static's initramfs hooks
    while read -r applet; do
        case "$applet" in
        bin/busybox | */init | linuxrc) continue ;;
        sbin/*) links=("$applet" "bin/${applet#sbin/}") ;;
        usr/sbin/*) links=("$applet" "usr/bin/${applet#usr/sbin/}") ;;
        *) links=("$applet") ;;
        esac
        for link in "${links[@]}"; do
            if [[ -e "$staging/$link" || -L "$staging/$link" ]]; then
                kept+=("/$link")
                continue
            fi
            # From the link's directory up to the root: one ../ per component.
            dir="${link%/*}" up=""
            while [[ -n "$dir" ]]; do
                up="../$up"
                [[ "$dir" == */* ]] && dir="${dir%/*}" || dir=""
            done
            mkdir -p "$staging/${link%/*}"
            if [[ "${link%/*}" == bin ]]; then
                ln -s busybox "$staging/$link"
            else
                ln -s "${up}bin/busybox" "$staging/$link"
            fi
            count=$((count + 1))
        done
    done < <("$busybox" --list-full)
    if ((${#kept[@]})); then
        log "$name: linked $count BusyBox applets; kept the files already at ${kept[*]}"
    else
        log "$name: linked $count BusyBox applets"
    fi
}

# The directories and /etc files every image has, and /sbin/init.
make_skeleton() {
    local dir
    for dir in "${skeleton_dirs[@]}"; do
        mkdir -p "$staging/$dir"
    done
    chmod 1777 "$staging/tmp"
    install -m 0755 "$init" "$staging/sbin/init"
    # sbx_user1051 is the user Lambda runs functions as.
    cat >"$staging/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
sbx_user1051:x:993:990::/tmp:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
    cat >"$staging/etc/group" <<'EOF'
root:x:0:
sbx_user1051:x:990:
nogroup:x:65534:
EOF
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$staging/etc/hosts"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$staging/etc/nsswitch.conf"
    : >"$staging/etc/resolv.conf"
}

# Writes $staging into an ext4 image: read-only use, so no journal, no reserved blocks, and
# only a little free space. Owners are root's even when we are not.
make_image() {
    local image="$1" label="$2" content_kib entries size_mib
    content_kib="$(du -sk "$staging" | cut -f1)"
    entries="$(find "$staging" | wc -l)"
    size_mib=$(((content_kib * 11 / 10 + 1023) / 1024 + headroom_mib))
    rm -f "$image.tmp"
    truncate -s "${size_mib}M" "$image.tmp"
    mkfs.ext4 -q -F -d "$staging" -L "$label" -O ^has_journal -E root_owner=0:0 -m 0 \
        -N $((entries + entries / 10 + 64)) -b 4096 "$image.tmp"
    if [[ "$(id -u)" != 0 || "$(id -g)" != 0 ]]; then
        (cd "$staging" && find . -mindepth 1 -printf 'sif /%P uid 0\nsif /%P gid 0\n') |
            debugfs -w -f - "$image.tmp" >/dev/null 2>&1
    fi
    mv "$image.tmp" "$image"
}

# Builds one runtime's image unless its stamp is current. Runs in a subshell: the recipe's
# variables and functions stay there.
build_runtime() (
    name="$1"
    recipe_dir="$recipes/$name"
    image="$out/runtimes/$name.ext4"
    stamp="$image.stamp"
    [[ -f "$recipe_dir/recipe.sh" ]] || die "$recipe_dir/recipe.sh is missing"
    [[ -f "$recipe_dir/command" ]] || die "$recipe_dir/command is missing"

    # The recipe: populate() adds to $staging (required), check() verifies it (optional); with
    # a requirements.txt it also sets wheel_python, wheel_platform and wheel_target.
    wheel_python="" wheel_platform="" wheel_target=""
    # shellcheck source=/dev/null
    source "$recipe_dir/recipe.sh"
    declare -F populate >/dev/null || die "$recipe_dir/recipe.sh defines no populate()"

    resolved=""
    if [[ -f "$recipe_dir/suite" ]]; then
        local suites
        mapfile -t suites < <(list_words "$recipe_dir/suite")
        ((${#suites[@]})) || die "$recipe_dir/suite names no suite"
        use_suites "${suites[@]}"
    fi
    if [[ -f "$recipe_dir/packages" ]]; then
        resolved="$(resolve_debs "$recipe_dir/packages")"
    fi
    want="$(
        echo "script $(sha256sum <"$self" | cut -d' ' -f1)"
        echo "ember-init $(sha256sum <"$init" | cut -d' ' -f1)"
        echo "headroom $headroom_mib"
        find "$recipe_dir" -type f ! -name README.md ! -name command ! -name env -printf '%P\n' | sort |
            while read -r file; do echo "recipe $file $(sha256sum <"$recipe_dir/$file" | cut -d' ' -f1)"; done
        [[ -z "$resolved" ]] || awk '{ print "deb", $0 }' <<<"$resolved"
    )"

    cp "$recipe_dir/command" "$out/runtimes/$name.command.tmp"
    mv "$out/runtimes/$name.command.tmp" "$out/runtimes/$name.command"
    if [[ -f "$recipe_dir/env" ]]; then
        grep -v -e '^#' -e '^[[:space:]]*$' "$recipe_dir/env" >"$out/runtimes/$name.env.tmp" || true
    else
        : >"$out/runtimes/$name.env.tmp"
    fi
    mv "$out/runtimes/$name.env.tmp" "$out/runtimes/$name.env"

    if [[ -f "$image" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "$name: up to date"
        return
    fi
    # Built before from the same stamp (by another checkout, or before a clean): copied.
    local key cached
    key="$(sha256sum <<<"$want" | cut -c1-16)"
    cached="$cache/images/$name-$key.ext4"
    if [[ -f "$cached" ]]; then
        cp "$cached" "$image.tmp"
        mv "$image.tmp" "$image"
        echo "$want" >"$stamp"
        log "$name: copied from $cached"
        return
    fi
    log "$name: building"
    local started=$SECONDS

    work="$(mktemp -d "$out/runtimes/$name-work.XXXXXX")"
    staging="$work/root"
    # shellcheck disable=SC2064 # expand now
    trap "rm -rf '$work' '$image.tmp'" EXIT
    mkdir "$staging"
    make_skeleton

    if [[ -n "$resolved" ]]; then
        fetch_debs "$resolved"
        log "$name: unpacking $(wc -l <<<"$resolved") Debian packages"
        while read -r file _; do
            dpkg-deb -x "$cache/debs/$file" "$staging"
        done <<<"$resolved"
        # Documentation and packaging metadata serve no function.
        rm -rf "$staging"/usr/share/{doc,man,info,lintian,bug,gdb,gcc,locale}
        # A merged-/usr suite (trixie on) ships its files under /usr only; base-files would make
        # /bin, /lib and /lib64 links to them (the ELF interpreter's path is /lib64/...). /sbin
        # stays the skeleton's directory, which holds /sbin/init.
        local dir
        for dir in bin lib lib64; do
            if [[ -d "$staging/usr/$dir" && ! -e "$staging/$dir" && ! -L "$staging/$dir" ]]; then
                ln -s "usr/$dir" "$staging/$dir"
            fi
        done
    fi
    if [[ -f "$recipe_dir/requirements.txt" ]]; then
        [[ -n "$wheel_python" && -n "$wheel_platform" && -n "$wheel_target" ]] ||
            die "$recipe_dir/recipe.sh must set wheel_python, wheel_platform and wheel_target"
        fetch_wheels "$recipe_dir/requirements.txt" "$work/wheels"
        log "$name: installing $(find "$work/wheels" -name '*.whl' | wc -l) wheels into $wheel_target"
        install_wheels "$staging$wheel_target" "$work/wheels"/*.whl
    fi

    populate

    if [[ -e "$staging/lib64/ld-linux-x86-64.so.2" ]]; then
        log "$name: checking the libraries of every ELF file"
        check_elf_deps
    fi
    if declare -F check >/dev/null; then
        log "$name: checking the image"
        check
    fi

    make_image "$image" "${name:0:16}" # ext4 labels have at most 16 bytes
    echo "$want" >"$stamp"
    # Kept for the next clean build; only the newest two of each runtime.
    mkdir -p "$cache/images"
    cp "$image" "$cached.tmp"
    mv "$cached.tmp" "$cached"
    find "$cache/images" -name "$name-*.ext4" -printf '%T@ %p\n' | sort -rn | tail -n +3 | cut -d' ' -f2- |
        xargs -r rm -f
    log "$name: built in $((SECONDS - started)) s"
)

main() {
    [[ -f "$init" ]] || die "$init is missing: run scripts/build-guest.sh"
    if ! command -v mkfs.ext4 >/dev/null || ! command -v debugfs >/dev/null; then
        apt_install e2fsprogs
    fi
    command -v dpkg-deb >/dev/null || apt_install dpkg
    command -v apt-get >/dev/null || die "apt-get is needed to fetch the runtimes' Debian packages"
    mkdir -p "$out/runtimes"

    local names=("$@") name
    if ((${#names[@]} == 0)); then
        for dir in "$recipes"/*/; do
            names+=("$(basename "$dir")")
        done
    fi
    for name in "${names[@]}"; do
        [[ -d "$recipes/$name" ]] || die "no recipe for runtime $name in $recipes"
        build_runtime "$name"
    done
    for name in "${names[@]}"; do
        report "$out/runtimes/$name.ext4"
    done
}

main "$@"
