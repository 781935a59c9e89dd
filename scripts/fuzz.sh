#!/usr/bin/env bash
# Fuzzes the parsers that read untrusted bytes (libs/fuzz; see ARCHITECTURE.md, Testing) and
# fails on any crash. What .ci/run runs after the tests.
# - Installs cargo-fuzz into ${RUNNEL_CACHE:-~/.cache/runnel}/cargo-fuzz when missing (about a
#   minute, once) and builds every target with nightly into ${RUNNEL_CACHE}/fuzz-target, apart
#   from the stable build's target/.
# - Replays each target's checked-in crashes (libs/fuzz/regressions/<target>/), then fuzzes it
#   for FUZZ_SECONDS (default 60; 0 runs the corpus once) on a copy of libs/fuzz/corpus/<target>/
#   in a temporary folder, so the tree stays clean. FUZZ_SEED fixes libFuzzer's seed (.ci/run
#   sets one, so a crash found there replays with the same seed and time).
# - On a crash, prints the input (path and bytes), the panic, and how to keep it as a
#   regression test; the input stays under ${RUNNEL_CACHE}/fuzz-artifacts/.
# Arguments name the targets to run (default: all), e.g. `bash scripts/fuzz.sh sql_compile`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
seconds="${FUZZ_SECONDS:-60}"
cargo_fuzz_version=0.13.2
fuzz_dir=libs/fuzz
target_dir="$cache/fuzz-target"
all_targets=(ingest_validate record_decode log_format parquet_history sql_compile)
if (($# > 0)); then
  targets=("$@")
else
  targets=("${all_targets[@]}")
fi

work=""
cleanup() {
  if [[ -n "$work" ]]; then
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
cargo_fuzz="$cache/cargo-fuzz/bin/cargo-fuzz"
if [[ "$("$cargo_fuzz" --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]]; then
  echo "==> installing cargo-fuzz $cargo_fuzz_version into $cache/cargo-fuzz"
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" --root "$cache/cargo-fuzz"
fi

# The fuzz crate's lock starts from the main one's, so both build the same versions of
# everything they share. When the main dependencies change, start it again from there.
if ! cargo +nightly metadata --locked --format-version 1 --manifest-path "$fuzz_dir/Cargo.toml" \
  >/dev/null 2>&1; then
  echo "==> $fuzz_dir/Cargo.lock is out of date; starting it again from Cargo.lock (commit the result)"
  cp Cargo.lock "$fuzz_dir/Cargo.lock"
fi

# Release with debug assertions and overflow checks, coverage-guided, without AddressSanitizer:
# the code denies `unsafe`, so ASan would find little and it makes the build and every run
# slower. 16 codegen units make the cold build much faster than cargo-fuzz's default of 1.
echo "==> cargo +nightly fuzz build (release, debug assertions, no sanitizer) into $target_dir"
build_start=$SECONDS
PATH="$cache/cargo-fuzz/bin:$PATH" cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" \
  --release --debug-assertions --sanitizer none --codegen-units 16 --target-dir "$target_dir"
echo "==> built in $((SECONDS - build_start)) s"
host="$(rustup run nightly rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$host/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/runnel-fuzz.XXXXXX")"
artifacts="$cache/fuzz-artifacts/$(date -u +%Y%m%dT%H%M%SZ)"
failed=()

# Prints what a failed run left behind and how to turn it into a regression test.
report_crash() {
  local target="$1" log="$2" what="$3" found=0 input
  cp "$log" "$artifacts/$target.log"
  echo "==> $target FAILED $what (whole output: $artifacts/$target.log):"
  # The failure without its backtrace: the input being replayed, the panic and its place, a
  # refused allocation, libFuzzer's verdict.
  grep -E -A3 '^Running: |panicked at|^memory allocation of|ERROR: libFuzzer' "$log" |
    grep -v -E '^ +[0-9]+: |^ +at |^--$|^stack backtrace:|^note: ' | tail -n 20 | sed 's/^/    /' || true
  for input in "$artifacts/$target"/*; do
    [[ -f "$input" ]] || continue
    found=1
    echo "==> crashing input: $input ($(wc -c <"$input") bytes), base64:"
    head -c 4096 "$input" | base64 | sed 's/^/    /'
  done
  if ((found == 0)); then
    return
  fi
  cat <<EOF
==> to reproduce:  $bin_dir/$target <input>
    to minimise:   $bin_dir/$target -minimize_crash=1 -runs=100000 -artifact_prefix=/tmp/min- <input>
    to keep it as a regression test: put the (minimised) input in $fuzz_dir/regressions/$target/
    (this script replays those first), fix the code at fault, and add a unit test beside it with
    the input's bytes.
EOF
}

for target in "${targets[@]}"; do
  bin="$bin_dir/$target"
  if [[ ! -x "$bin" ]]; then
    echo "error: no fuzz target $target (targets: ${all_targets[*]})" >&2
    exit 1
  fi
  mkdir -p "$artifacts/$target" "$work/$target"
  log="$work/$target.log"
  libfuzzer_args=(-artifact_prefix="$artifacts/$target/" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1)
  if [[ -n "${FUZZ_SEED:-}" ]]; then
    libfuzzer_args+=(-seed="$FUZZ_SEED")
  fi

  regressions=()
  if [[ -d "$fuzz_dir/regressions/$target" ]]; then
    mapfile -t regressions < <(find "$fuzz_dir/regressions/$target" -type f | sort)
  fi
  if ((${#regressions[@]} > 0)); then
    echo "==> $target: replaying ${#regressions[@]} regression inputs"
    if ! "$bin" "${libfuzzer_args[@]}" "${regressions[@]}" >"$log" 2>&1; then
      report_crash "$target" "$log" "on a checked-in regression input (it is not fixed yet)"
      failed+=("$target")
      continue
    fi
  fi

  cp -R "$fuzz_dir/corpus/$target/." "$work/$target/"
  if ((seconds > 0)); then
    echo "==> $target: fuzzing for $seconds s from $(find "$work/$target" -type f | wc -l) corpus inputs"
    run_args=(-max_total_time="$seconds")
  else
    echo "==> $target: running the corpus once"
    run_args=(-runs=0)
  fi
  if "$bin" "${libfuzzer_args[@]}" "${run_args[@]}" "$work/$target" >"$log" 2>&1; then
    # libFuzzer's last status line: executions, coverage, corpus size.
    echo "    $(grep -E '^#[0-9]+' "$log" | tail -n 1)"
  else
    report_crash "$target" "$log" "while fuzzing"
    failed+=("$target")
  fi
done

if ((${#failed[@]} > 0)); then
  echo "==> fuzzing failed: ${failed[*]} (inputs under $artifacts)"
  exit 1
fi
rm -rf "$artifacts"
echo "==> fuzzing passed: ${targets[*]}"
