"""Dead letters sealed (decision 0017): what `seal` hides, `open` gives back, and only with its key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onfinish.schemas.sealing import SEALED_PREFIX, Seal, SealError, is_sealed
from onfinish.settings import DeadLetterSettings

SEAL = Seal("a test secret")
RECORD = b"\x00\x00\x00\x00\x07" + b"user alice@example.com asked about card 4111 1111 1111 1111"


@given(st.binary(min_size=1, max_size=2048))
def test_what_is_sealed_opens_to_the_same_bytes(data: bytes) -> None:
    sealed = SEAL.seal(data)
    assert sealed is not None and is_sealed(sealed)
    assert SEAL.open(sealed) == data


def test_a_sealed_record_shows_nothing_of_what_it_holds():
    sealed = SEAL.seal(RECORD)
    assert sealed is not None
    for secret in (b"alice", b"example.com", b"4111", b"card"):
        assert secret not in sealed


def test_sealing_is_deterministic_per_key_so_engines_and_redeliveries_agree():
    assert SEAL.seal(RECORD) == SEAL.seal(RECORD)
    assert SEAL.seal(RECORD) != SEAL.seal(RECORD + b"!")
    assert Seal("another secret").seal(RECORD) != SEAL.seal(RECORD)


def test_another_key_or_an_altered_letter_does_not_open_and_says_why():
    sealed = SEAL.seal(RECORD)
    assert sealed is not None
    with pytest.raises(SealError, match="ONFINISH_DLQ_SEAL_KEY"):
        Seal("another secret").open(sealed)
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError, match="altered"):
        SEAL.open(altered)


def test_nothing_and_letters_from_before_sealing_pass_as_they_are():
    assert SEAL.seal(None) is None and SEAL.seal(b"") == b""
    assert SEAL.open(None) is None
    assert SEAL.open(RECORD) == RECORD  # an unsealed dead letter, stored before sealing
    assert SEAL.open(SEALED_PREFIX) == SEALED_PREFIX  # too short to be sealed


def test_the_configured_seal_reads_its_secret_from_the_environment(monkeypatch):
    monkeypatch.setenv("ONFINISH_DLQ_SEAL_KEY", "the operators' secret")
    assert Seal.configured().key_id == Seal("the operators' secret").key_id
    assert Seal.configured(DeadLetterSettings(seal_key="x")).key_id == Seal("x").key_id  # type: ignore[arg-type]
