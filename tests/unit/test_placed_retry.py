"""A TrainedModel evicted from its replica while a request for it was on the way: the replica
answers 503 (the model is unloading), and the router places it again instead of failing the request."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from router.balancer import Pool
from router.core import Router
from router.forward import HttpReply
from router.metrics import GatewayMetrics
from router.routes import Backend, ModelRoute


class FakePlacer:
    """Holds the model on r1 once placed; `evicted` while another model pushed it out."""

    def __init__(self) -> None:
        self.evicted = False
        self.placements = 0

    async def ensure(self, route: ModelRoute, pool: Pool, budget: object, timeout: float) -> frozenset[str]:
        self.placements += 1
        self.evicted = False
        return frozenset({"r1"})

    def holders(self, route: ModelRoute, pool: Pool) -> frozenset[str]:
        return frozenset() if self.evicted else frozenset({"r1"})


@pytest.mark.parametrize(
    ("status", "error"), [(503, "model 'c1' is unloading"), (404, "model 'c1' is not loaded")]
)
async def test_a_request_for_a_model_evicted_meanwhile_is_placed_again(status: int, error: str) -> None:
    router = Router(GatewayMetrics(CollectorRegistry()))
    placer = router.placer = FakePlacer()  # type: ignore[assignment]
    pool = Pool("host-predictor-00001")
    pool.update([("r1", "http://127.0.0.1:1", None)])
    route = ModelRoute("c1", "host", "/models/c1", "onnx")
    backend = Backend(pool.revision, "c1", pool, placed=route)
    answers = []

    async def attempt(_http: str, _grpc: str | None, _timeout: float) -> HttpReply:
        if not answers:
            answers.append(status)
            placer.evicted = True  # pushed out while this request was on its way
            return HttpReply(status, f'{{"error": "{error}"}}'.encode())
        answers.append(200)
        return HttpReply(200, b"{}")

    reply = await router.deliver(backend, asyncio.get_running_loop().time() + 5, attempt)
    assert reply.status == 200 and answers == [status, 200] and placer.placements == 2
    await router.close()


async def test_a_503_from_a_replica_still_holding_the_model_is_the_answer() -> None:
    router = Router(GatewayMetrics(CollectorRegistry()))
    placer = router.placer = FakePlacer()  # type: ignore[assignment]
    pool = Pool("host-predictor-00001")
    pool.update([("r1", "http://127.0.0.1:1", None)])
    backend = Backend(pool.revision, "c1", pool, placed=ModelRoute("c1", "host", "/models/c1", "onnx"))

    async def attempt(_http: str, _grpc: str | None, _timeout: float) -> HttpReply:
        return HttpReply(503, b'{"error": "model c1 is loading"}')

    reply = await router.deliver(backend, asyncio.get_running_loop().time() + 5, attempt)
    assert reply.status == 503 and placer.placements == 1
    await router.close()
