"""Mutual TLS for every gRPC endpoint (Kv, PD, Debug), in one place.

A :class:`TlsConfig` names three PEM files: the CA that signed every
certificate of the cluster, this process's certificate and its key. Servers
require and verify a client certificate signed by the CA (a client without
one fails the handshake, before any request is read); clients verify the
server's certificate against the same CA. Addresses are checked against the
certificate's subject alternative names (IP addresses or DNS names), so
certificates for loopback clusters name ``127.0.0.1`` and ``localhost``.

Raft traffic between stores is not gRPC: the cluster secret authenticates it
(``raft`` package).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from kvstore.errors import InvalidArgumentError


@dataclass(frozen=True)
class TlsConfig:
    ca: str
    cert: str
    key: str

    def _read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as e:
                raise InvalidArgumentError(f"cannot read the TLS {what} {path}: {e}") from e
        return out[0], out[1], out[2]

    def server_credentials(self) -> grpc.ServerCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def as_args(self) -> list[str]:
        """The command-line flags that give a child process this config."""
        return ["--tls-ca", self.ca, "--tls-cert", self.cert, "--tls-key", self.key]


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mutual TLS (all three, or none)")
    g.add_argument("--tls-ca", help="PEM file of the cluster's CA")
    g.add_argument("--tls-cert", help="PEM file of this process's certificate")
    g.add_argument("--tls-key", help="PEM file of its private key")


def tls_from_args(args: Any) -> TlsConfig | None:
    parts = (
        getattr(args, "tls_ca", None),
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
    )
    if not any(parts):
        return None
    if not all(parts):
        raise InvalidArgumentError("--tls-ca, --tls-cert and --tls-key go together")
    ca, cert, key = parts
    return TlsConfig(str(ca), str(cert), str(key))


def make_channel(addr: str, options: list[tuple[str, Any]], tls: TlsConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(addr, options=options)
    return grpc.secure_channel(addr, tls.channel_credentials(), options=options)


def add_port(server: grpc.Server, addr: str, tls: TlsConfig | None) -> int:
    if tls is None:
        return int(server.add_insecure_port(addr))
    return int(server.add_secure_port(addr, tls.server_credentials()))


__all__ = ["TlsConfig", "add_port", "add_tls_arguments", "make_channel", "tls_from_args"]
