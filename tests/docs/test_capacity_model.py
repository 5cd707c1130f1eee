"""The capacity model in docs/benchmarks.md is what tests/bench/capacity.py computes from
the committed bench results (nobody edits the numbers by hand, and a bench run that changes
the inputs must regenerate it), and the model behaves as its assumptions say."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bench"))

import capacity  # noqa: E402
from capacity import Inputs, Setup, model  # noqa: E402

RESULTS = REPO / "tests" / "bench" / "results"


def committed_inputs() -> Inputs | None:
    def load(kind: str):
        path = RESULTS / f"{kind}.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return capacity.inputs(load("authserver"), load("gateway"))


def test_doc_block_is_generated_from_the_committed_results():
    inputs = committed_inputs()
    assert inputs is not None, "results/*.json lack the CPU figures the model needs"
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    m = re.search(r"<!-- bench:capacity:begin -->\n(.*?)<!-- bench:capacity:end -->", doc,
                  re.S)
    assert m, "docs/benchmarks.md has no bench:capacity block"
    assert m.group(1) == capacity.capacity_md(inputs), (
        "stale: run `cd tests/bench && python report.py` after `make bench`")


I = Inputs(gw_hit=20.0, gw_miss=100.0, as_token=100.0, redis_token=40.0, redis_token_hot=5.0,
           as_feed=70.0, redis_feed=25.0, date="test")


def test_gateways_scale_with_replicas_and_workers_only():
    a = model(I, Setup(2, 2, 1, 2, "standalone"))
    b = model(I, Setup(4, 2, 8, 8, "cluster", 6))
    assert b["requests_cached"] == pytest.approx(2 * a["requests_cached"])
    assert a["requests_cached"] == pytest.approx(2 * 2 * 1e6 / 20.0)


def test_issuance_is_the_smaller_of_auth_server_cpu_and_redis():
    few = model(I, Setup(1, 2, 1, 1, "standalone"))  # 1 core: 10k/s vs Redis 25k/s
    assert few["issuances"] == pytest.approx(1e4)
    assert few["issuances_limit"] == "auth-server CPU"
    many = model(I, Setup(1, 2, 10, 2, "sentinel"))  # Sentinel: still one primary
    assert many["issuances"] == pytest.approx(1e6 / 40.0)
    assert many["issuances_limit"] == "Redis"


def test_cluster_is_capped_by_its_one_slot_keys():
    caps = [model(I, Setup(1, 2, 1000, 2, "cluster", s))["issuances"] for s in (1, 3, 6, 100)]
    assert caps == sorted(caps)
    assert caps[0] == pytest.approx(1e6 / 40.0)
    assert caps[-1] < 1e6 / 5.0  # never past the hot keys' own limit


def test_revocation_fan_out_falls_with_gateways():
    a = model(I, Setup(10, 2, 2, 2, "standalone"))
    b = model(I, Setup(100, 2, 2, 2, "standalone"))
    assert b["revocations_pushed"] == pytest.approx(a["revocations_pushed"] / 10)
    assert b["poll_1s_cores"] == pytest.approx(100 * 70.0 / 1e6)
