"""Even/odd port allocator: pairs, singles, exhaustion, release, no leaks."""

from __future__ import annotations

import pytest

from gateway.media.ports import PortAllocator, PortError, PortsExhausted


def test_pairs_are_even_and_consecutive() -> None:
    ports = PortAllocator(20000, 20009)
    pairs = [ports.allocate_pair() for _ in range(5)]
    assert sorted(pairs) == [20000, 20002, 20004, 20006, 20008]
    assert ports.in_use() == 10
    with pytest.raises(PortsExhausted, match="no free even/odd port pair in 20000-20009"):
        ports.allocate_pair()


def test_odd_low_bound_and_odd_high_bound() -> None:
    ports = PortAllocator(20001, 20004)
    assert ports.allocate_pair() == 20002  # 20004 has no 20005 inside the range
    with pytest.raises(PortsExhausted):
        ports.allocate_pair()


def test_singles_prefer_ports_that_cannot_serve_a_pair() -> None:
    ports = PortAllocator(20000, 20007)
    ports.allocate_pair()
    ports.allocate_pair()
    ports.allocate_pair()
    ports.allocate_pair()
    ports.release(20003)  # an odd port whose even partner is still held
    ports.release(20006, 2)  # a whole pair
    assert ports.allocate_one() == 20003  # the pair stays whole
    assert ports.allocate_pair() == 20006
    # With no such odd port left, a single breaks a pair: the broken pair's other half is
    # then the preferred single.
    ports.release_pair(20006)
    assert ports.allocate_one() == 20006
    assert ports.allocate_one() == 20007
    assert ports.in_use() == 8


def test_exhaustion_release_and_reuse() -> None:
    ports = PortAllocator(20000, 20003)
    a = ports.allocate_pair()
    b = ports.allocate_one()
    c = ports.allocate_one()
    assert ports.in_use() == 4
    with pytest.raises(PortsExhausted, match="no free port in 20000-20003"):
        ports.allocate_one()
    ports.release_pair(a)
    ports.release(b)
    ports.release(c)
    assert ports.in_use() == 0
    assert ports.allocate_pair() in (20000, 20002)


def test_release_round_robin_does_not_reuse_at_once() -> None:
    ports = PortAllocator(20000, 20099)
    first = ports.allocate_pair()
    ports.release_pair(first)
    assert ports.allocate_pair() != first


def test_no_leak_over_many_cycles() -> None:
    ports = PortAllocator(30000, 30059)
    for _ in range(200):
        held = [(ports.allocate_pair(), ports.allocate_one()) for _ in range(15)]
        assert ports.in_use() == 45
        for pair, single in held:
            ports.release_pair(pair)
            ports.release(single)
        assert ports.in_use() == 0


def test_double_release_and_bad_ranges_raise() -> None:
    ports = PortAllocator(20000, 20003)
    port = ports.allocate_pair()
    ports.release_pair(port)
    with pytest.raises(PortError, match="release of unallocated port"):
        ports.release_pair(port)
    for low, high in ((100, 200), (20010, 20000), (65000, 70000)):
        with pytest.raises(PortError):
            PortAllocator(low, high)
    assert PortAllocator(1024, 1024).capacity == 1
    assert not ports.is_used(port)
