"""A private CA and certificates for a cluster's mutual TLS
(``htapkv cluster certs --out D``; tests use it too).

Writes ``ca.pem`` (the CA certificate; its key ``ca-key.pem`` stays beside it
so more certificates can be issued), ``server.pem``/``server-key.pem`` (for
PD and store processes: subject alternative names are the given hosts) and
``client.pem``/``client-key.pem`` (for clients and the CLI). Keys are EC
P-256, files are created mode 0600. Good for a lab cluster; production
clusters bring certificates from their own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def generate_certs(
    out_dir: str | os.PathLike[str], hosts: list[str] | None = None, *, ca_name: str = "htapkv CA"
) -> dict[str, Path]:
    """Create a CA, a server and a client certificate in ``out_dir``; return
    the paths by name (``ca``, ``server_cert``, ``server_key``, ``client_cert``,
    ``client_key``)."""
    hosts = hosts or ["127.0.0.1", "localhost"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": out / "ca.pem", "ca_key": out / "ca-key.pem"}
    _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
    _write(paths["ca_key"], _key_pem(ca_key))
    # Servers call each other too (a store or PD follower calls the PD
    # leader), so their certificate is good for both ends of a connection.
    for role, usages in (
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"htapkv {role}")]))
            .issuer_name(ca_subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_sans(hosts)), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[f"{role}_cert"] = out / f"{role}.pem"
        paths[f"{role}_key"] = out / f"{role}-key.pem"
        _write(paths[f"{role}_cert"], cert.public_bytes(serialization.Encoding.PEM))
        _write(paths[f"{role}_key"], _key_pem(key))
    return paths


__all__ = ["generate_certs"]
