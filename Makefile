# dfs: the two commands a new machine needs are `make run` and `make test`.

CARGO ?= cargo

.PHONY: run test chaos build lint fmt clean install monitor bench fuzz

## run: build and start a local cluster (meta + 3 nodes) in the foreground
run:
	scripts/install-deps.sh
	$(CARGO) build --release --workspace --bins
	DFS_BIN_DIR=target/release scripts/run-cluster.sh

## test: the whole test suite (unit, conformance on SQLite and PostgreSQL, end to end)
test:
	scripts/test.sh

## chaos: the fault-injection run for 10 minutes (make test runs it for 25 s), and
## the time to full redundancy after a node with 1 GiB of data dies
chaos:
	scripts/install-deps.sh
	$(CARGO) build --workspace --bins
	DFS_CHAOS_SECS=$${DFS_CHAOS_SECS:-600} $(CARGO) test --workspace --test chaos -- --nocapture
	DFS_HEAL_MIB=1024 $(CARGO) test --workspace --test faults self_healing -- --nocapture

## bench: dfs vs local disk, bindfs and MooseFS on this machine; writes docs/BENCHMARKS.md
bench:
	bench/run.sh

## fuzz: build the fuzz targets (fuzz/README.md runs them with cargo-fuzz on nightly)
fuzz:
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) build --manifest-path fuzz/Cargo.toml

## monitor: a real Prometheus scraping the `make run` cluster (run it in a second terminal)
monitor:
	scripts/monitor.sh

build:
	$(CARGO) build --workspace --bins

## lint: formatting and clippy, as CI checks them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## install: release binaries into $(PREFIX)/bin and the mount helper
## /sbin/mount.fuse.dfs that mount(8) runs for `mount -t fuse.dfs`
PREFIX ?= /usr/local
SBINDIR ?= /sbin
install:
	$(CARGO) build --release --workspace --bins
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SBINDIR)
	install -m 0755 target/release/dfs target/release/dfs-meta target/release/dfs-node target/release/dfs-fuse $(DESTDIR)$(PREFIX)/bin/
	ln -sf $(PREFIX)/bin/dfs-fuse $(DESTDIR)$(SBINDIR)/mount.fuse.dfs

clean:
	$(CARGO) clean
	rm -rf run-data
