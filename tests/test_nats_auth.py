"""Connection options against real nats-servers, one configured for each way of authenticating: user/password,
token, NKEY, credentials file (operator/account/user JWTs) and TLS with certificates made here. Each method must
carry a relay's messages into a stream, refuse wrong credentials with a PublishError that shows no secret, and
nothing (credential or payload) may reach a log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats_auth_support import (
    client_ssl_context,
    jwt_server_config,
    make_jwt_chain,
    make_tls_material,
    new_nkey,
    nkey_server_config,
    tls_server_config,
    token_server_config,
    user_password_server_config,
    write_creds,
    write_seed,
)

import pbuffer
from pbuffer.errors import ConfigurationError, PublishError
from pbuffer.examples.natsserver import NatsServer, find_binary, free_port
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport


def _have_nats_server() -> bool:
    try:
        find_binary()
    except ConfigurationError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_nats_server(), reason="nats-server binary not installed")

#: Every await on the network is bounded: a hang fails the test instead of stalling the run.
DEADLINE = 15.0


@dataclass
class Method:
    """One way of authenticating: the server's configuration, what a client passes, and the secrets involved."""

    name: str
    config: str
    good: dict[str, Any]
    bad: dict[str, Any] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()


def user_password_method(tmp_path: Path) -> Method:
    password, wrong = "pw-SENTINEL-7f3a1c", "pw-WRONG-SENTINEL-2b9e"
    return Method("user_password", user_password_server_config("relay", password),
                  good={"user": "relay", "password": password}, bad={"user": "relay", "password": wrong},
                  secrets=(password, wrong))


def token_method(tmp_path: Path) -> Method:
    token, wrong = "tok-SENTINEL-91d0e4", "tok-WRONG-SENTINEL-c55a"
    return Method("token", token_server_config(token), good={"token": token}, bad={"token": wrong},
                  secrets=(token, wrong))


def nkey_method(tmp_path: Path) -> Method:
    # nats-py's nkeys_seed is the path of a file holding the seed (its nkeys_seed_str takes the seed itself).
    user, stranger = new_nkey("user"), new_nkey("user")
    return Method("nkey", nkey_server_config(user.public),
                  good={"nkeys_seed": str(write_seed(tmp_path / "user.nk", user.seed))},
                  bad={"nkeys_seed": str(write_seed(tmp_path / "stranger.nk", stranger.seed))},
                  secrets=(user.seed, stranger.seed))


def creds_method(tmp_path: Path) -> Method:
    chain = make_jwt_chain()
    stranger = new_nkey("user")
    # The right user JWT with someone else's seed: the nonce signature does not match the JWT's subject.
    return Method("creds", jwt_server_config(chain),
                  good={"creds": str(write_creds(tmp_path / "user.creds", chain.user_jwt, chain.user.seed))},
                  bad={"creds": str(write_creds(tmp_path / "stolen.creds", chain.user_jwt, stranger.seed))},
                  secrets=(chain.user.seed, stranger.seed, chain.account.seed, chain.operator.seed))


def tls_method(tmp_path: Path) -> Method:
    material = make_tls_material(tmp_path / "tls")
    return Method("tls", tls_server_config(material), good={"tls": client_ssl_context(material.ca_cert)},
                  bad={"tls": client_ssl_context(None)})


METHODS: dict[str, Callable[[Path], Method]] = {
    "user_password": user_password_method,
    "token": token_method,
    "nkey": nkey_method,
    "creds": creds_method,
    "tls": tls_method,
}
CREDENTIAL_METHODS = ["user_password", "token", "nkey", "creds"]


@pytest.fixture(params=list(METHODS))
def method(request: pytest.FixtureRequest, tmp_path: Path) -> Method:
    return METHODS[request.param](tmp_path)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


async def connect(server: NatsServer, **options: Any) -> JetStreamTransport:
    return await JetStreamTransport.connect(server.url, connect_timeout=5, **options)


async def relay_through(server: NatsServer, payloads: list[bytes], **options: Any) -> tuple[list[bytes], int]:
    """Connect, make the stream, save ``payloads``, drain them with a Relay: (stored payloads, left in buffer)."""
    transport = await connect(server, **options)
    buf = pbuffer.open("memory://")
    try:
        await transport.js.add_stream(name="AUTH", subjects=["auth.>"])
        for payload in payloads:
            buf.save(payload, subject="auth.events")
        async with Relay(buf, transport, close_transport=False) as relay:
            stats = await relay.drain()
        assert stats.published == len(payloads)
        info = await transport.js.stream_info("AUTH")
        stored = [(await transport.js.get_msg("AUTH", seq)).data or b""
                  for seq in range(1, info.state.messages + 1)]
        return stored, len(buf)
    finally:
        await transport.close()
        buf.close()


