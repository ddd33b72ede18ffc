"""The trainer's service client (against httpx's MockTransport), its learning-rate schedule and its checkpoints."""

from __future__ import annotations

import io
import json
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tenacity
import torch

from trainer.checkpoint import LATEST, load_checkpoint, save_checkpoint
from trainer.client import ServiceClient, ServiceError
from trainer.schedule import cosine_lr, estimate_total_steps

API = "http://service.test"
Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    """Sleeps without sleeping: records each wait and moves a clock forward by it, so a retry budget measured by
    tenacity runs out after a known number of attempts instead of after real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    # tenacity measures stop_after_delay with time.monotonic through its module's ``time``; only that one is faked
    monkeypatch.setattr(tenacity, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


class Recorder:
    """A MockTransport handler answering from a script (one entry per request, the last one repeating)."""

    def __init__(self, *script: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)


def make_client(handler: Handler, clock: FakeClock, token: str | None = "tok-123", **kwargs: Any) -> ServiceClient:
    return ServiceClient(API, token, transport=httpx.MockTransport(handler), sleep=clock.sleep, **kwargs)


def error(status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "detail": detail}, headers=headers)


RUN = {"id": 7, "phase": "warmup", "epoch": 0}


# ------------------------------------------------------------------------------------------------ retries


def test_503_with_retry_after_is_retried_once_after_the_hinted_wait(clock: FakeClock) -> None:
    handler = Recorder(error(503, "unavailable", "database down", {"Retry-After": "2"}), httpx.Response(200, json=RUN))
    with make_client(handler, clock) as client:
        assert client.run(7) == RUN
        assert client.retries == 1
    assert len(handler.requests) == 2
    assert clock.slept == [2.0]
    assert all(r.url.path == "/v1/runs/7" and r.method == "GET" for r in handler.requests)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_without_a_hint_back_off_exponentially(clock: FakeClock, status: int) -> None:
    handler = Recorder(httpx.Response(status), httpx.Response(status), httpx.Response(200, json=RUN))
    with make_client(handler, clock) as client:
        assert client.run(7) == RUN
    assert clock.slept == [0.5, 1.0]


def test_retry_after_is_capped_by_max_backoff(clock: FakeClock) -> None:
    handler = Recorder(error(503, "unavailable", "busy", {"Retry-After": "3600"}), httpx.Response(200, json=RUN))
    with make_client(handler, clock, max_backoff=7.0) as client:
        client.run(7)
    assert clock.slept == [7.0]


def test_connection_errors_are_retried_with_backoff_then_succeed(clock: FakeClock) -> None:
    refused = httpx.ConnectError("connection refused")
    handler = Recorder(refused, refused, refused, httpx.ReadTimeout("slow"), httpx.Response(200, json=RUN))
    with make_client(handler, clock, max_backoff=3.0) as client:
        assert client.run(7) == RUN
        assert client.retries == 4
    assert len(handler.requests) == 5
    assert clock.slept == [0.5, 1.0, 2.0, 3.0]  # doubling, capped at max_backoff


@pytest.mark.parametrize(
    ("status", "code", "detail"),
    [
        (422, "invalid_request", [{"loc": ["body", "size"], "msg": "too big", "type": "value_error"}]),
        (404, "not_found", "run 7 does not exist"),
        (409, "lease_expired", "manifest m-1 was leased again"),
        (401, "unauthenticated", "missing bearer token"),
    ],
)
def test_client_errors_raise_at_once_with_the_service_code(
    clock: FakeClock, status: int, code: str, detail: Any
) -> None:
    handler = Recorder(error(status, code, detail))
    with make_client(handler, clock) as client, pytest.raises(ServiceError) as info:
        client.next_manifest(7, size=16)
    assert (info.value.status, info.value.code, info.value.detail) == (status, code, detail)
    assert code in str(info.value)
    assert len(handler.requests) == 1 and clock.slept == []


def test_a_non_json_error_body_still_raises_service_error(clock: FakeClock) -> None:
    handler = Recorder(httpx.Response(400, text="<html>bad gateway config</html>"))
    with make_client(handler, clock) as client, pytest.raises(ServiceError) as info:
        client.run(7)
    assert info.value.status == 400 and info.value.code == "error" and "bad gateway" in info.value.detail


def test_exhausted_retries_raise_the_last_unavailable_answer(clock: FakeClock) -> None:
    handler = Recorder(error(503, "unavailable", "no worker", {"Retry-After": "1"}))
    with make_client(handler, clock, retry_for=5.0) as client, pytest.raises(ServiceError) as info:
        client.ack(7, "m-1")
    assert (info.value.status, info.value.code, info.value.detail) == (503, "unavailable", "no worker")
    # attempts at t = 0, 1, ..., 5; the budget is spent after the one at t = 5
    assert len(handler.requests) == 6 and clock.slept == [1.0] * 5


def test_exhausted_retries_on_connection_errors_raise_unreachable(clock: FakeClock) -> None:
    handler = Recorder(httpx.ConnectError("connection refused"))
    with make_client(handler, clock, retry_for=10.0, max_backoff=2.0) as client, pytest.raises(ServiceError) as info:
        client.run(7)
    assert info.value.status == 0 and info.value.code == "unreachable"
    assert "connection refused" in str(info.value.detail)
    assert clock.slept == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0] and len(handler.requests) == 8


# ------------------------------------------------------------------------------------------------ requests


def test_post_embeddings_sends_a_npy_body(clock: FakeClock) -> None:
    answer = {"keep": [True, False, True], "kept": 2, "bands": ["support", "outlier", "central"]}
    handler = Recorder(httpx.Response(200, json=answer))
    features = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float16)[:, ::2]  # not contiguous
    with make_client(handler, clock) as client:
        assert client.post_embeddings(7, "m-1", features) == answer
    (request,) = handler.requests
    assert request.method == "POST" and request.url.path == "/v1/runs/7/manifests/m-1/embeddings"
    assert request.headers["Content-Type"] == "application/octet-stream"
    parsed = np.load(io.BytesIO(request.content), allow_pickle=False)
    assert parsed.dtype == np.float16 and parsed.shape == (3, 4)
    np.testing.assert_array_equal(parsed, features)


def test_bearer_token_and_request_shapes(clock: FakeClock) -> None:
    handler = Recorder(httpx.Response(200, json={"items": [], "phase": "done"}), httpx.Response(204))
    with make_client(handler, clock, token="tok-123") as client:
        client.next_manifest(7, size=32, model_id="tiny:a+b", checkpoint_step=3)
        client.report_unreadable(7, 11, "x" * 5000)  # 204: no body
    lease, unreadable = handler.requests
    assert all(r.headers["Authorization"] == "Bearer tok-123" for r in handler.requests)
    assert lease.url.path == "/v1/runs/7/manifests" and lease.url.params["size"] == "32"
    assert json.loads(lease.content) == {"model_id": "tiny:a+b", "checkpoint_step": 3}
    assert unreadable.url.path == "/v1/runs/7/samples/11/unreadable"
    assert len(json.loads(unreadable.content)["reason"]) == 2000


def test_no_token_sends_no_authorization_header(clock: FakeClock) -> None:
    handler = Recorder(httpx.Response(200, json=RUN))
    with make_client(handler, clock, token=None) as client:
        client.run(7)
    assert "Authorization" not in handler.requests[0].headers


# ------------------------------------------------------------------------------------------------ schedule


def test_warmup_is_linear_up_to_the_base_rate() -> None:
    lrs = [cosine_lr(s, 1e-3, 10, 100) for s in range(10)]
    assert lrs == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert cosine_lr(10, 1e-3, 10, 100) == pytest.approx(1e-3)  # the first cosine step is the base rate


def test_cosine_reaches_zero_at_the_horizon_and_stays_there() -> None:
    base, warmup, total = 5e-4, 5, 60
    lrs = [cosine_lr(s, base, warmup, total) for s in range(total + 40)]
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)
    assert lrs[total - 1] < base * 0.01
    assert min(lrs) >= 0.0
    decay = lrs[warmup:]
    assert all(b <= a for a, b in zip(decay, decay[1:], strict=False))  # never rises again past the horizon
    mid = warmup + (total - warmup) // 2
    assert cosine_lr(mid, base, warmup, total) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=0.1)


def test_no_warmup_and_degenerate_horizons() -> None:
    assert cosine_lr(0, 1.0, 0, 10) == pytest.approx(1.0)
    assert cosine_lr(3, 1.0, 5, 5) == pytest.approx(0.8)  # still warming up
    assert cosine_lr(5, 1.0, 5, 5) == pytest.approx(1.0)  # horizon == warm-up: span of one step
    assert cosine_lr(6, 1.0, 5, 5) == pytest.approx(0.0, abs=1e-12)


def test_estimate_total_steps_arithmetic() -> None:
    # 100 samples, batches of 16: 7 steps per full epoch; a 25 % subset is 25 samples → 2 steps per later epoch
    assert estimate_total_steps(100, 16, 3, 1, 0.25) == 7 + 2 * 2
    assert estimate_total_steps(100, 16, 3, 1, 0.25, accumulate=2) == math.ceil(11 / 2)
    assert estimate_total_steps(48, 16, 2, 1, 1.0) == 3 + 3
    assert estimate_total_steps(48, 16, 1, 1, 0.1) == 3  # every epoch curates: the ratio does not matter
    assert estimate_total_steps(0, 16, 2, 1, 0.5) == 1  # never a zero horizon


# ------------------------------------------------------------------------------------------------ checkpoints


def _state(step: int) -> dict[str, Any]:
    return {
        "model": {"w": torch.full((4, 4), float(step)), "b": torch.arange(4)},
        "model_config": {"vision": "tiny", "image_size": 56, "image_mean": [0.5, 0.5, 0.5]},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "step": step,
        "run_id": 7,
        "subset_ratio": 0.25,
    }


def test_save_over_an_existing_checkpoint_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    first = save_checkpoint(tmp_path / "out", _state(1))
    assert first == tmp_path / "out" / LATEST
    second = save_checkpoint(tmp_path / "out", _state(2))
    assert second == first
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LATEST]
    loaded = load_checkpoint(second)
    assert loaded["step"] == 2 and torch.equal(loaded["model"]["w"], torch.full((4, 4), 2.0))


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    save_checkpoint(out, _state(1))

    def broken_save(obj: Any, fh: Any) -> None:
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out, _state(2))
    monkeypatch.undo()
    assert [p.name for p in out.iterdir()] == [LATEST]  # the half-written temporary file is gone
    assert load_checkpoint(out / LATEST)["step"] == 1


def test_load_checkpoint_names_the_missing_keys(tmp_path: Path) -> None:
    state = _state(3)
    del state["optimizer"], state["run_id"]
    path = save_checkpoint(tmp_path, state)
    with pytest.raises(ValueError, match=r"missing \['optimizer', 'run_id'\]"):
        load_checkpoint(path)


def test_load_checkpoint_is_weights_only(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _state(4))
    loaded = load_checkpoint(path)
    assert loaded["model_config"]["image_mean"] == [0.5, 0.5, 0.5] and loaded["subset_ratio"] == 0.25
    assert torch.equal(loaded["model"]["b"], torch.arange(4))
    # an arbitrary pickled object is refused rather than executed
    evil = tmp_path / "evil.pt"
    torch.save({**_state(5), "hook": Recorder()}, evil)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_checkpoint(evil)
