"""Compares a Gustavo agent's Glances API with a real Glances, plugin by plugin.

usage: compare.py VERSION REAL_URL OURS_URL

For every plugin both serve (and `all`), the JSON types must match, objects must carry
every key the real one does, and list entries every key of the real entries. Prints one
line per difference and exits 1 if there is any.
"""

import json
import sys
import urllib.error
import urllib.request

# Fields a real Glances fills from hardware or libraries this machine may lack; their
# presence differs between hosts, not between implementations.
OPTIONAL = {"cpu_hz"}


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, None


def kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return type(v).__name__


def compare(path, real, ours, out):
    if kind(real) != kind(ours) and not (real is None or ours is None):
        out.append(f"{path}: real is {kind(real)}, ours is {kind(ours)}")
        return
    if isinstance(real, dict):
        for k, v in real.items():
            if k not in ours:
                if k not in OPTIONAL:
                    out.append(f"{path}.{k}: missing")
                continue
            compare(f"{path}.{k}", v, ours[k], out)
    elif isinstance(real, list) and real and ours:
        if isinstance(real[0], dict):
            # The keys every real entry has (Glances adds some to the top process only).
            common = set(real[0])
            for e in real:
                common &= set(e)
            ref = ours[0]
            for k, v in real[0].items():
                if k not in common:
                    continue
                if k not in ref:
                    out.append(f"{path}[].{k}: missing")
                elif v is not None and ref[k] is not None and kind(v) != kind(ref[k]):
                    out.append(f"{path}[].{k}: real is {kind(v)}, ours is {kind(ref[k])}")


def main():
    version, real_url, ours_url = sys.argv[1], sys.argv[2], sys.argv[3]
    base = f"/api/{version}"
    _, real_plugins = get(real_url + base + "/pluginslist")
    _, our_plugins = get(ours_url + base + "/pluginslist")
    out = []
    shared = sorted(set(real_plugins) & set(our_plugins))
    for p in shared + ["status"]:
        rs, real = get(f"{real_url}{base}/{p}")
        os_, ours = get(f"{ours_url}{base}/{p}")
        if rs != os_:
            out.append(f"{p}: real answered {rs}, ours {os_}")
            continue
        compare(p, real, ours, out)
    # The item routes, and an unknown plugin.
    for route in ["cpu/total", "load/min5", "mem/percent", "fs/mnt_point", "nosuchplugin"]:
        rs, real = get(f"{real_url}{base}/{route}")
        os_, ours = get(f"{ours_url}{base}/{route}")
        if rs != os_:
            out.append(f"{route}: real answered {rs}, ours {os_}")
        elif real is not None:
            compare(route, real, ours, out)
    print(f"API v{version}: {len(shared)} plugins compared: {' '.join(shared)}")
    for line in out:
        print("DIFF", line)
    sys.exit(1 if out else 0)


main()
