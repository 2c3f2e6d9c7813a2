"""Hash slots (sink/slots.py) and how a batch's writes become script calls (sink/versioned.py):
every own key lands in its document's slot, whatever braces the document key holds, and a call
holds one slot's documents where the server asks for it."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from vecmirror.sink.slots import SLOTS, own_key_slot, slot_of, slot_tag
from vecmirror.sink.versioned import CALL_SIZE, Write, guard_key, lease_keys, plan_calls, tombstone_key


def test_every_slot_has_a_tag_that_hashes_to_it() -> None:
    tags = [slot_tag(slot) for slot in range(SLOTS)]
    assert [key_slot(tag.encode()) for tag in tags] == list(range(SLOTS))
    assert len(set(tags)) == SLOTS
    assert max(map(len, tags)) <= len("{abc}")


@pytest.mark.parametrize("key", ["doc:42", "doc:{x}:1", "doc:}a{", "{}doc", "doc:{}:{y}", "é:✓", ""])
def test_a_tombstone_is_in_its_document_s_slot_and_names_it(key: str) -> None:
    tombstone = tombstone_key(key)
    assert slot_of(tombstone) == slot_of(key) == key_slot(key.encode())
    assert own_key_slot("tombstone", tombstone) == (slot_of(key), key)


def test_a_name_from_before_slots_is_not_taken_for_one() -> None:
    assert own_key_slot("tombstone", "vecmirror:tombstone:doc:42") is None
    # a tag that is not its slot's name is not one of today's names
    assert own_key_slot("tombstone", "vecmirror:tombstone:{zzzz}doc") is None


def test_the_lease_keys_share_a_slot_and_guards_have_their_own() -> None:
    holder, seen = lease_keys("products")
    assert slot_of(holder) == slot_of(seen)
    assert [slot_of(guard_key("products", slot)) for slot in (0, 77, SLOTS - 1)] == [0, 77, SLOTS - 1]


def _writes(keys: list[str]) -> list[Write]:
    return [Write(key, "del", 1) for key in keys]


def test_one_slot_calls_hold_one_slot_each_and_cover_every_write_once() -> None:
    writes = _writes([f"doc:{n}" for n in range(300)] + [f"doc:{{same}}:{n}" for n in range(250)])
    calls = plan_calls([w.key for w in writes], one_slot=True)
    assert all(len(call) == 1 for call in calls)
    assert all(len(positions) <= CALL_SIZE for call in calls for _, positions in call)
    assert all(slot_of(writes[p].key) == slot for call in calls for slot, ps in call for p in ps)
    assert sorted(p for call in calls for _, ps in call for p in ps) == list(range(len(writes)))
    same = [ps for call in calls for slot, ps in call if slot == slot_of("{same}")]
    assert [len(ps) for ps in same] == [100, 100, 50]


def test_calls_that_may_span_slots_hold_call_size_documents() -> None:
    writes = _writes([f"doc:{n}" for n in range(250)])
    calls = plan_calls([w.key for w in writes], one_slot=False)
    assert [sum(len(ps) for _, ps in call) for call in calls] == [100, 100, 50]
    assert sorted(p for call in calls for _, ps in call for p in ps) == list(range(250))
