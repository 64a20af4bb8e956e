"""The assumptions processors/faust_overrides.py makes about Faust's, mode's and aiokafka's internals.

Each test reads what the installed library has (its source, its attributes) and fails with a message
that names the override to re-check, so an upgrade that changes an internal breaks here, at once,
rather than silently in a running worker.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiokafka
import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode import Service
from mode.utils.locks import Event

from onfinish.processors import faust_overrides
from onfinish.processors.faust_overrides import CHECKED_AGAINST

RECHECK = "re-read processors/faust_overrides.py against the installed source"


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


@pytest.mark.parametrize("distribution", sorted(CHECKED_AGAINST))
def test_the_installed_versions_are_those_the_overrides_were_checked_against(distribution: str) -> None:
    installed = version(distribution)
    assert installed == CHECKED_AGAINST[distribution], (
        f"{distribution} {installed} is installed, the overrides were checked against "
        f"{CHECKED_AGAINST[distribution]}: {RECHECK}, then update CHECKED_AGAINST"
    )


def test_faust_delivers_each_record_through_wait_first_with_the_flow_event() -> None:
    drain = _source(faust_consumer.Consumer._drain_messages)
    assert "self.wait_first(" in drain and "callback(message), self.suspend_flow.wait()" in drain, (
        f"Faust no longer delivers records with wait_first(callback(message), suspend_flow.wait()): "
        f"DirectDeliveryConsumer.wait_first would take mode's slow path for every record; {RECHECK}"
    )
    assert "wait_first" in vars(Service), "mode's Service.wait_first is gone: " + RECHECK
    assert hasattr(Event, "wait") and inspect.iscoroutinefunction(Event.wait), (
        "mode's Event.wait is no longer a coroutine function: the flow-event check compares its code; "
        + RECHECK
    )


def test_the_consumer_thread_is_made_where_the_override_makes_it() -> None:
    assert "_new_consumer_thread" in vars(aiokafka_driver.Consumer), (
        "Faust's aiokafka Consumer no longer builds its thread in _new_consumer_thread: " + RECHECK
    )
    made = _source(aiokafka_driver.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=1500" in made, (
        "Faust no longer hard-codes aiokafka's fetch wait at 1500 ms: the override may be unneeded; "
        + RECHECK
    )
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in _source(aiokafka.AIOKafkaConsumer.__init__), (
        "aiokafka's consumer no longer keeps its fetch wait in _fetch_max_wait_ms: " + RECHECK
    )


def test_the_app_hooks_the_overrides_replace_are_there() -> None:
    for name in ("_create_directories", "_consumer_wait_empty"):
        assert name in vars(faust.App), (
            f"faust.App.{name} is gone: OverriddenApp.{name} is never called; {RECHECK}"
        )
    assert "self.conf.datadir.mkdir(" in _source(faust.App._create_directories), RECHECK
    assert "on_setup_root_logger" in vars(faust.Worker), (
        "faust.Worker.on_setup_root_logger is gone: " + RECHECK
    )


def test_the_consumer_keeps_acked_and_committed_offsets_where_the_stop_reads_them() -> None:
    init = _source(faust_consumer.Consumer.__init__)
    for attribute in ("self._acked = ", "self._committed_offset = "):
        assert attribute in init, f"Faust's consumer no longer sets {attribute.strip(' =')}: {RECHECK}"
    assert "start_new_transaction" in inspect.signature(faust_consumer.Consumer.commit).parameters, RECHECK


def test_a_stop_waits_for_the_tracked_records_where_untrack_forgets_them() -> None:
    assert "self._unacked_messages = " in _source(faust_consumer.Consumer.__init__), RECHECK
    assert "self._unacked_messages" in _source(faust_consumer.Consumer.track_message), RECHECK
    assert "while not self.should_stop and self._unacked_messages" in _source(
        faust_consumer.Consumer.wait_empty
    ), f"Faust's stop no longer waits on _unacked_messages: untrack may be unneeded; {RECHECK}"


def test_every_private_reach_of_the_processors_is_in_the_overrides_module() -> None:
    from pathlib import Path

    import onfinish.processors as processors

    folder = Path(processors.__file__).parent
    private = (
        "._acked",
        "._committed_offset",
        "._unacked_messages",
        "._fetch_max_wait_ms",
        "suspend_flow",
        "transport.Consumer",
    )
    found = [
        f"{path.name}: {needle}"
        for path in sorted(folder.glob("*.py"))
        if path.name != "faust_overrides.py"
        for needle in private
        if needle in path.read_text()
    ]
    assert not found, f"move these into processors/faust_overrides.py: {found}"
    assert faust_overrides.__doc__ and "private" in faust_overrides.__doc__