def _chain(exc: BaseException) -> str:
    """The text of an exception and of everything it was raised from."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 10:
        parts.append(f"{type(seen).__name__}: {seen} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------- the methods

def test_each_method_carries_the_relays_messages(method: Method) -> None:
    payloads = [f"{method.name} message {i}".encode() for i in range(5)]
    with NatsServer(config=method.config) as server:
        stored, left = run(relay_through(server, payloads, **method.good))
    assert stored == payloads
    assert left == 0


def test_tls_with_a_hostname_other_than_the_url(tmp_path: Path) -> None:
    """tls_hostname: the certificate is checked against that name, not the address dialled."""
    material = make_tls_material(tmp_path / "tls", hosts=("nats.pbuffer.test",))
    with NatsServer(config=tls_server_config(material)) as server:
        stored, _left = run(relay_through(server, [b"by name"], tls=client_ssl_context(material.ca_cert),
                                          tls_hostname="nats.pbuffer.test"))
    assert stored == [b"by name"]


# ------------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("name", CREDENTIAL_METHODS)
def test_wrong_credentials_are_refused_without_showing_them(name: str, tmp_path: Path) -> None:
    method = METHODS[name](tmp_path)
    with NatsServer(config=method.config) as server, pytest.raises(PublishError) as caught:
        # The first connect gives up after connect_attempts (quickly here); failing fast is tested below.
        run(connect(server, reconnect_time_wait=0.1, **method.bad))
    text = _chain(caught.value)
    assert "cannot connect to NATS" in str(caught.value)
    for secret in method.secrets:
        assert secret not in text


@pytest.mark.parametrize("name", CREDENTIAL_METHODS)
def test_refused_credentials_fail_fast_and_say_why(name: str, tmp_path: Path) -> None:
    """With the default settings a refusal is not retried (a wrong secret never becomes right by retrying: nats-py
    would retry it every reconnect_time_wait) and the error names the cause rather than "no servers"."""
    method = METHODS[name](tmp_path)
    with NatsServer(config=method.config) as server, pytest.raises(PublishError) as caught:
        run(connect(server, **method.bad))
    assert "authorization" in str(caught.value).lower()
    for secret in method.secrets:
        assert secret not in _chain(caught.value)


@pytest.mark.parametrize("client_tls", ["system CAs only", "no tls option"])
def test_a_client_that_does_not_trust_the_ca_fails_clearly(client_tls: str, tmp_path: Path) -> None:
    material = make_tls_material(tmp_path / "tls")
    options: dict[str, Any] = {"tls": client_ssl_context(None)} if client_tls == "system CAs only" else {}
    with NatsServer(config=tls_server_config(material)) as server, pytest.raises(PublishError) as caught:
        run(connect(server, **options))
    message = str(caught.value).lower()
    assert "certificate" in message
    assert "verif" in message  # "verify failed" / "verification failed"


# ------------------------------------------------------------------------------------------------ no leaks

def test_no_credential_or_payload_reaches_a_log(method: Method, caplog: pytest.LogCaptureFixture) -> None:
    payload_sentinel = f"PAYLOAD-SENTINEL-{method.name}-5d1e"
    caplog.set_level(logging.DEBUG)  # the root logger: pbuffer's, nats-py's and asyncio's records alike
    with NatsServer(config=method.config) as server:
        stored, _left = run(relay_through(server, [payload_sentinel.encode()], **method.good))
        if method.name != "tls":  # a TLS refusal is covered by its own test
            with pytest.raises(PublishError):
                run(connect(server, reconnect_time_wait=0.1, **method.bad))
    assert stored == [payload_sentinel.encode()]
    sentinels = (payload_sentinel, *method.secrets)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert caplog.records, "nothing was logged: the capture is not working"
    for record in caplog.records:
        texts = [formatter.format(record), str(record.msg), repr(record.args)]
        for sentinel in sentinels:
            assert all(sentinel not in text for text in texts), f"{sentinel!r} logged by {record.name}"


# --------------------------------------------------------------------------------------------- other options

def test_ping_and_reconnect_settings_reach_nats_py() -> None:
    async def scenario(server: NatsServer) -> dict[str, Any]:
        transport = await connect(server, ping_interval=1, max_outstanding_pings=3, reconnect_time_wait=0.5,
                                  max_reconnect_attempts=7, name="pbuffer-auth-test")
        try:
            await asyncio.sleep(1.3)  # at least one ping went out and was answered
            assert transport.nc.is_connected
            return dict(transport.nc.options)
        finally:
            await transport.close()

    with NatsServer() as server:
        options = run(scenario(server))
    assert options["ping_interval"] == 1
    assert options["max_outstanding_pings"] == 3
    assert options["reconnect_time_wait"] == 0.5
    assert options["max_reconnect_attempts"] == 7
    assert options["name"] == "pbuffer-auth-test"


def test_a_list_of_servers_reaches_one_that_is_up() -> None:
    async def scenario(server: NatsServer) -> str:
        dead = f"nats://127.0.0.1:{free_port()}"
        transport = await JetStreamTransport.connect([dead, server.url], connect_timeout=2)
        try:
            url = transport.nc.connected_url
            assert url is not None
            return f"{url.hostname}:{url.port}"
        finally:
            await transport.close()

    with NatsServer() as server:
        assert run(scenario(server)) == f"127.0.0.1:{server.port}"
