"""Transports of the embedded server; each turns wire requests into naming calls."""

from polaris_sdk.server.apiserver.grpc import GrpcApiServer, format_address

__all__ = ["GrpcApiServer", "format_address"]
