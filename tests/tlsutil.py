"""Throwaway TLS material for tests: a private CA and a server certificate it signed.

The certificates are made with the ``openssl`` command line tool (the
``cryptography`` package is not a dependency); a test that needs them is
skipped when ``openssl`` is not installed. Keys are EC P-256 (fast to make),
valid for two days, and the server certificate names ``127.0.0.1``,
``localhost`` and ``::1`` so clients verify it with hostname checking on.

Usage::

    from tests.tlsutil import make_tls_files

    def test_something(tmp_path):
        tls = make_tls_files(tmp_path)      # skips the test without openssl
        PolarisServer(tls_cert=tls.server_cert, tls_key=tls.server_key)
        ...  # a client trusts tls.ca_cert

or, one set for a whole session, the ``tls_files`` fixture: import it into a
``conftest.py`` (``from tests.tlsutil import tls_files``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["DEFAULT_HOSTS", "TlsFiles", "make_tls_files", "openssl_or_skip", "tls_files"]

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
_DAYS = "2"
_OPENSSL_TIMEOUT = 30.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA a client trusts, and the server's certificate and key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def openssl_or_skip() -> str:
    """The path of the ``openssl`` tool; skips the calling test when there is none."""
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command line tool is needed to make test certificates")
    return path


def _run(openssl: str, *args: str | Path) -> None:
    subprocess.run(
        [openssl, *map(str, args)],
        check=True,
        capture_output=True,
        timeout=_OPENSSL_TIMEOUT,
    )


def _san(hosts: Sequence[str]) -> str:
    names = [f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts]
    return ",".join(names)


def make_tls_files(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TlsFiles:
    """Make a CA and a server certificate for ``hosts`` in ``directory`` (created)."""
    openssl = openssl_or_skip()
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(
        openssl, "req", "-x509", *ec, "-days", _DAYS,
        "-keyout", files.ca_key, "-out", files.ca_cert,
        "-subj", "/CN=polaris-sdk test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    csr = directory / "server.csr"
    _run(
        openssl, "req", *ec, "-keyout", files.server_key, "-out", csr,
        "-subj", f"/CN={hosts[0]}",
    )  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={_san(hosts)}\n",
        encoding="ascii",
    )
    _run(
        openssl, "x509", "-req", "-in", csr, "-days", _DAYS,
        "-CA", files.ca_cert, "-CAkey", files.ca_key, "-CAcreateserial",
        "-out", files.server_cert, "-extfile", extensions,
    )  # fmt: skip
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """One CA and server certificate for the whole session."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))
