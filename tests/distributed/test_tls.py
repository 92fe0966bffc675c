"""Dask over TLS on 127.0.0.1: certificates by configuration, ``tls://`` addresses, local clusters encrypted on demand."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from nnpipe import TrainConfig
from nnpipe.api import train
from nnpipe.distributed.cluster import check_scheduler
from tests.distributed.helpers import small_net

pytestmark = [pytest.mark.cluster, pytest.mark.server]


def test_training_on_a_tls_cluster_with_certificates_from_configuration(data, tmp_path):
    X, y = data
    spec, theta = small_net()
    sec = Security.temporary()  # a self-signed CA/cert/key, as an operator would issue for the cluster
    files = {}
    for key, pem in (("ca", sec.tls_ca_file), ("cert", sec.tls_client_cert), ("key", sec.tls_client_key)):
        files[key] = tmp_path / f"{key}.pem"
        files[key].write_text(pem)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      security=sec, protocol="tls://", host="127.0.0.1") as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        check_scheduler(address)  # the pre-flight probe accepts tls:// addresses

        # without certificates the scheduler refuses the connection
        with pytest.raises(Exception):
            with Client(address.replace("tls://", "tcp://"), timeout="5s"):
                pass

        # the certificates come from Dask's configuration (as DASK_DISTRIBUTED__COMM__TLS__* would set)
        with dask.config.set({"distributed.comm.require-encryption": True,
                              "distributed.comm.tls.ca-file": str(files["ca"]),
                              "distributed.comm.tls.client.cert": str(files["cert"]),
                              "distributed.comm.tls.client.key": str(files["key"])}):
            result = train((X, y), TrainConfig(mode="sync", epochs=2, batch_size=64, workers=2),
                           spec=spec, theta=theta, address=address)
    assert result.info["address"] == address
    assert np.isfinite(result.theta).all() and len(result.history["train/loss"]) == 2


def test_local_cluster_listens_on_tls_when_encryption_is_required(data):
    X, y = data
    spec, theta = small_net()
    with dask.config.set({"distributed.comm.require-encryption": True}):
        result = train((X, y), TrainConfig(mode="local-sgd", epochs=1, batch_size=64, workers=1, sync_every=5),
                       spec=spec, theta=theta)
    assert result.info["address"].startswith("tls://127.0.0.1:")
    assert np.isfinite(result.theta).all()
