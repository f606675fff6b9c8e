# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # variables shared with scripts/build-runtimes.sh
# Recipe of the nodejs20.x runtime image, sourced by scripts/build-runtimes.sh, which unpacks the
# Debian trixie packages of ./packages (./suite), then calls populate and check (see README.md
# beside this file and ../README.md).

node=/usr/bin/node
# Where the runtime interface client goes: Lambda's runtime directory ($LAMBDA_RUNTIME_DIR),
# whose node_modules is on NODE_PATH (./env).
ric_dir=/var/runtime/node_modules/aws-lambda-ric

populate() {
    bundle_ca_certificates
    set_utc
    link_busybox_applets
    build_ric
}

# npm's aws-lambda-ric, unmodified, at the version package-lock.json pins (with its integrity
# hash), installed with the machine's npm (tarballs cached in $cache/npm) and its native addon
# (rapid-client.node: aws-lambda-cpp and a static libcurl, built from the tarballs the package
# ships, with cmake and autotools) compiled here against the machine's Node.js headers: an
# N-API addon, so it loads in any Node.js of the same N-API version or later. Only what runs
# goes into the image: package.json, bin/ and dist/ (the bundle and the addon).
build_ric() {
    local tool build="$work/ric" addon
    for tool in node npm cmake autoconf automake libtool make g++; do
        command -v "$tool" >/dev/null || case $tool in
        node | npm) apt_install nodejs npm ;;
        libtool) command -v libtoolize >/dev/null || apt_install libtool ;;
        *) apt_install "$tool" ;;
        esac
    done
    local headers
    headers="$(dirname "$(dirname "$(command -v node)")")"
    [[ -f "$headers/include/node/node_api.h" ]] || die "no Node.js headers at $headers/include/node (install the machine's Node.js development files)"
    log "$name: building aws-lambda-ric $(sed -n 's/.*"aws-lambda-ric": "\(.*\)".*/\1/p' "$recipe_dir/package.json" | head -1) with node $(node --version), npm $(npm --version), headers in $headers"
    mkdir -p "$build" "$cache/npm"
    cp "$recipe_dir/package.json" "$recipe_dir/package-lock.json" "$build/"
    # package.json's allowScripts approves aws-lambda-ric's install scripts for npm versions
    # that ask; older ones run them anyway. Nothing is fetched but the locked tarballs, and no
    # Node.js headers: nodedir points node-gyp at the machine's.
    (
        cd "$build"
        npm_config_nodedir="$headers" npm_config_cache="$cache/npm" \
            npm ci --prefer-offline --no-audit --no-fund --foreground-scripts >"$work/npm.log" 2>&1
    ) || {
        tail -n 40 "$work/npm.log" >&2
        die "npm could not build aws-lambda-ric (whole log above: last 40 lines)"
    }
    addon="$build/node_modules/aws-lambda-ric/dist/rapid-client.node"
    [[ -f "$addon" ]] || {
        tail -n 40 "$work/npm.log" >&2
        die "aws-lambda-ric's install scripts did not build dist/rapid-client.node"
    }
    mkdir -p "$staging$ric_dir"
    cp -r "$build/node_modules/aws-lambda-ric/"{package.json,bin,dist} "$staging$ric_dir/"
    rm -f "$staging$ric_dir"/dist/*.d.ts "$staging$ric_dir"/dist/*.d.mts
    strip --strip-unneeded "$staging$ric_dir/dist/rapid-client.node"
}

check() {
    # The addon reads AWS_LAMBDA_RUNTIME_API when it loads (and aborts without it).
    in_image /usr/bin/env AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001 "$node" -e '
const assert = require("assert");
const tls = require("tls"), zlib = require("zlib"), crypto = require("crypto");
assert.strictEqual(process.versions.node.split(".")[0], "20", process.versions.node);
assert(tls.rootCertificates.length > 100, "no CA certificates");
crypto.createHash("sha256").update("x").digest("hex");
zlib.gunzipSync(zlib.gzipSync("x")); zlib.brotliDecompressSync(zlib.brotliCompressSync("x"));
assert.strictEqual(new Intl.DateTimeFormat("fr-FR", { timeZone: "Europe/Paris", hour: "numeric" }).format(new Date(Date.UTC(2024, 0, 1, 12))), "13 h");
require(process.argv[1] + "/dist/rapid-client.node");
console.log("nodejs20.x image: node", process.versions.node, "openssl", process.versions.openssl, "icu", process.versions.icu, "aws-lambda-ric", require(process.argv[1] + "/package.json").version);
' "$ric_dir" >&2 || die "the nodejs20.x image failed its check"

    log "$name: smoke-testing aws-lambda-ric with tests/functions/node/"
    cp "$repo"/tests/functions/node/*.js "$repo"/tests/functions/node/*.mjs "$staging/var/task/"
    local paths=NODE_PATH=/var/runtime/node_modules:/var/task
    smoke_test index.echo "$paths" -- \
        --event '{"hello": "world", "n": [1, 2.5, null]}' --expect '{"response": {"hello": "world", "n": [1, 2.5, null]}}' \
        --event '"again"' --expect '{"response": "again"}'
    smoke_test index.fail "$paths" -- --event '{}' --expect '{"error": {"errorType": "TypeError", "errorMessage": "boom"}}'
    smoke_test index.callback "$paths" -- \
        --event '{"fail": "no"}' --expect '{"error": {"errorType": "RangeError", "errorMessage": "no"}}'
    smoke_test esm.echo "$paths" -- --event '{"esm": true}' --expect '{"response": {"esm": true}}'
    smoke_test esm.context "$paths" -- \
        --event '{"throw": true}' --expect '{"error": {"errorType": "EmberError", "errorMessage": "from an ES module"}}'
    rm -rf "${staging:?}/var/task"
    mkdir "$staging/var/task"
}
