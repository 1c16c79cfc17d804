"""`kosmos certs`: a CA and SPIFFE-named certificates that a real grpc.aio server and client accept for mTLS."""

from __future__ import annotations

import datetime
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kosmos_grpc import ConfigError
from kosmos_grpc.certs import issue_development_certificates

from .conftest import environment


def test_each_identity_gets_a_certificate_the_ca_signed_naming_its_spiffe_id(tmp_path: Path) -> None:
    issued = issue_development_certificates(tmp_path, ["zeus", "athena"], trust_domain="example.org", hours=2)
    assert [each.name for each in issued] == ["ca", "zeus", "athena", "cli"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for each in issued[1:]:
        certificate = x509.load_pem_x509_certificate(each.certificate.read_bytes())
        certificate.verify_directly_issued_by(ca)  # raises when another key signed it
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [each.spiffe_id]
        assert "localhost" in names.get_values_for_type(x509.DNSName)
        lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(hours=1.9) < lifetime <= datetime.timedelta(hours=2)
        assert stat.S_IMODE(each.key.stat().st_mode) == 0o600, "a key only its owner reads"
    assert issued[1].spiffe_id == "spiffe://example.org/agent/zeus"
    assert issued[3].spiffe_id == "spiffe://example.org/client/cli"


def test_names_spiffe_does_not_allow_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trust domain 'Example\.ORG'"):
        issue_development_certificates(tmp_path, ["zeus"], trust_domain="Example.ORG")
    with pytest.raises(ConfigError, match="'a/b' cannot name a certificate"):
        issue_development_certificates(tmp_path, ["a/b"])
    with pytest.raises(ConfigError, match="from a moment to a year"):
        issue_development_certificates(tmp_path, ["zeus"], hours=0)


class _Who(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health ships no types
    """Health that also notes who the caller proved to be."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> health_pb2.HealthCheckResponse:
        spiffe = next(iter(context.auth_context().get("peer_spiffe_id", [b""])))
        self.peers.append(spiffe.decode())
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def mtls_server(tmp_path: Path) -> AsyncIterator[tuple[str, _Who, Path]]:
    issue_development_certificates(tmp_path, ["athena"])
    credentials = grpc.ssl_server_credentials(
        [((tmp_path / "athena.key").read_bytes(), (tmp_path / "athena.pem").read_bytes())],
        root_certificates=(tmp_path / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    who = _Who()
    health_pb2_grpc.add_HealthServicer_to_server(who, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"localhost:{port}", who, tmp_path
    finally:
        await server.stop(0)


async def test_a_client_with_the_cli_s_certificate_is_known_by_its_spiffe_id(
    mtls_server: tuple[str, _Who, Path],
) -> None:
    address, who, folder = mtls_server
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.pem").read_bytes(),
        private_key=(folder / "cli.key").read_bytes(),
        certificate_chain=(folder / "cli.pem").read_bytes(),
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert who.peers == ["spiffe://kosmos.local/client/cli"]


async def test_a_client_without_a_certificate_is_refused(mtls_server: tuple[str, _Who, Path]) -> None:
    address, who, folder = mtls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=(folder / "ca.pem").read_bytes())
    async with grpc.aio.secure_channel(address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert who.peers == [], "the handshake failed before any call"


def test_kosmos_certs_writes_one_for_each_agent_of_the_config_and_says_so(tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text(
        f'[mesh]\nstate_dir = "{tmp_path / "state"}"\n'
        '[agents.zeus]\nobject = "agents.zeus:Zeus"\naddress = "127.0.0.1:0"\n'
        '[agents.demeter]\nobject = "agents.demeter:Demeter"\naddress = "127.0.0.1:0"\n'
    )
    made = subprocess.run(
        [sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "certs", "--hours", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment({}),
    )
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "the",
        "spiffe://kosmos.local/agent/zeus",
        "spiffe://kosmos.local/agent/demeter",
        "spiffe://kosmos.local/client/cli",
    ]
    assert sorted(path.name for path in (tmp_path / "state" / "certs").iterdir()) == sorted(
        f"{name}.{ext}" for name in ("ca", "zeus", "demeter", "cli") for ext in ("pem", "key")
    )
    bad = subprocess.run(
        [sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "certs", "--trust-domain", "A B"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment({}),
    )
    assert (bad.returncode, bad.stderr.count("\n")) == (1, 1), bad.stderr
    assert "trust domain 'A B'" in bad.stderr
