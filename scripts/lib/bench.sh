# shellcheck shell=bash
# The BENCH line plumbing of the scripts/bench-*.sh scripts, in one place. A script sources it
# after setting `work_dir` (a scratch folder) and declaring `declare -A values=()`.
#   emit LINE            prints a `BENCH <name> <value> <unit>` line and remembers the value
#   unavailable NAME WHY prints `BENCH <name> unavailable (<why>)`
#   run_figures NAMES CMD...  runs CMD, which prints BENCH lines for NAMES (space-separated);
#                        any it did not print is reported unavailable with CMD's last stderr line
#   is_number TEXT       whether TEXT is a plain non-negative number
#   ratio NAME OURS THEIRS  prints `BENCH <name> <ours/theirs> ratio` from remembered values
#   build_bench_driver NAME [CARGO ARGS...]  builds (release) e2e-tests/benches/NAME.rs, a
#                        benchmark driver, with whatever else CARGO ARGS name (`-p runnel --bin
#                        runnel`), and prints the driver's path; cargo's output goes to stderr
#   build_release_bin PACKAGE BIN  builds (release) binary BIN of PACKAGE and prints its path;
#                        cargo's output goes to stderr
#   cargo_executable NAME KIND  prints the executable of target NAME (KIND bin or bench) from
#                        cargo's JSON messages on stdin

emit() {
  local line="$1" name value
  echo "$line"
  read -r _ name value _ <<<"$line"
  values["$name"]="$value"
}

unavailable() {
  local reason="$2"
  reason="$(tr -s '\n\t' '  ' <<<"$reason" | cut -c1-160)"
  emit "BENCH $1 unavailable (${reason% })"
}

run_figures() {
  local names="$1" status=0 name line reason
  shift
  # stdout to a file, stderr to the terminal and a file; with pipefail, $? is the command's.
  if "$@" 2>&1 >"$work_dir/out" | tee "$work_dir/err" >&2; then
    status=0
  else
    status=$?
  fi
  for name in $names; do
    line="$(grep -m1 "^BENCH $name " "$work_dir/out" || true)"
    if [[ -n "$line" ]]; then
      emit "$line"
    else
      reason="$(grep -v '^[[:space:]]*$' "$work_dir/err" | tail -n1 || true)"
      unavailable "$name" "${reason:-exited with status $status}"
    fi
  done
}

is_number() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

ratio() {
  local name="$1" ours="${values[$2]:-}" theirs="${values[$3]:-}"
  if ! is_number "$ours"; then
    unavailable "$name" "$2 unavailable"
  elif ! is_number "$theirs" || [[ "$theirs" =~ ^0+(\.0+)?$ ]]; then
    unavailable "$name" "$3 unavailable"
  else
    emit "BENCH $name $(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }') ratio"
  fi
}

# Reads cargo's `--message-format=json-render-diagnostics` output on stdin and prints the
# executable of the target NAME ($1) of kind KIND ($2: bin, bench).
cargo_executable() {
  python3 -c '
import json, sys
name, kind = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == name \
            and kind in message["target"]["kind"] and message.get("executable"):
        print(message["executable"])
' "$1" "$2"
}

build_bench_driver() {
  local name="$1"
  shift
  cargo build --release -p runnel-e2e-tests --bench "$name" "$@" \
    --message-format=json-render-diagnostics | cargo_executable "$name" bench
}

build_release_bin() {
  cargo build --release -p "$1" --bin "$2" --message-format=json-render-diagnostics |
    cargo_executable "$2" bin
}
