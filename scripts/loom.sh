#!/usr/bin/env bash
# Runs the loom models of the limiter (src/limiter/loom_tests.rs).
#
# The models need `--cfg tollgate_loom` on this crate only. `cargo rustc`
# passes it to this crate alone, so every dependency keeps the fingerprint
# of the ordinary `cargo test` build and is reused; RUSTFLAGS would have
# changed them all and rebuilt every dependency a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# Optimised (for this crate alone, like the cfg): the models explore every
# interleaving and run several times faster than unoptimised.
bin=$(cargo rustc --lib --profile test --message-format=json \
        -- --cfg tollgate_loom -C opt-level=2 |
      sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
if [[ -z "$bin" ]]; then
  echo "loom.sh: the model test binary was not built" >&2
  exit 1
fi
"$bin" loom "$@"
