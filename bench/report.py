#!/usr/bin/env python3
"""report.py RESULTS CACHE COMMAND: the benchmark table as Markdown, with the
ratios dfs/MooseFS and dfs/local, and each issue target checked."""
import datetime
import os
import platform
import statistics
import subprocess
import sys

results_path, cache, command = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {}
units = {}
for line in open(results_path):
    parts = line.split()
    if len(parts) == 4:
        system, workload, value, unit = parts
        runs.setdefault((system, workload), []).append(float(value))
        units[workload] = unit
# A workload run several times (BENCH_ROUNDS) counts with its median.
figures = {key: statistics.median(values) for key, values in runs.items()}
rounds = max((len(v) for v in runs.values()), default=1)

def speed(workload, system):
    """Higher is better for every figure: times become 1/time."""
    v = figures.get((system, workload))
    if v is None:
        return None
    return 1 / v if units[workload] == "s" and v > 0 else v

def ratio(workload, a, b):
    x, y = speed(workload, a), speed(workload, b)
    return None if x is None or not y else x / y

# Target: (what to compare with, minimum speed ratio). Times: ratio of speeds.
targets = {
    # The targets of the small-files-and-metadata speed issue (#11).
    "seq_write_1G": ("moosefs", 1.2),
    "seq_read_cold": ("moosefs", 1.5),
    "seq_read_warm": ("moosefs", 1.0),
    "rand_read_4k_4jobs": ("moosefs", 2.0),
    "small_create": ("moosefs", 3.0),
    "small_stat": ("moosefs", 3.0),
    "small_read": ("moosefs", 2.0),
    "small_delete": ("moosefs", 2.0),
    "create_10k_entries": ("moosefs", 2.0),
    "ls_l_10k_cold": ("moosefs", 1 / 0.3),
    "cp_r_in_20k": ("moosefs", 2.0),
    "cp_r_out_20k": ("moosefs", 2.0),
    "tar_x_20k": ("moosefs", 2.0),
    "git_clone_5k": ("moosefs", 2.0),
    "rm_rf_20k": ("moosefs", 2.0),
}

def fmt(v):
    return "n/a" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.0f}")

workloads = [w for w in units if w != "fuse_peak_rss_1G_write"]
# The small-file workloads again with meta on PostgreSQL (target: ≥ 1× MooseFS).
pg_rows = ["| workload | unit | MooseFS (goal 3) | dfs (SQLite) | dfs (PostgreSQL) | PostgreSQL vs MooseFS | target | met |",
           "|---|---|---|---|---|---|---|---|"]
for w in workloads:
    if ("dfs-pg", w) not in figures:
        continue
    r = ratio(w, "dfs-pg", "moosefs")
    met = "n/a" if r is None else ("yes" if r >= 1.0 else f"no ({r:.2f}×)")
    pg_rows.append(f"| {w} | {units[w]} | " + " | ".join(fmt(figures.get((s, w))) for s in ["moosefs", "dfs", "dfs-pg"])
                   + f" | {fmt(r)}× | ≥ 1× MooseFS | {met} |")
pg_table = "" if len(pg_rows) == 2 else (
    "With meta on PostgreSQL (its own server, PostgreSQL's defaults: fsync on), the same\n"
    "cluster otherwise, the small-file workloads:\n\n" + "\n".join(pg_rows) + "\n")
rows = ["| workload | unit | local disk | bindfs (FUSE) | MooseFS (goal 3) | dfs | dfs vs MooseFS | dfs vs local | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|"]
for w in workloads:
    vs_mfs = ratio(w, "dfs", "moosefs")
    vs_local = ratio(w, "dfs", "local")
    target, met = "", ""
    if w in targets:
        base, minimum = targets[w]
        if base == "local/3":
            r = None if vs_local is None else vs_local * 3
            target = f"≥ {minimum}× local/3"
        else:
            r = vs_mfs
            target = f"≥ {minimum}× MooseFS" if units[w] != "s" else f"≤ {1/minimum:.1f}× MooseFS time"
        met = "n/a" if r is None else ("yes" if r >= minimum else f"no ({r:.2f}×)")
    rows.append(f"| {w} | {units[w]} | " + " | ".join(fmt(figures.get((s, w))) for s in ["local", "bindfs", "moosefs", "dfs"])
                + f" | {fmt(vs_mfs)}× | {fmt(vs_local)}× | {target} | {met} |")
rss = figures.get(("dfs", "fuse_peak_rss_1G_write"))
cache_mib = int(cache.rstrip("M"))
rss_line = ("n/a" if rss is None else
            f"{rss:.0f} MiB with cache_size={cache} (target ≤ {cache_mib + 64} MiB: {'met' if rss <= cache_mib + 64 else 'missed'})")

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"

notes_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
notes = open(notes_path).read() if os.path.exists(notes_path) else ""
print(f"""# Benchmarks

Produced by `{command}` on {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.
Machine: {os.cpu_count()} cores, {sh("free -g | awk '/Mem:/ {print $2}'")} GiB RAM, Linux {platform.release()},
disk `{sh("df -h /tmp | tail -n 1 | awk '{print $1, $2}'")}`. All the systems ran in this one invocation,
on the same disk, one group of workloads at a time through every system, the systems'
order reversed from one group to the next{f" ({rounds} rounds, medians)" if rounds > 1 else ""}.
Absolute numbers drift on shared machines; compare the ratios within this run.

- **local disk**: a directory on the local file system (the limit).
- **bindfs**: a FUSE passthrough over a local directory (what FUSE itself costs).
- **MooseFS**: 3.0 from Debian, master + 3 chunkservers + mfsmount, goal 3, no trash.
  Its chunkservers do not fsync by default.
- **dfs**: meta (SQLite) + 3 nodes + `dfs-fuse` (release build), 3 replicas,
  close = on every replica, fsync = fsynced on every replica.
- **dfs-pg**: the same, with meta on PostgreSQL (a server of its own, fsync on); the
  small-file workloads only.

Ratios are speed ratios: above 1 means dfs is faster (for times, the other system's
time divided by dfs's).

{chr(10).join(rows)}

FUSE daemon peak RSS during the 1 GiB write: {rss_line}.

{pg_table}
{notes}""")
