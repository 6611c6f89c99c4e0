#!/usr/bin/env python3
"""smallfiles.py DIR LABEL COUNT: COUNT files of 4 KiB in 10 directories:
create (write + close), stat, read (caches dropped first), delete. Prints
"LABEL small_<phase> FILES_PER_SECOND files/s" per phase."""
import os
import sys
import time

root, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
dirs = [os.path.join(root, f"d{i}") for i in range(10)]
for d in dirs:
    os.makedirs(d, exist_ok=True)
paths = [os.path.join(dirs[i % 10], f"f{i:06d}") for i in range(count)]
data = os.urandom(4096)


def phase(name, fn):
    start = time.monotonic()
    for p in paths:
        fn(p)
    rate = count / (time.monotonic() - start)
    print(f"{label} small_{name} {rate:.0f} files/s", flush=True)


def create(p):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)


def read(p):
    with open(p, "rb") as f:
        if len(f.read()) != 4096:
            raise SystemExit(f"{p}: short read")


phase("create", create)
phase("stat", os.stat)
os.sync()
with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("3\n")
phase("read", read)
phase("delete", os.unlink)
