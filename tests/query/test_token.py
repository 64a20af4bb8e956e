"""The read-only endpoint's token: required off loopback, checked on every request when set."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from pydantic import SecretStr

from onfinish.errors import ConfigurationError
from onfinish.query.client import QueryClient
from onfinish.query.server import QueryServer, serve_reads
from tests.chdb import chdb_engine

TOKEN = SecretStr("a-long-random-token")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with chdb_engine(Path(tmp_path_factory.mktemp("token"))) as engine:
        yield engine


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "my-host.example"])
def test_no_token_no_bind_beyond_loopback(client: Client, host: str):
    with pytest.raises(ConfigurationError, match="ONFINISH_QUERY_TOKEN"):
        QueryServer(client, host, 0)
    with pytest.raises(ConfigurationError, match="ONFINISH_QUERY_TOKEN"):
        serve_reads(host, 8124)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_token(client: Client, host: str):
    QueryServer(client, host, 0)  # constructs: nothing refused


def _status(url: str, authorization: str | None) -> int:
    request = urllib.request.Request(f"{url}/query?sql=SELECT%201")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_with_a_token_every_request_must_carry_it(client: Client):
    with QueryServer(client, "127.0.0.1", 0, token=TOKEN) as server:
        assert _status(server.url, None) == 401
        assert _status(server.url, "Bearer wrong") == 401
        assert _status(server.url, TOKEN.get_secret_value()) == 401  # not as a bearer token
        assert _status(server.url, f"Bearer {TOKEN.get_secret_value()}x") == 401
        assert _status(server.url, f"Bearer {TOKEN.get_secret_value()}") == 200
        assert QueryClient(server.url, token=TOKEN).query("SELECT 1").rows == [(1,)]


def test_a_token_lets_the_endpoint_listen_beyond_loopback(client: Client):
    server = QueryServer(client, "0.0.0.0", 0, token=TOKEN)
    server.start()
    try:
        assert _status(server.url.replace("0.0.0.0", "127.0.0.1"), None) == 401
    finally:
        server.stop()
