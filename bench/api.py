"""Benchmark: POST /calls and GET /calls/{sid} on a running server (sim, SQLite), against a
bare endpoint of the same app (`/healthz`) measured in the same run.

Goals: POST >= 0.25x and GET >= 0.5x the bare endpoint's throughput; POST p99 <= 50 ms at 64
concurrent clients. Usage: `.venv/bin/python bench/api.py [--duration S] [--concurrency N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Awaitable

sys.path.insert(0, os.path.dirname(__file__))

from _http import LoadResult, build_request, run_load
from _server import callbridge_server

CONFIG = """
[[accounts]]
sid = "bench"
api_key = "bench_key"
api_token = "bench_token"
rate_limit_per_minute = 0
exophones = ["+912241499102"]
"""
AUTH = "Basic " + base64.b64encode(b"bench_key:bench_token").decode()


async def main(duration_s: float, concurrency: int) -> int:
    with callbridge_server(CONFIG) as (host, port, pid):
        hostport = f"{host}:{port}"
        headers = {"Authorization": AUTH}
        bare = build_request("GET", "/healthz", hostport, {})
        await run_load("warm-up", host, port, lambda i: bare, concurrency=8, duration_s=1)

        def post(i: int) -> bytes:
            body = json.dumps(
                {
                    # A distinct agent per call, state-managed: the busy mark is taken and
                    # released as in production; calls end by themselves after 5 s of talk.
                    "from": {"contact_uri": f"+9190{i:08d}", "state_management": True},
                    "to": {"contact_uri": f"+9180{i:08d}"},
                    "virtual_number": "+912241499102",
                    "max_time_limit": 5,
                }
            ).encode()
            return build_request(
                "POST",
                "/v3/accounts/bench/calls",
                hostport,
                {**headers, "Content-Type": "application/json"},
                body,
            )

        # Second POST variant: agents that ring for the whole run, so each request costs the
        # API, the admission and the first dial only, not a whole call's life.
        ringing_agents = 12_000

        def put_ringing(i: int) -> bytes:
            body = json.dumps({"outcome": "no-answer"}).encode()
            return build_request(
                "PUT",
                f"/sim/v1/numbers/%2B9170{i:08d}",
                hostport,
                {**headers, "Content-Type": "application/json"},
                body,
            )

        def post_ringing(i: int) -> bytes:
            body = json.dumps(
                {
                    "from": {"contact_uri": f"+9170{i:08d}", "state_management": True},
                    "to": {"contact_uri": f"+9160{i:08d}"},
                    "virtual_number": "+912241499102",
                    "attempt_time_out": 600,
                }
            ).encode()
            return build_request(
                "POST",
                "/v3/accounts/bench/calls",
                hostport,
                {**headers, "Content-Type": "application/json"},
                body,
            )

        await run_load(
            "setup",
            host,
            port,
            put_ringing,
            concurrency=32,
            duration_s=60,
            max_requests=ringing_agents,
        )

        results = []
        results.append(
            await run_load(
                "bare GET /healthz",
                host,
                port,
                lambda i: bare,
                concurrency=concurrency,
                duration_s=duration_s,
                server_pid=pid,
            )
        )
        posted = await run_load(
            "POST /v3/.../calls",
            host,
            port,
            post,
            concurrency=concurrency,
            duration_s=duration_s,
            server_pid=pid,
            keep_bodies=True,
        )
        results.append(posted)
        sids = [
            json.loads(b)["response"]["call_details"]["sid"]
            for b in posted.bodies
            if b.startswith(b"{") and b'"call_details"' in b
        ]
        if not sids:
            print("no calls were created", file=sys.stderr)
            return 1
        get_requests = [
            build_request("GET", f"/v3/accounts/bench/calls/{sid}", hostport, headers)
            for sid in sids[:5000]
        ]

        def measure_get(name: str) -> Awaitable[LoadResult]:
            return run_load(
                name,
                host,
                port,
                lambda i: get_requests[i % len(get_requests)],
                concurrency=concurrency,
                duration_s=duration_s,
                server_pid=pid,
            )

        # First while the POSTed calls are still ringing, talking and ending (the engine's
        # work competes with the GETs), then on a quiet server, as the bare endpoint is.
        busy_get = await measure_get("GET while those calls end")
        await wait_until_no_active_calls(host, port, headers)
        results.append(await measure_get("GET /v3/.../calls/{sid}"))
        ringing = await run_load(
            "POST (agent keeps ringing)",
            host,
            port,
            post_ringing,
            concurrency=concurrency,
            duration_s=duration_s,
            server_pid=pid,
            max_requests=ringing_agents,
        )
        results.append(ringing)
        bare_again = await run_load(
            "bare GET /healthz (again)",
            host,
            port,
            lambda i: bare,
            concurrency=concurrency,
            duration_s=duration_s,
            server_pid=pid,
        )
        results.append(bare_again)

    for r in [*results[:2], busy_get, *results[2:]]:
        print(r.line())
    baseline = (results[0].throughput + bare_again.throughput) / 2
    post_ratio = results[1].throughput / baseline
    get_ratio = results[2].throughput / baseline
    print(f"baseline (bare, mean of both runs): {baseline:.1f} req/s, concurrency {concurrency}")
    print(
        f"POST ratio {post_ratio:.3f} (goal >= 0.25)  "
        f"POST p99 {results[1].pct(99):.1f} ms (goal <= 50)"
    )
    print(
        f"GET  ratio {get_ratio:.3f} (goal >= 0.5); while the POSTed calls end: "
        f"{busy_get.throughput / baseline:.3f}"
    )
    bare_cpu = [r.server_cpu_ms_per_request for r in (results[0], bare_again)]
    if all(c is not None for c in bare_cpu):
        bare_ms = sum(c for c in bare_cpu if c is not None) / 2
        for r in results[1:4]:
            cost = r.server_cpu_ms_per_request
            if cost is not None:
                print(f"server CPU per request, {r.name}: {cost / bare_ms:.1f}x the bare one's")
    print(
        f"POST ratio when the call does not progress during the run: "
        f"{ringing.throughput / baseline:.3f}, p99 {ringing.pct(99):.1f} ms"
    )
    verdicts = {
        "POST throughput": post_ratio >= 0.25,
        "POST p99": results[1].pct(99) <= 50,
        "GET throughput": get_ratio >= 0.5,
    }
    print("  ".join(f"{goal}: {'met' if ok else 'NOT met'}" for goal, ok in verdicts.items()))
    return 0


async def wait_until_no_active_calls(host: str, port: int, headers: dict[str, str]) -> None:
    """Poll the active-calls listing until every call has ended (bounded to 60 s)."""
    request = build_request(
        "GET", "/v3/accounts/bench/calls?state=active&limit=1", f"{host}:{port}", headers
    )
    for _ in range(600):
        listing = await run_load(
            "poll",
            host,
            port,
            lambda i: request,
            concurrency=1,
            duration_s=5,
            max_requests=1,
            keep_bodies=True,
        )
        if listing.bodies and json.loads(listing.bodies[0])["metadata"]["count"] == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("calls were still active after 60 s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.duration, args.concurrency)))
