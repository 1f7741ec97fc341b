"""Real Glances clients against a Gustavo agent's Glances API.

usage: clients.py URL CONTAINER

1. Home Assistant's client, PyPI `glances-api`, with API v3 and v4: every sensor group it
   builds from a Glances host, and our container among the containers.
2. FRACTAL's resource manager: GET the root (liveness), then /api/3/cpu, /api/3/mem,
   /api/3/load, reading the fields it reads.
"""

import asyncio
import json
import sys
import urllib.request

from glances_api import Glances

url, container = sys.argv[1], sys.argv[2]
host, port = url.rsplit("//", 1)[1].split(":")


async def ha(version):
    g = Glances(host=host, port=int(port), version=version)
    data = await g.get_ha_sensor_data()
    for group in ["fs", "mem", "memswap", "load", "processcount", "cpu", "percpu", "network", "uptime", "diskio"]:
        assert group in data, f"v{version}: no `{group}` in {sorted(data)}"
    assert data["cpu"]["cpu_use_percent"] >= 0
    assert "/" in data["fs"], data["fs"]
    assert data["mem"]["memory_use"] > 0
    assert container in data.get("containers", {}), f"v{version}: {data.get('containers')}"
    assert data["docker"]["docker_active"] >= 1
    await g.get_metrics("cpu")
    assert "total" in g.values
    print(f"glances-api v{version}: {len(data)} sensor groups, {len(data['containers'])} containers")


asyncio.run(ha(3))
asyncio.run(ha(4))


def get(path):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        body = r.read()
        return r.status, (json.loads(body) if path != "" and body else body)


status, _ = get("")
assert status == 200
_, cpu = get("/api/3/cpu")
_, mem = get("/api/3/mem")
_, load = get("/api/3/load")
assert isinstance(cpu["total"], (int, float))
assert isinstance(mem["percent"], (int, float)) and mem["total"] > 0 and mem["available"] > 0
assert isinstance(load["min5"], (int, float)) and isinstance(load["min1"], (int, float))
print(f"FRACTAL poll: cpu {cpu['total']} %, mem {mem['percent']} % of {mem['total'] / 1024**3:.1f} GB, load5 {load['min5']}")
