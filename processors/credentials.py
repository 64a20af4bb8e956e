"""Faust's broker credentials from onfinish's Kafka settings (onfinish/security.py's aiokafka rendering).

Faust hands `broker_credentials` to every aiokafka client it makes: the consumer, its producer, the
admin client that creates the changelog and assignor topics. The processors' output producer is
confluent-kafka (processors/delivery.py) and takes `librdkafka_config` directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from aiokafka.abc import AbstractTokenProvider

from onfinish.security import OidcClientCredentials, aiokafka_config
from onfinish.settings import KafkaSettings


class _TokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka's asynchronous token provider over the synchronous OIDC client-credentials fetch."""

    def __init__(self, credentials: OidcClientCredentials) -> None:
        self.credentials = credentials

    async def token(self) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.credentials.token)


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The `broker_credentials` of a Faust app (None: PLAINTEXT), from `aiokafka_config`."""
    config = aiokafka_config(kafka)
    protocol, context = config["security_protocol"], config["ssl_context"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if config["sasl_mechanism"] == "OAUTHBEARER":
        return faust.OAuthCredentials(
            oauth_cb=_TokenProvider(config["sasl_oauth_token_provider"]), ssl_context=context
        )
    return faust.SASLCredentials(
        username=config["sasl_plain_username"],
        password=config["sasl_plain_password"],
        ssl_context=context,
        mechanism=config["sasl_mechanism"],
    )
