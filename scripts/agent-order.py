#!/usr/bin/env python3
"""The agent's code laid out together in the gustavo binary, so a device maps only it.

One binary holds the server, the CLI and the agent; the kernel maps a binary's code into a
process by the 64 KB around each page it runs (and reads ahead around it), so an agent whose
functions are scattered among the server's ends up with most of the binary's code in its RSS
(18.9 MiB of 20.6 measured). Listing the functions an idle agent runs first in the binary
(lld's --symbol-ordering-file) keeps what it maps to about what it runs.

  agent-order.py pages PID BINARY            the pages of BINARY present in PID's memory
                                             (file offsets, from /proc/PID/pagemap; root)
  agent-order.py record BINARY PAGES         the functions of BINARY (with symbols) that lie
                                             on those pages, as names without hashes, in
                                             address order: the list to commit
                                             (gzipped: crates/gustavo/agent-order.txt.gz)
  agent-order.py resolve LIST OUT LINKARGS   at link time (scripts/link-ordered): the list's
                                             names as the objects being linked spell them,
                                             written to OUT

Names are compared without what changes from one build to the next (crate disambiguators,
back-references, LLVM's .llvm.N suffixes); the build mangles names with v0
(.cargo/config.toml), which spells out generic arguments, so one name seldom stands for many
instantiations. A name the build lacks as listed is looked up without LLVM's numbering of
local symbols and the crate a generic was instantiated in (`loose`); one it lacks either way
is skipped: a stale list only lays out less.

To record the list again (after the agent's code changed much):
  1. cargo build --profile profiling -p gustavo
  2. with readahead off (echo 0 > /sys/block/DEV/queue/read_ahead_kb, so only the pages the
     agent runs are read), run an agent from a copy of the binary out of the page cache and
     dump its pages:
       GUSTAVO_BIN=target/profiling/gustavo scripts/bench-agent.sh --no-build --cold \\
           --pages /tmp/pages.txt
     then restore the readahead
  3. scripts/agent-order.py record target/profiling/gustavo /tmp/pages.txt \\
         | gzip -9n > crates/gustavo/agent-order.txt.gz
  The list in the tree was recorded this way from a profiling build laid out by the list
  before it, plus (appended) what a release build with symbols (CARGO_PROFILE_RELEASE_STRIP=none)
  ran outside the laid-out code, recorded the same way.
"""

import gzip
import os
import re
import struct
import subprocess
import sys

PAGE = 4096


def norm(name):
    """A symbol name without what differs between two builds of the same code."""
    name = name.split(".llvm.")[0]
    if name.startswith("_R"):
        name = re.sub(r"Cs[0-9A-Za-z]*_", "Cs_", name)
        return re.sub(r"B[0-9A-Za-z]*_", "B_", name)
    if name.startswith("_ZN"):
        return re.sub(r"17h[0-9a-f]{16}E$", "E", name)
    return name


def loose(name):
    """A listed name as another build may spell it, for names the build lacks as listed:
    without the number LLVM gives a local symbol (`.1234`) and without the crate a generic
    was instantiated in (v0's trailing crate root), both of which can change between builds.
    May stand for several symbols (a few dozen copies of one small local function)."""
    name = re.sub(r"\.\d+$", "", name)
    if name.startswith("_R"):
        # The crate root is the `Cs_<len><ident>` whose ident runs to the end: an earlier
        # `Cs_` is followed by letters and digits to the end as well, so a single regex
        # anchored at `$` would stop at the first one.
        for m in re.finditer(r"Cs_(\d+)", name):
            if m.end() + int(m.group(1)) == len(name):
                name = name[: m.start()]
                break
    return name


def pages(pid, binary):
    """Prints `perm offset` for each page of `binary` mapped and present in `pid`."""
    path = os.path.realpath(binary)
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != path:
                continue
            start, end = (int(x, 16) for x in f[0].split("-"))
            offset = int(f[2], 16)
            n = (end - start) // PAGE
            pm.seek(start // PAGE * 8)
            entries = pm.read(n * 8)
            for i in range(n):
                if struct.unpack_from("<Q", entries, i * 8)[0] >> 63 & 1:
                    print(f[1], hex(offset + i * PAGE))


def text_delta(binary):
    """Virtual address minus file offset of the executable segment."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:-1]:
            return int(f[2], 16) - int(f[1], 16)
    sys.exit(f"{binary}: no executable segment")


def record(binary, pages_file):
    delta = text_delta(binary)
    touched = set()
    with open(pages_file) as f:
        for line in f:
            perm, offset = line.split()
            if "x" in perm:
                touched.add((int(offset, 16) + delta) // PAGE)
    out = subprocess.run(
        ["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True
    )
    syms = []
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "tTwW" and int(f[1], 16) > 0:
            syms.append((int(f[0], 16), int(f[1], 16), f[3]))
    seen = set()
    for addr, size, name in sorted(syms):
        if any(p in touched for p in range(addr // PAGE, (addr + size - 1) // PAGE + 1)):
            n = norm(name)
            if n not in seen:
                seen.add(n)
                print(n)


def link_inputs(args):
    """The object files and archives among the linker's arguments (@files expanded)."""
    for a in args:
        if a.startswith("@") and os.path.isfile(a[1:]):
            with open(a[1:]) as f:
                yield from link_inputs(l.strip().strip('"') for l in f if l.strip())
        elif a.endswith((".o", ".rlib", ".a")) and os.path.isfile(a):
            yield a


def resolve(list_file, out_file, args):
    with (gzip.open if list_file.endswith(".gz") else open)(list_file, "rt") as f:
        wanted = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    inputs = list(link_inputs(args))
    spelled, loosely = {}, {}
    for i in range(0, len(inputs), 200):
        out = subprocess.run(
            ["nm", "--defined-only", "-P", *inputs[i : i + 200]],
            capture_output=True,
            text=True,
        )
        for line in out.stdout.splitlines():
            f = line.split()
            if len(f) >= 2 and f[1] in "tTwW":
                spelled.setdefault(norm(f[0]), []).append(f[0])
                loosely.setdefault(loose(norm(f[0])), []).append(f[0])
    n = found = 0
    placed = set()
    with open(out_file, "w") as out:
        for w in wanted:
            symbols = spelled.get(w) or loosely.get(loose(w), ())
            found += bool(symbols)
            for s in symbols:
                if s not in placed:
                    placed.add(s)
                    out.write(s + "\n")
                    n += 1
    print(f"agent-order: {found} of {len(wanted)} listed functions found, {n} symbols", file=sys.stderr)
    return found > 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "pages":
        pages(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "record":
        record(argv[1], argv[2])
    elif len(argv) >= 3 and argv[0] == "resolve":
        sys.exit(0 if resolve(argv[1], argv[2], argv[3:]) else 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
