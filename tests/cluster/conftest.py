"""The control plane of the suite: one etcd + kube-apiserver for the whole session."""

from __future__ import annotations

import pytest

import apiserver


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    c, procs = apiserver.start(tmp_path_factory.mktemp("cluster"))
    try:
        c.namespace("istio-system")
        yield c
    finally:
        apiserver.stop(procs)
