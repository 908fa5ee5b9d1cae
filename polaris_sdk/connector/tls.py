"""TLS settings of the connectors, read once from the configured files.

Contract:

* :func:`load_tls` reads ``global.serverConnector.trustedCAFile`` /
  ``certFile`` / ``keyFile`` when the connector is built; a missing,
  unreadable or malformed file raises :class:`~polaris_sdk.errors.ConfigError`
  naming the key, so a wrong path fails at start-up, not at the first call.
  None means plaintext.
* The server certificate is always verified (chain and host name): against
  the CA file when one is given, else against the system CAs (those
  :func:`ssl.get_default_verify_paths` finds, ``SSL_CERT_FILE`` included;
  for gRPC, its bundled roots when the system has no CA file).
* A client certificate is presented only when ``certFile`` and ``keyFile``
  are both set. The key's content is never logged.
* Pure values and no threads; the gRPC and HTTP transports each take their
  form (:meth:`TlsSettings.grpc_credentials`, :meth:`TlsSettings.ssl_context`).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from polaris_sdk.config import ServerConnectorConfig
from polaris_sdk.errors import ConfigError

__all__ = ["TlsSettings", "load_tls", "system_ca_bundle"]


def _read(key: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(key, f"{path} is not a PEM file")
    return data


def system_ca_bundle() -> bytes | None:
    """The system's CA bundle as PEM, or None when it has no single CA file."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            try:
                return Path(candidate).read_bytes()
            except OSError:
                continue
    return None


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The CA, client certificate and key a connector uses; see the module doc."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        roots = self.ca if self.ca is not None else system_ca_bundle()
        return grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=self.key, certificate_chain=self.cert
        )

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                "global.serverConnector.trustedCAFile", f"{self.ca_file}: {exc}"
            ) from None
        if self.cert_file is not None and self.key_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    "global.serverConnector.certFile",
                    f"{self.cert_file} and its key do not load: {exc}",
                ) from None
        return context


def load_tls(sc: ServerConnectorConfig) -> TlsSettings | None:
    """The TLS settings of ``sc``, files read; None when TLS is off."""
    if not sc.tls:
        return None
    return TlsSettings(
        ca_file=sc.trusted_ca_file,
        cert_file=sc.cert_file,
        key_file=sc.key_file,
        ca=_read("global.serverConnector.trustedCAFile", sc.trusted_ca_file),
        cert=_read("global.serverConnector.certFile", sc.cert_file),
        key=_read("global.serverConnector.keyFile", sc.key_file),
    )
