# shellcheck shell=bash
# The tools that check infra/terraform, in one place. Sourced by scripts/check-terraform.sh;
# defines:
#   ensure_tofu            builds OpenTofu (TOFU_VERSION) from the Go module proxy once per
#                          machine (about 3.5 minutes cold) into ${RUNNEL_CACHE}/bin; exports
#                          TOFU=<its path>
#   ensure_terraform_venv  a venv ${RUNNEL_CACHE}/terraform-venv with the pinned checkov,
#                          python-hcl2 and PyYAML (about 30 s cold); exports
#                          TERRAFORM_PYTHON=<venv>/bin/python
#   ensure_aws_schema_provider
#                          builds the schema-only hashicorp/aws provider (infra/terraform/test/
#                          schema-provider) into a filesystem mirror; exports
#                          TERRAFORM_PROVIDER_MIRROR=<the mirror>
# Progress goes to stderr.

TOFU_VERSION=1.12.6
TERRAFORM_CHECKOV_VERSION=3.3.30
TERRAFORM_HCL2_VERSION=8.1.4
TERRAFORM_PYYAML_VERSION=6.0.4
RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
TERRAFORM_VENV="$RUNNEL_CACHE/terraform-venv"
TERRAFORM_VENV_REQUIREMENTS=("checkov==$TERRAFORM_CHECKOV_VERSION" "python-hcl2==$TERRAFORM_HCL2_VERSION"
  "PyYAML==$TERRAFORM_PYYAML_VERSION")

# Go's module cache and build cache under the runnel cache, so that a warm run builds nothing.
terraform_go_env() {
  export GOPATH="$RUNNEL_CACHE/go" GOFLAGS=-modcacherw GOCACHE="$RUNNEL_CACHE/go/build-cache"
}

ensure_tofu() {
  TOFU="$RUNNEL_CACHE/bin/tofu-$TOFU_VERSION"
  if [[ ! -x "$TOFU" ]]; then
    if ! command -v go >/dev/null; then
      echo "error: building OpenTofu needs Go (go on PATH)" >&2
      return 1
    fi
    terraform_go_env
    echo "==> building OpenTofu $TOFU_VERSION from the Go module proxy (about 3.5 minutes, once)" >&2
    local source
    # `go install module@version` refuses OpenTofu's go.mod (it has a replace directive), so
    # the module is downloaded and built in place.
    source="$(go mod download -json "github.com/opentofu/opentofu@v$TOFU_VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" || return 1
    mkdir -p "$RUNNEL_CACHE/bin"
    (cd "$source" && go build -o "$TOFU.tmp" \
      -ldflags "-X github.com/opentofu/opentofu/version.dev=no" ./cmd/tofu) >&2 || return 1
    mv "$TOFU.tmp" "$TOFU"
  fi
  export TOFU
}

terraform_venv_is_ready() {
  [[ -x "$TERRAFORM_VENV/bin/python" ]] &&
    [[ "$(cat "$TERRAFORM_VENV/runnel-requirements.txt" 2>/dev/null)" == "$(printf '%s\n' "${TERRAFORM_VENV_REQUIREMENTS[@]}")" ]] &&
    "$TERRAFORM_VENV/bin/python" -c 'import checkov, hcl2, yaml' 2>/dev/null
}

ensure_terraform_venv() {
  if ! terraform_venv_is_ready; then
    echo "==> creating $TERRAFORM_VENV with ${TERRAFORM_VENV_REQUIREMENTS[*]} (about 30 s, once)" >&2
    rm -rf "$TERRAFORM_VENV"
    python3 -m venv "$TERRAFORM_VENV" &&
      "$TERRAFORM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${TERRAFORM_VENV_REQUIREMENTS[@]}" >&2 || return 1
    printf '%s\n' "${TERRAFORM_VENV_REQUIREMENTS[@]}" >"$TERRAFORM_VENV/runnel-requirements.txt"
  fi
  export TERRAFORM_PYTHON="$TERRAFORM_VENV/bin/python"
}

ensure_aws_schema_provider() {
  terraform_go_env
  TERRAFORM_PROVIDER_MIRROR="$RUNNEL_CACHE/terraform/mirror"
  bash infra/terraform/test/schema-provider/build.sh "$TERRAFORM_PROVIDER_MIRROR" >&2 || return 1
  export TERRAFORM_PROVIDER_MIRROR
}
