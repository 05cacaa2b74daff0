# liandan: the two commands of the quick start are `make demo` and `make test`.
# Every target sets up libtorch first (cached under ~/.cache/liandan; see
# scripts/setup-libtorch.sh), so a fresh machine needs only Rust and Python 3.

SHELL := /bin/bash
TORCH_ENV = eval "$$(scripts/setup-libtorch.sh)"
# The reference implementations the conformance tests hold liandan against (W&B's engine and agent).

.PHONY: all build test demo bench chaos clean lint

all: build

## build: every binary, libtorch trainer included (debug profile)
build:
	@$(TORCH_ENV) && cargo build --workspace --all-targets

## test: the whole test suite (unit, integration, end-to-end with real binaries, and
## conformance against the reference implementations installed by scripts/setup-testenv.sh)
test: build
	@$(TORCH_ENV) && eval "$$(scripts/setup-testenv.sh)" && if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

## demo: a coordinator and two workers on this machine run examples/demo.yaml and print the results
demo: build
	@$(TORCH_ENV) && scripts/demo.sh

## chaos: the short chaos suite (about a minute; `make test` runs it too). MINUTES=N soaks
## for N minutes of faults with a new random schedule; LIANDAN_CHAOS_SEED=S replays one.
chaos: build
	@$(TORCH_ENV) && if [ -n "$(MINUTES)" ]; then \
		export LIANDAN_CHAOS_SECS=$$(( $(MINUTES) * 60 )) LIANDAN_CHAOS_SEED=$${LIANDAN_CHAOS_SEED:-random}; \
	fi; cargo test -p liandan-e2e --test chaos -- --nocapture

## bench: the benchmarks in BENCHMARKS.md (release profile)
bench:
	@$(TORCH_ENV) && scripts/bench.sh

lint:
	@$(TORCH_ENV) && cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf .demo
