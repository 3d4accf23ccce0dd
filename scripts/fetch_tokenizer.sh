#!/usr/bin/env bash
# Fetch the Llama-2 tokenizer data shipped inside the npm package llama-tokenizer-js@1.2.2.
#
# The package embeds Meta's Llama-2 vocabulary (32000 pieces) and its 61249 BPE merges, which
# `rlhf tokenizer build` (llama::tokenizer_build) turns into an HF `tokenizer.json`. This avoids
# the gated meta-llama repositories while giving byte-identical tokenization.
#
# Result: .cache/llama-tokenizer-js/llama-tokenizer.js (+ test-llama-tokenizer.js), repo-relative.
# Idempotent: does nothing when the file is already present with the expected sha256.
set -euo pipefail

VERSION="1.2.2"
PACKAGE="llama-tokenizer-js@${VERSION}"
EXPECTED_SHA256="34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPM_DIR="${ROOT}/.cache/npm"
DEST_DIR="${ROOT}/.cache/llama-tokenizer-js"
DEST="${DEST_DIR}/llama-tokenizer.js"

die() { echo "fetch_tokenizer: error: $*" >&2; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | awk '{print $1}'
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | awk '{print $1}'
    else
        die "neither sha256sum nor shasum is installed"
    fi
}

if [[ -f "${DEST}" ]] && [[ "$(sha256_of "${DEST}")" == "${EXPECTED_SHA256}" ]]; then
    echo "fetch_tokenizer: ${DEST} already present and verified"
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm is required (install Node.js >= 18)"
command -v tar >/dev/null 2>&1 || die "tar is required"

mkdir -p "${NPM_DIR}" "${DEST_DIR}"
TARBALL="${NPM_DIR}/llama-tokenizer-js-${VERSION}.tgz"
if [[ ! -f "${TARBALL}" ]]; then
    echo "fetch_tokenizer: npm pack ${PACKAGE} -> ${NPM_DIR}"
    (cd "${NPM_DIR}" && npm pack --silent "${PACKAGE}" >/dev/null) \
        || die "npm pack ${PACKAGE} failed (is the npm registry reachable?)"
    [[ -f "${TARBALL}" ]] || die "npm pack did not produce ${TARBALL}"
fi

EXTRACT="${NPM_DIR}/extract-${VERSION}"
rm -rf "${EXTRACT}"
trap 'rm -rf "${EXTRACT}"' EXIT
mkdir -p "${EXTRACT}"
tar -xzf "${TARBALL}" -C "${EXTRACT}" || die "cannot extract ${TARBALL}"
SRC="${EXTRACT}/package/llama-tokenizer.js"
[[ -f "${SRC}" ]] || die "${TARBALL} has no package/llama-tokenizer.js"

ACTUAL="$(sha256_of "${SRC}")"
if [[ "${ACTUAL}" != "${EXPECTED_SHA256}" ]]; then
    rm -f "${TARBALL}"
    die "sha256 mismatch for package/llama-tokenizer.js from ${PACKAGE}: expected ${EXPECTED_SHA256}, got ${ACTUAL} (tarball removed; rerun to retry)"
fi

cp "${SRC}" "${DEST}.tmp" && mv "${DEST}.tmp" "${DEST}"
for extra in test-llama-tokenizer.js package.json LICENSE.md; do
    if [[ -f "${EXTRACT}/package/${extra}" ]]; then
        cp "${EXTRACT}/package/${extra}" "${DEST_DIR}/${extra}"
    fi
done
echo "fetch_tokenizer: ${DEST} verified (sha256 ${EXPECTED_SHA256})"
