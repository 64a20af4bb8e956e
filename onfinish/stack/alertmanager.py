"""The local Alertmanager and the webhook receiver it notifies, when alerting is enabled.

Alertmanager runs as one node (clustering off) with its silences and notification log in the stack
home, so silences and "already notified" survive `down`/`up`. Unless
ONFINISH_ALERTING_ALERTMANAGER_CONFIG names a configuration of one's own, it gets one that sends
every notification, firing and resolved, to the stack's webhook receiver, one group per rule and
subject (each episode its own message), after 2 s (group_wait) and with changes every 5 s
(group_interval): short, so that `onfinish demo` and `onfinish alerts test` show a notification
within seconds. deploy/alertmanager/alertmanager.yml is the production example (Slack, PagerDuty).
The configuration is written as JSON, which Alertmanager's YAML parser reads.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onfinish.alerting.settings import AlertingSettings
from onfinish.alerting.webhook import PATH
from onfinish.errors import ProvisioningError
from onfinish.settings import StackSettings
from onfinish.stack.component import Component
from onfinish.stack.install import alertmanager_binary

WEBHOOK_RECEIVER = "webhook"


def local_config(webhook_url: str) -> dict[str, Any]:
    """Alertmanager's configuration for the local stack: everything to one webhook."""
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": WEBHOOK_RECEIVER,
            "group_by": ["rule", "subject"],
            "group_wait": "2s",
            "group_interval": "5s",
            "repeat_interval": "4h",
        },
        "receivers": [
            {"name": WEBHOOK_RECEIVER, "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
    }


class AlertmanagerServer(Component):
    name = "alertmanager"

    def __init__(self, settings: StackSettings, alerting: AlertingSettings | None = None) -> None:
        super().__init__(settings)
        self.alerting = alerting or AlertingSettings()

    @property
    def ports(self) -> Sequence[int]:
        return (self.settings.alertmanager_port,)

    @property
    def address(self) -> str:
        return self.settings.alertmanager_url

    @property
    def config_path(self) -> Path:
        return self.home / "alertmanager.yml"

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        if self.alerting.alertmanager_config is not None:
            shutil.copyfile(self.alerting.alertmanager_config, self.config_path)
            return
        webhook = f"http://{self.settings.host}:{self.settings.webhook_port}{PATH}"
        self.config_path.write_text(json.dumps(local_config(webhook), indent=2))

    def command(self) -> Sequence[str]:
        binary = alertmanager_binary(self.settings)
        if not binary.installed:
            raise ProvisioningError(f"{binary.name} is not installed: run `onfinish stack install`")
        return [
            str(binary.path),
            f"--config.file={self.config_path.resolve()}",
            f"--storage.path={(self.home / 'data').resolve()}",
            f"--web.listen-address={self.settings.host}:{self.settings.alertmanager_port}",
            f"--web.external-url={self.settings.alertmanager_url}",
            "--cluster.listen-address=",  # one node: no gossip port to collide with anything
            "--log.level=info",
        ]

    def is_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.settings.alertmanager_url}/-/ready", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)


class WebhookReceiverServer(Component):
    """The receiver of the local Alertmanager's notifications (onfinish/alerting/webhook.py)."""

    name = "webhook"

    @property
    def ports(self) -> Sequence[int]:
        return (self.settings.webhook_port,)

    @property
    def address(self) -> str:
        return f"http://{self.settings.host}:{self.settings.webhook_port}{PATH}"

    def command(self) -> Sequence[str]:
        return [
            sys.executable,
            "-m",
            "onfinish.alerting.webhook",
            "--host",
            self.settings.host,
            "--port",
            str(self.settings.webhook_port),
            "--out",
            str(self.settings.notifications_path),
        ]

    def is_healthy(self) -> bool:
        url = f"http://{self.settings.host}:{self.settings.webhook_port}/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
