"""Throughput of the provider simulator for archive calls.

    python -m benchmarks.bench_simulator [--seconds 5] [--clients 4] [--provider green-api]
                                               [--chats 100000] [--json]

The simulator runs in its own process (as `chat-archiver simulate` would); several client
processes each keep one keep-alive httpx connection and archive chats as fast as the answers come
back. Every client walks its own slice of the pre-generated chats, so calls hit un-archived chats;
if a slice runs out the client wraps around and the 400/409 "already archived" answers count as
served requests too. The rate limit is disabled: this measures the simulator, not the limiter.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from worker.sandbox.simulator import SimulatorClient

ROOT = Path(__file__).resolve().parents[1]

GREEN_ID = "7105187566"
DEVICE_ID = "0123456789abcdef01234567"
TOKEN = "bench-token"


def start_server() -> tuple[subprocess.Popen[str], str]:
    code = "from worker.sandbox.simulator import serve; serve('127.0.0.1', 0)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chat_id(index: int) -> str:
    return f"79{index:011d}@c.us"


def worker(
    url: str,
    provider: str,
    first: int,
    span: int,
    start_at: float,
    seconds: float,
    results: Any,
) -> None:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=url, timeout=10.0, headers={"Token": TOKEN}) as http:
        if provider == "green-api":
            path = f"/waInstance{GREEN_ID}/archiveChat/{TOKEN}"

            def call(index: int) -> httpx.Response:
                return http.post(path, json={"chatId": chat_id(index)})
        else:

            def call(index: int) -> httpx.Response:
                return http.put(f"/v1/io/{DEVICE_ID}/chats/{chat_id(index)}/archive")

        http.get("/_sim/health")  # open the keep-alive connection before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds
        n = 0
        perf = time.perf_counter
        while True:
            began = perf()
            if began >= deadline:
                break
            response = call(first + n % span)
            latencies.append(perf() - began)
            statuses[response.status_code] += 1
            n += 1
    results.put((latencies, dict(statuses)))


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def run(seconds: float, clients: int, provider: str, chats: int) -> dict[str, Any]:
    proc, url = start_server()
    try:
        admin = SimulatorClient(url)
        account_id = GREEN_ID if provider == "green-api" else DEVICE_ID
        method = "archiveChat" if provider == "green-api" else "archive"
        admin.put_account(
            provider,
            account_id,
            token=TOKEN,
            rate_limits={method: None},
            generate={"count": chats, "group_ratio": 0.0, "seed": 7},
        )
        results: Any = mp.Queue()
        span = chats // clients
        start_at = time.time() + 1.0
        procs = [
            mp.Process(
                target=worker, args=(url, provider, i * span, span, start_at, seconds, results)
            )
            for i in range(clients)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before = cpu_seconds(proc.pid)
        gathered = [results.get(timeout=seconds + 60) for _ in procs]
        cpu_after = cpu_seconds(proc.pid)
        for p in procs:
            p.join()
        counters = admin.counters()["accounts"][f"{provider}:{account_id}"][method]
        admin.close()
    finally:
        proc.terminate()
        proc.wait(10)
    latencies = sorted(x for lat, _ in gathered for x in lat)
    statuses: Counter[int] = Counter()
    for _, by_status in gathered:
        statuses.update(by_status)
    total = len(latencies)
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = round(cpu_after - cpu_before, 2)
    return {
        "provider": provider,
        "method": method,
        "clients": clients,
        "seconds": seconds,
        "requests": total,
        "requests_per_s": round(total / seconds, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 3),
            "p99": round(percentile(latencies, 0.99) * 1000, 3),
            "mean": round(statistics.fmean(latencies) * 1000, 3) if latencies else 0.0,
            "max": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_peak_1s": counters["peak_1s"],
        # CPU the simulator itself used while measured: how much of a core it needed.
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_request": round(server_cpu * 1e6 / total, 1) if server_cpu else None,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--provider", choices=["green-api", "wassenger"], default="green-api")
    parser.add_argument("--chats", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.seconds, args.clients, args.provider, args.chats)
    if args.json:
        print(json.dumps(result))
        return
    lat = result["latency_ms"]
    print(
        f"{result['provider']} {result['method']}: {result['requests']} requests in "
        f"{result['seconds']:g} s with {result['clients']} keep-alive clients on "
        f"{result['cpus']} CPUs"
    )
    print(
        f"  {result['requests_per_s']:.0f} requests/s (server peak_1s {result['server_peak_1s']})"
    )
    print(f"  latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms")
    print(f"  statuses {result['statuses']}")
    if result["server_cpu_s"] is not None:
        print(
            f"  simulator CPU {result['server_cpu_s']:.2f} s "
            f"({result['server_cpu_us_per_request']:.0f} µs per request)"
        )


if __name__ == "__main__":
    main()
