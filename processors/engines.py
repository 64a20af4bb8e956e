"""The per-event path's native engine: one call per batch into the Rust core, the Python path as
the reference for every record the core is not sure of.

ONFINISH_PROCESSOR_ENGINE picks the engine (processors/settings.py). With `python` the pipeline
decodes, validates, enriches, redacts and encodes each record in Python (decoding.py,
enrichment.py, schemas/avro_encoder.py): the reference. With `native` it hands a batch's raw values
to `onfinish_native.Core` (processors/native/, a distribution of its own) in one call, which
returns for each record one of:

- a `Call`: the framed enriched record, byte-identical to the reference's, and what sessions,
  windows and event rules read of it (processors/calls.py);
- a tuple: a Feedback's fields, which the pipeline applies as the reference does;
- None: the core is not sure, and the record takes the Python path. That is every record the
  reference would dead-letter (not framed, unknown schema, truncated, invalid, out of bounds ...)
  and anything unusual (a writer schema the core does not plan, a UUID not in canonical form, a
  finish near the time bounds, a non-ASCII finish reason, a repeated attribute key). Dead letters,
  their reasons and their messages are therefore the reference's by construction.

Free text the core's regex engine cannot vouch for (non-ASCII, or ASCII separators 0x1C-0x1F) is
redacted by the Python PatternSet from inside the call. Registry I/O stays here: writer schemas are
fetched through the decoder's lookup and given to the core as JSON text, the enriched record's
Confluent prefix through the worker's output schemas. Decision 0011 says what goes which way and
what it measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeAlias
from uuid import UUID

from onfinish.errors import ConfigurationError
from onfinish.processors.decoding import MAX_VALUE_BYTES, Decoder
from onfinish.processors.enrichment import IDENTIFIER_FIELDS, TRACE_ID_LENGTHS, Enricher
from onfinish.processors.quality import Behaviour
from onfinish.processors.redaction import PatternSet
from onfinish.schemas.contract import ENRICHED_EVENT, FEEDBACK, ONFINISH_EVENT, RecordType
from onfinish.schemas.models import Feedback, RoutingStrategy, Status
from onfinish.schemas.wire import Refused, WriterSchema, schema_id_of

if TYPE_CHECKING:
    from onfinish_native import Call

    from onfinish.processors.pipeline import RawRecord

# A native result: an enriched call, a Feedback's fields, or None (the reference decides).
Result: TypeAlias = "Call | tuple[Any, ...] | None"
# The Confluent prefix (magic byte and schema id) of an output record type; may raise
# RegistryUnavailable while the registry is away.
Frame = Callable[[RecordType], bytes]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Finishes this close to the decoder's time bounds are left to the reference and its own clock:
# the core reads the clock once per batch, the reference once per record.
_BOUNDS_MARGIN = timedelta(seconds=5)
_KINDS = {ONFINISH_EVENT.full_name: 0, FEEDBACK.full_name: 1}


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _native_module() -> Any:
    try:
        import onfinish_native
    except ImportError as exc:
        raise ConfigurationError(
            "the native engine needs the onfinish-native package (pip install processors/native, "
            "which `make install` does); or set ONFINISH_PROCESSOR_ENGINE=python"
        ) from exc
    return onfinish_native


def _enum_members(
    record_type: RecordType, field: str, enum: type[Status] | type[RoutingStrategy]
) -> list[Any]:
    """The enum's members in the order of the schema's symbols (the core returns them by index)."""
    schema = next(f["type"] for f in record_type.schema["fields"] if f["name"] == field)
    return [enum(symbol) for symbol in schema["symbols"]]


def _patterns_config(patterns: PatternSet) -> dict[str, Any]:
    return {**patterns.definitions(), "python_redact": patterns.redact, "python_findings": patterns.findings}


class NativeCore:
    """The Rust core of one worker, configured from the same decoder and enricher as the reference."""

    def __init__(self, decoder: Decoder, enricher: Enricher, frame: Frame) -> None:
        native = _native_module()
        catalog = enricher.catalog
        weights = enricher.weights
        self.decoder = decoder
        self.frame = frame
        self.core = native.Core(
            {
                "event_schema": ONFINISH_EVENT.schema_str,
                "feedback_schema": FEEDBACK.schema_str,
                "enriched_schema": ENRICHED_EVENT.schema_str,
                "status_members": _enum_members(ONFINISH_EVENT, "status", Status),
                "routing_members": _enum_members(ONFINISH_EVENT, "routing_strategy", RoutingStrategy),
                "prices": [
                    (
                        price.provider,
                        price.model,
                        price.model_version,
                        *(
                            _nano(amount)
                            for amount in (
                                price.input_per_mtok,
                                price.cached_input_per_mtok,
                                price.output_per_mtok,
                                price.reasoning_per_mtok,
                            )
                        ),
                        _micros(datetime.combine(price.effective_from, datetime.min.time(), UTC)),
                        None
                        if price.effective_to is None
                        else _micros(datetime.combine(price.effective_to, datetime.min.time(), UTC)),
                    )
                    for price in catalog.prices()
                ],
                "metadata": [
                    (provider, model, metadata.family, metadata.context_window)
                    for (provider, model), metadata in catalog.all_metadata().items()
                ],
                "catalog_source": catalog.source,
                "weights": (
                    weights.regenerated,
                    weights.edited,
                    weights.latency,
                    weights.token_efficiency,
                    weights.rating,
                    weights.latency_target_ms,
                    weights.latency_limit_ms,
                    weights.max_completion_ratio,
                ),
                **_patterns_config(enricher.patterns),
                "allow_list": sorted(enricher.attribute_allow_list),
                "pseudonym_key": enricher.pseudonym_key,
                # One list of identifiers for both engines (the core checks each is a string).
                "identifier_fields": list(IDENTIFIER_FIELDS),
                "trace_id_lengths": list(TRACE_ID_LENGTHS.items()),
                "max_future_us": decoder.bounds.max_future // _MICROSECOND,
                "max_past_us": decoder.bounds.max_past // _MICROSECOND,
                "margin_us": _BOUNDS_MARGIN // _MICROSECOND,
                "max_value_bytes": MAX_VALUE_BYTES,
            }
        )
        self.unplanned: dict[int, str] = {}  # writer schema ids the core does not read, and why
        self.records = 0  # raw records given to the core...
        self.handed_back = 0  # ...and those it handed back to the reference path

    def prepare(self, value: bytes | None) -> None:
        """Give the core the writer schema of `value` if it is new: RegistryUnavailable while the
        registry cannot be asked (nothing changed; the caller retries)."""
        if not value or len(value) > MAX_VALUE_BYTES:
            return
        try:
            schema_id = schema_id_of(value)
        except Refused:
            return
        if self.core.knows_writer(schema_id):
            return
        writer = self.decoder.lookup(schema_id)
        if writer is None or writer.record_type is None:
            why = self.core.add_writer(schema_id, None, None)
        else:
            kind = _KINDS.get(writer.record_type.full_name)
            why = self.core.add_writer(schema_id, kind, _schema_text(writer))
        if why is not None:
            self.unplanned[schema_id] = why

    def run(self, records: Sequence[RawRecord], now: datetime) -> tuple[list[Result], dict[str, float]]:
        """One call for a batch's records (each `prepare`d first): a result per record, and the
        seconds the call spent per stage (decode, enrich, encode)."""
        prefix = self.frame(ENRICHED_EVENT)  # before any state changes: it may wait for the registry
        started = perf_counter()
        results, (decode, enrich, encode) = self.core.process(
            [record.value for record in records],
            [record.partition for record in records],
            [record.offset for record in records],
            _micros(self.decoder.clock()),
            _micros(now),
            prefix,
        )
        self.records += len(records)
        self.handed_back += sum(result is None for result in results)
        # What the call spent outside its stages (arguments, results) is counted as decoding.
        overhead = perf_counter() - started - decode - enrich - encode
        return results, {"decode": decode + max(overhead, 0.0), "enrich": enrich, "encode": encode}


def _schema_text(writer: WriterSchema) -> str | None:
    """The writer schema's JSON: as registered, or the contract's own when that is what was parsed."""
    if writer.text is not None:
        return writer.text
    record_type = writer.record_type
    if record_type is not None and writer.parsed is record_type.parsed:
        return record_type.schema_str
    return None


def _nano(amount: Any) -> int:
    """Nano-dollars per million tokens; exact: the catalog allows at most 9 decimal places."""
    nano = amount.scaleb(9)
    if nano != nano.to_integral_value():
        raise ConfigurationError(f"a price of {amount} has more than 9 decimal places")
    return int(nano)


def feedback_of(fields: tuple[Any, ...]) -> Feedback:
    """The Feedback the core read, as the reference's decoder would have made it."""
    (
        feedback_id,
        request_id,
        session_id,
        regenerated,
        edited,
        rating,
        at,
        schema_version,
        sdk_name,
        sdk_version,
    ) = fields
    return Feedback.construct_complete(
        {
            "feedback_id": UUID(feedback_id),
            "request_id": request_id,
            "session_id": session_id,
            "regenerated": regenerated,
            "edited": edited,
            "rating": rating,
            "at": at,
            "schema_version": schema_version,
            "sdk_name": sdk_name,
            "sdk_version": sdk_version,
        }
    )


def behaviour_of(call: Call) -> Behaviour:
    """`Behaviour.of` of the enriched record the core made (its finish reason as redacted)."""
    return Behaviour(
        status=call.status,
        regenerated=call.regenerated,
        edited=call.edited,
        latency_ms=call.latency_ms,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        finish_reason=call.finish_reason,
        rating=call.rating,
        rated_at=call.finished_at if call.rating is not None else None,
    )


class NativePatternSet:
    """The redaction patterns on the native engine, with PatternSet's `redact` and `findings`: the
    redaction corpora run on both engines (tests/processors/test_redaction.py)."""

    def __init__(self, patterns: PatternSet) -> None:
        self.reference = patterns
        self.redactor = _native_module().Redactor(_patterns_config(patterns))

    @property
    def version(self) -> int:
        return self.reference.version

    @property
    def names(self) -> tuple[str, ...]:
        return self.reference.names

    def redact(self, text: str) -> str:
        redacted: str = self.redactor.redact(text)
        return redacted

    def findings(self, text: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = self.redactor.findings(text)
        return found
