"""Configuration of the read-only SQL endpoint and dashboard (ONFINISH_QUERY_*)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from onfinish.settings import OnfinishSettings


class QuerySettings(OnfinishSettings):
    """Who may use the read-only SQL endpoint and the dashboard the sink serves (ONFINISH_SINK_QUERY_*)."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_QUERY_", extra="ignore")

    token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token every request to the endpoint must carry (Authorization: Bearer ...); "
            "required to listen on an address other than loopback. Put TLS in front with a reverse proxy."
        ),
    )
