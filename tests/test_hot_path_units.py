"""The curated batch's hot-path pieces on their own: the answer's way back through Redis, the stage timer, the
float16 check on the bits, and the one-thread rule for small products."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from service.curation import CpuBackend
from service.handover import drop, hand_over, send_reply, take, wait_reply
from service.stages import add_stages, collecting, parse_server_timing, server_timing, stage
from service.uploads import float16_problems
from tests.conftest import REDIS_URL


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def test_an_answer_goes_back_on_the_reply_list(client) -> None:
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    handover = hand_over(client, "m-1", arr, ttl_seconds=30)
    np.testing.assert_array_equal(take(client, handover), arr)
    send_reply(client, handover, {"answer": {"kept": 2}, "stages": {"select": 1.5}}, ttl_seconds=30)
    assert wait_reply(client, handover, timeout=5) == {"answer": {"kept": 2}, "stages": {"select": 1.5}}
    assert client.exists(handover.reply) == 0  # taken once: a second waiter would not see it again
    drop(client, handover)
    assert take(client, handover) is None


def test_no_answer_is_none_after_the_timeout(client) -> None:
    handover = hand_over(client, "m-2", np.zeros((1, 2), dtype=np.float16), ttl_seconds=30)
    start = time.monotonic()
    assert wait_reply(client, handover, timeout=1) is None
    assert time.monotonic() - start >= 0.9
    drop(client, handover)


def test_stages_are_recorded_only_while_collecting() -> None:
    with stage("outside"):
        pass
    with collecting() as found:
        with stage("a"):
            time.sleep(0.01)
        with stage("a"):
            pass
        add_stages({"select": 2.0}, prefix="worker.")
    assert set(found) == {"a", "worker.select"} and found["a"] >= 10 and found["worker.select"] == 2.0
    assert parse_server_timing(server_timing(found)) == {name: round(ms, 2) for name, ms in found.items()}


def test_float16_check_on_the_bits_agrees_with_the_float_check() -> None:
    rng = np.random.default_rng(4)
    arr = rng.standard_normal((300, 33)).astype(np.float16)
    arr[3] = 0
    arr[4] = -0.0
    arr[5, 7] = np.inf
    arr[6, 0] = -np.inf
    arr[7, 32] = np.nan
    arr[8] = np.float16(6e-8)  # the smallest subnormal: finite and not zero
    arr[9, :] = 0
    arr[9, 5] = np.nan  # non-finite, not a zero row
    nonfinite, zero = float16_problems(arr)
    assert nonfinite.tolist() == [5, 6, 7, 9] and zero.tolist() == [3, 4]
    # the float32 path (widened copy) finds the same rows
    wide_nonfinite, wide_zero = float16_problems(arr.astype(np.float32))
    assert wide_nonfinite.tolist() == nonfinite.tolist() and wide_zero.tolist() == zero.tolist()
    # a strided view takes the float path and still agrees
    strided_nonfinite, strided_zero = float16_problems(arr[::3])
    assert strided_nonfinite.tolist() == [2, 3] and strided_zero.tolist() == [1]


def test_small_products_run_on_one_blas_thread() -> None:
    backend = CpuBackend(single_thread_macs=1000)
    with backend.threads_for(999):
        assert {pool["num_threads"] for pool in backend.pools.info()} == {1}
    before = [pool["num_threads"] for pool in backend.pools.info()]
    with backend.threads_for(1000):
        assert [pool["num_threads"] for pool in backend.pools.info()] == before
    a = np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((30, 6)).astype(np.float32)
    np.testing.assert_array_equal(backend.matmul(a, b), np.matmul(a, b))
