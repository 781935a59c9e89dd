#!/usr/bin/env bash
# Checks the Terraform module (infra/terraform/aws) and its example, as strongly as this machine
# allows, and prints one line per check and a closing `terraform checks: N passed, M failed`:
#   fmt       tofu fmt -check -recursive
#   validate  tofu init + validate of the module and of examples/complete, against AWS provider
#             6.25.0's schema: the real provider cannot be had here (the Go module proxy refuses
#             terraform-provider-aws and no provider registry is reachable), so a schema-only
#             stand-in built from that version's published schema serves it
#             (infra/terraform/test/schema-provider)
#   test      tofu test of the module (aws/tests/*.tftest.hcl): plans and applies with a mocked
#             provider (nothing reaches AWS): which resources each input makes, the containers'
#             settings and tokens, the backfill command, the inputs' validations
#   checkov   static security analysis: no failed check; skips are justified in the code
#   python    infra/terraform/test (unittest): settings parity with compose, runnel accepting
#             each service's settings (runnel config; RUNNEL_BIN, else target/debug/runnel, skipped
#             when missing unless RUNNEL_REQUIRE_BIN=1), the README's tables
# Installs what it needs (scripts/lib/terraform.sh: OpenTofu and the provider built with Go,
# a venv with checkov), cached under ${RUNNEL_CACHE:-~/.cache/runnel}; cold about 6 minutes,
# warm about 20 s. The plans and applies are `tofu test`'s, against a mocked provider: a `plan`
# against an AWS API (moto's) would need the real provider (see the module's README). Run by
# scripts/test.sh (RUNNEL_TERRAFORM=0 skips it there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/terraform.sh

ensure_tofu
ensure_terraform_venv
ensure_aws_schema_provider

work="$(mktemp -d "${TMPDIR:-/tmp}/runnel-terraform.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat >"$work/tofu.rc" <<RC
provider_installation {
  filesystem_mirror {
    path    = "$TERRAFORM_PROVIDER_MIRROR"
    include = ["registry.opentofu.org/hashicorp/aws"]
  }
  direct {
    exclude = ["registry.opentofu.org/hashicorp/aws"]
  }
}
RC
export TF_CLI_CONFIG_FILE="$work/tofu.rc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1

passed=0
failed=0
check() {
  local name="$1"
  shift
  local started=$SECONDS
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    echo "check $name: ok ($((SECONDS - started)) s)"
    # The tools' own summaries.
    grep -E '^(Success!|Passed checks:|Ran [0-9]+ test)' "$work/out" | sed 's/^/    /' || true
  else
    failed=$((failed + 1))
    echo "check $name: FAILED ($((SECONDS - started)) s)"
    sed 's/^/    /' "$work/out"
  fi
}

# A copy, so that init's .terraform folders and lock files stay out of the tree.
cp -r infra/terraform "$work/terraform"
validate() {
  (cd "$work/terraform/$1" && "$TOFU" init -backend=false -input=false -no-color >/dev/null &&
    "$TOFU" validate -no-color)
}

check fmt "$TOFU" fmt -check -recursive -diff -no-color infra/terraform
check "validate aws" validate aws
check "validate examples/complete" validate examples/complete
check test bash -c 'cd "$1" && "$TOFU" test -no-color' test "$work/terraform/aws"
# --skip-download: checkov asks its vendor's API for guidelines otherwise. A file it cannot
# parse is a file it did not check, so that fails too. (tofu test files are not Terraform.)
checkov() {
  "$TERRAFORM_VENV/bin/checkov" --directory infra/terraform --framework terraform --skip-download \
    --skip-path '\.tftest\.hcl$' --compact --output cli >"$work/checkov.out" 2>&1
  local status=$?
  # The summary, each failed check with its place, and each file it could not parse.
  grep -E -B1 -A2 '^Passed checks:|FAILED for' "$work/checkov.out" | grep -v '^--$' || true
  grep -i 'error parsing' "$work/checkov.out" && return 1
  return "$status"
}
check checkov checkov
check python "$TERRAFORM_PYTHON" -B -m unittest discover --start-directory infra/terraform/test

echo "terraform checks: $passed passed, $failed failed"
((failed == 0))
