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


def _self_signed_ca_and_cert(folder):
    """A CA and one certificate it signs (for 127.0.0.1), as PEM files: what an operator would issue."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("nnpipe test CA")).issuer_name(name("nnpipe test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("dask")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def _flat(tree, prefix=""):
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: dask.config.set replaces a nested dict's whole subtree."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_hand_started_tls_cluster_with_certificate_files_from_environment_variables(data, tmp_path):
    """``dask scheduler`` and ``dask worker`` as an operator starts them: certificates by DASK_* variables."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.tracking.helpers import free_port

    X, y = data
    spec, theta = small_net()
    files = _self_signed_ca_and_cert(tmp_path)
    tls_env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "true",
               "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(files["ca"])}
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        tls_env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(files["cert"])
        tls_env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(files["key"])
    env = {**os.environ, **tls_env, "OMP_NUM_THREADS": "1"}
    address = f"tls://127.0.0.1:{free_port()}"
    dask_bin = str(Path(sys.executable).parent / "dask")
    procs = [subprocess.Popen([dask_bin, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--protocol", "tls", "--no-dashboard"], env=env, cwd=tmp_path,
                              stdout=open(tmp_path / "scheduler.log", "wb"), stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 60
        while True:  # the scheduler listens before the workers start (the pre-flight probe too)
            try:
                check_scheduler(address, timeout=1)
                break
            except ConnectionError:
                assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
                time.sleep(0.2)
        procs += [subprocess.Popen([dask_bin, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
                                   env=env, cwd=tmp_path, stdout=open(tmp_path / f"worker-{i}.log", "wb"),
                                   stderr=subprocess.STDOUT) for i in range(2)]
        # The client's certificates from the same variables, read the way Dask reads them at import.
        with dask.config.set(_flat(dask.config.collect(paths=[], env=tls_env))):
            assert Security().tls_client_cert == str(files["cert"])
            with Client(address, timeout="30s") as c:
                c.wait_for_workers(2, timeout=60)
                assert all(w.startswith("tls://") for w in c.scheduler_info()["workers"])
            result = train((X, y), TrainConfig(mode="local-sgd", epochs=2, batch_size=64, workers=2, sync_every=3),
                           spec=spec, theta=theta, address=address)
        assert result.info["address"] == address
        assert np.isfinite(result.theta).all() and len(result.history["train/loss"]) == 2
        # Without the certificates the same scheduler is refused.
        with pytest.raises(Exception):
            with Client(address.replace("tls://", "tcp://"), timeout="5s"):
                pass
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
