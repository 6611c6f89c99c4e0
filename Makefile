# dfs: the two commands a new machine needs are `make run` and `make test`.

CARGO ?= cargo

.PHONY: run test build lint fmt clean install

## run: build and start a local cluster (meta + 3 nodes) in the foreground
run:
	scripts/install-deps.sh
	$(CARGO) build --workspace --bins
	scripts/run-cluster.sh

## test: the whole test suite (unit, conformance on SQLite and PostgreSQL, end to end)
test:
	scripts/test.sh

build:
	$(CARGO) build --workspace --bins

## lint: formatting and clippy, as CI checks them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## install: release binaries into $(PREFIX)/bin (default /usr/local)
PREFIX ?= /usr/local
install:
	$(CARGO) build --release --workspace --bins
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 target/release/dfs target/release/dfs-meta target/release/dfs-node $(DESTDIR)$(PREFIX)/bin/

clean:
	$(CARGO) clean
	rm -rf run-data
