"""Development certificates: a CA and, for each identity, a short-lived certificate naming its SPIFFE ID.

``kosmos certs`` writes them for every agent of the config (``spiffe://<trust-domain>/agent/<name>``)
and for the CLI (``.../client/cli``), each with its SPIFFE ID as its URI SAN (what grpcio gives a
server as the peer's identity) and ``localhost`` and ``127.0.0.1`` as names, so that TLS host
checks pass on loopback. ECDSA P-256 keys, written 0600. For a development mesh only: a real
deployment takes its certificates from its own CA (SPIRE, cert-manager, ...).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kosmos_grpc.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["DEFAULT_TRUST_DOMAIN", "Issued", "issue_development_certificates", "spiffe_id"]

DEFAULT_TRUST_DOMAIN = "kosmos.local"
#: A trust domain as SPIFFE allows it: lower-case letters, digits, dots, dashes and underscores.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Issued a little in the past, so a clock a minute behind still accepts them.
_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate written: whose, its SPIFFE ID, its files and when it expires."""

    name: str
    spiffe_id: str
    certificate: Path
    key: Path
    expires: datetime.datetime


def spiffe_id(trust_domain: str, kind: str, name: str) -> str:
    """``spiffe://<trust_domain>/<kind>/<name>``, ``kind`` being ``agent`` or ``client``."""
    return f"spiffe://{trust_domain}/{kind}/{name}"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    """Write ``data`` to a file made anew (0600 for a key), replacing any there atomically."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.replace(partial, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    lifetime: datetime.timedelta,
    uri: str | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        if uri is not None:
            names.insert(0, x509.UniformResourceIdentifier(uri))
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        purposes = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(usage, critical=True)
            .add_extension(purposes, critical=False)
        )
    return builder.sign(signer, hashes.SHA256())


def issue_development_certificates(
    folder: Path,
    agents: Iterable[str],
    clients: Iterable[str] = ("cli",),
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    hours: float = 24.0,
) -> list[Issued]:
    """Write a CA (``ca.pem``, ``ca.key``, valid 4 times longer) and a certificate and key for each
    agent and client (``<name>.pem``, ``<name>.key``) into ``folder``; what was written, CA first.

    Raises:
        ConfigError: a trust domain or name SPIFFE does not allow, or no hours to live.
    """
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ConfigError(f"trust domain {trust_domain!r} must be lower-case letters, digits, '.', '-' or '_'")
    if not 0 < hours <= 24 * 366:
        raise ConfigError(f"certificates must live from a moment to a year, not {hours:g} hours")
    identities = [("agent", name) for name in agents] + [("client", name) for name in clients]
    for _, name in identities:
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{name!r} cannot name a certificate: letters, digits, '.', '-' or '_' only")
    folder.mkdir(parents=True, exist_ok=True)
    lifetime = datetime.timedelta(hours=hours)
    ca_key = _key()
    ca = _certificate(f"KOSMOS development CA ({trust_domain})", ca_key, None, lifetime * 4, None)
    _write(folder / "ca.key", _pem_key(ca_key), secret=True)
    _write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), secret=False)
    issued = [Issued("ca", "", folder / "ca.pem", folder / "ca.key", ca.not_valid_after_utc)]
    for kind, name in identities:
        key = _key()
        identity = spiffe_id(trust_domain, kind, name)
        certificate = _certificate(name, key, (ca.subject, ca_key), lifetime, identity)
        _write(folder / f"{name}.key", _pem_key(key), secret=True)
        _write(folder / f"{name}.pem", certificate.public_bytes(serialization.Encoding.PEM), secret=False)
        issued.append(
            Issued(name, identity, folder / f"{name}.pem", folder / f"{name}.key", certificate.not_valid_after_utc)
        )
    return issued
