from onfinish.processors.continuity import Continuity, Verdict
from tests.drills import HoleDrill


def _run(continuity: Continuity, records: list[tuple[int, int]]) -> list[Verdict]:
    return [continuity.check(partition, offset) for partition, offset in records]


def test_contiguous_offsets_are_processed_and_partitions_are_independent() -> None:
    continuity = Continuity()
    verdicts = _run(continuity, [(0, 5), (1, 9), (0, 6), (1, 10), (0, 7)])
    assert verdicts == [Verdict.process] * 5 and continuity.holes == 0


def test_a_hole_skips_everything_after_it_until_the_partition_is_read_again_from_the_hole() -> None:
    continuity = Continuity()
    # 195..197 arrive, then 454..455 (a hole from 198), then other partitions' records, then the
    # re-read from 198, which reaches 454 again in order.
    stream = [(0, 195), (0, 196), (0, 197), (0, 454), (1, 3), (0, 455), (0, 198), (0, 199)]
    verdicts = _run(continuity, stream)
    assert verdicts == [
        Verdict.process,
        Verdict.process,
        Verdict.process,
        Verdict.rewind,
        Verdict.process,
        Verdict.skip,
        Verdict.process,
        Verdict.process,
    ]
    assert continuity.holes == 1
    assert _run(continuity, [(0, 200)]) == [Verdict.process]


def test_the_rewind_target_is_the_first_missing_offset() -> None:
    continuity = Continuity()
    _run(continuity, [(2, 10), (2, 11)])
    assert continuity.check(2, 40) is Verdict.rewind
    assert continuity.missing_from(2) == 12


def test_a_record_delivered_again_within_an_assignment_is_skipped_not_a_hole() -> None:
    """A worker starting up seeks to the committed offsets while its fetcher still delivers what it
    fetched before: the same offsets come twice, and the second time they are skipped."""
    continuity = Continuity()
    verdicts = _run(continuity, [(0, 20), (0, 21), (0, 22), (0, 20), (0, 21), (0, 22), (0, 23)])
    assert verdicts == [Verdict.process] * 3 + [Verdict.skip] * 3 + [Verdict.process]
    assert (continuity.holes, continuity.repeats) == (0, 3)


def test_a_repeat_after_a_hole_s_records_were_read_again_is_skipped_too() -> None:
    continuity = Continuity()
    stream = [(0, 1), (0, 5), (0, 2), (0, 3), (0, 4), (0, 5), (0, 3), (0, 6)]
    verdicts = _run(continuity, stream)
    assert verdicts == [
        Verdict.process,
        Verdict.rewind,
        Verdict.process,
        Verdict.process,
        Verdict.process,
        Verdict.process,
        Verdict.skip,
        Verdict.process,
    ]


def test_a_revoked_partition_starts_afresh_when_it_comes_back() -> None:
    continuity = Continuity()
    _run(continuity, [(0, 1), (0, 2), (3, 7)])
    continuity.forget({0})
    assert continuity.check(0, 900) is Verdict.process  # another worker committed up to here
    continuity.forget({0})
    assert continuity.check(0, 850) is Verdict.process  # a replay from an older commit: taken
    assert continuity.check(3, 9) is Verdict.rewind  # partition 3 was not revoked


def test_the_drill_passes_over_one_run_of_one_partition_once() -> None:
    drill = HoleDrill(after=3, size=4)
    first = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (1, 3), (1, 4), (1, 5), (0, 3), (1, 6)]
    passed = [record for record in first if drill.passes_over(*record)]
    # The fourth record opens the hole on its partition (1, from offset 1) for offsets 1..4.
    assert passed == [(1, 1), (1, 2), (1, 3), (1, 4)]
    # The worker reads partition 1 again from 1: nothing is passed over any more.
    assert not any(drill.passes_over(1, offset) for offset in range(1, 7))


def test_the_drill_and_the_guard_together_process_every_record_once() -> None:
    drill, continuity = HoleDrill(after=2, size=3), Continuity()
    processed: list[int] = []
    position, rewound = 0, False
    while position < 10:
        offset, position = position, position + 1
        if drill.passes_over(0, offset):
            continue
        verdict = continuity.check(0, offset)
        if verdict is Verdict.process:
            processed.append(offset)
        elif verdict is Verdict.rewind:
            position, rewound = continuity.missing_from(0), True
    assert rewound and processed == list(range(10))
