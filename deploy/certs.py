"""TLS for the stack's Dask cluster: a private CA and one certificate for 127.0.0.1, generated once.

The files live in ``<state>/tls/`` (keys mode 0600). Scheduler, workers and
clients take them from Dask's configuration variables
(``DASK_DISTRIBUTED__COMM__TLS__*``), which is also how an operator hands them
to a shell: ``stack env`` prints them, and ``distributed.Security()`` then
picks them up with no code change.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from nnpipe.deploy.secretfiles import write_secret


def generate(folder: Path, days: int = 365) -> dict[str, Path]:
    """``ca.pem``, ``cert.pem`` and ``key.pem`` in ``folder`` (kept if already there); returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    if all(p.exists() for p in files.values()):
        return files
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject: str, issuer: x509.Name, public_key, days_valid: int) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days_valid)))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (build("nnpipe stack CA", name("nnpipe stack CA"), ca_key.public_key(), days)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = build("nnpipe dask", ca.subject, key.public_key(), days).add_extension(san, critical=False).sign(
        ca_key, hashes.SHA256())
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret(files["key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode())
    return files


def dask_env(files: dict[str, Path]) -> dict[str, str]:
    """Dask's configuration variables that make scheduler, workers and clients speak TLS with ``files``."""
    env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "true",
           "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(files["ca"])}
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(files["cert"])
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(files["key"])
    return env
