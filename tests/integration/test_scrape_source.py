"""The scrape source against a real `servegate up`: concurrency and request counts per revision from
the gateway's `/metrics`, process CPU and memory from a replica's."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx

from autoscaler.sources.scrape import ScrapeSource, rate
from tests.gateway_helpers import X_BODY, ControlApi, metrics_token, python_isvc, revision
from tests.servers import GatewayProcess


async def test_scrape_source_reads_a_real_gateway_and_its_replica(
    gateway: GatewayProcess, api: ControlApi
) -> None:
    # A model that holds each request for a while, so concurrency is visible at scrape time.
    api.apply(python_isvc("scraped", "Sleeper", env={"SLEEP_SECONDS": "0.3"}))
    try:
        api.wait_ready("scraped")
        rev = revision("scraped", 1)
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(
                base_url=gateway.url, timeout=30, trust_env=False, headers=gateway.headers
            ) as client:
                while not stop.is_set():
                    client.post("/v2/models/scraped/infer", json=X_BODY)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        # /metrics takes the gateway's metrics token, as the autoscaler's own scrapes send it.
        source = ScrapeSource(token=metrics_token(gateway.state_dir))
        try:
            busiest = 0.0
            first = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and busiest < 3:
                samples = await source.gateway(gateway.url)
                if rev in samples:
                    busiest = max(busiest, samples[rev].concurrency)
                    first = first or (time.monotonic(), samples[rev].requests_total)
                await asyncio.sleep(0.1)
            assert busiest >= 3, f"4 clients on a 0.3 s model, the gateway showed concurrency {busiest}"
            await asyncio.sleep(2.0)  # let the counter move
            later = (time.monotonic(), (await source.gateway(gateway.url))[rev].requests_total)
            rps = rate(first, later)
            assert rps is not None and 2 < rps < 30, rps  # 4 clients x ~3 requests/s

            (ports,) = [
                json.loads(p.read_text())
                for p in Path(gateway.state_dir, "replicas").glob(f"{rev}-*/ports.json")
                if p.exists()
            ]
            replica = await source.replica(f"http://127.0.0.1:{ports['http']}")
            assert replica.cpu_seconds_total > 0 and replica.memory_bytes > 10e6
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            await source.aclose()
    finally:
        api.delete("scraped")
