"""Batches the platform accepts whole: ≤ 40,000 contacts, under 4 MB, ≤ 500 ids."""

from __future__ import annotations

from stripesync.clients.constant_contact import (
    MAX_IMPORT_BYTES,
    MAX_IMPORT_CONTACTS,
    encode_import_body,
)
from stripesync.sync.batching import ImportBatcher, import_batches, membership_batches


def test_import_batches_hold_at_most_40000_contacts() -> None:
    items = [(i, ["l1"], {"email": f"c{i}@x.io"}) for i in range(100_000)]
    batches = import_batches(items)
    assert [len(b.rows) for b in batches] == [MAX_IMPORT_CONTACTS, MAX_IMPORT_CONTACTS, 20_000]
    assert sorted(k for b in batches for k in b.keys) == list(range(100_000))


def test_import_batches_stay_under_4_mb_to_the_byte() -> None:
    row = {"email": "someone@example.com", "street": "s" * 500}
    items = [(i, ["l1", "l2"], row) for i in range(20_000)]
    batches = import_batches(items)
    assert len(batches) > 1
    for batch in batches:
        encoded = encode_import_body(batch.rows, batch.list_ids)
        assert len(encoded) == batch.size
        assert len(encoded) < MAX_IMPORT_BYTES
    # Full: one more row would not have fitted.
    first = batches[0]
    assert len(encode_import_body([*first.rows, row], first.list_ids)) >= MAX_IMPORT_BYTES


def test_import_batches_group_identical_list_sets_whatever_the_order() -> None:
    items = [
        (1, ["b", "a"], {"email": "1@x.io"}),
        (2, ["a", "b"], {"email": "2@x.io"}),
        (3, ["a"], {"email": "3@x.io"}),
    ]
    batches = {b.list_ids: b.keys for b in import_batches(items)}
    assert batches == {("a", "b"): [1, 2], ("a",): [3]}


def test_rows_added_in_groups_are_cut_exactly_where_one_by_one_would_cut_them() -> None:
    # Names with quotes, backslashes and non-ASCII letters: their encoded size is not their
    # length. Short rows first (batches fill to the count), then long ones (to the byte).
    rows = [
        {"email": f"p{n}@x.io", "first_name": 'Zoë "Q" \\ Ōno' * (n // 1_500 * 9 + n % 2)}
        for n in range(3_000)
    ]
    one_by_one = ImportBatcher[int](max_contacts=700, max_bytes=40_000)
    in_groups = ImportBatcher[int](max_contacts=700, max_bytes=40_000)

    expected = [b for n, row in enumerate(rows) for b in one_by_one.add(n, ["l1"], row)]
    expected += one_by_one.flush()
    got = []
    for start in range(0, len(rows), 250):
        got += in_groups.add_many(
            list(range(start, start + 250)), ["l1"], rows[start : start + 250]
        )
    got += in_groups.flush()

    assert [(b.keys, b.size) for b in got] == [(b.keys, b.size) for b in expected]
    assert len(got[0].rows) == 700 and len(got[-2].rows) < 700  # both limits were met
    for batch in got:
        assert len(encode_import_body(batch.rows, batch.list_ids)) == batch.size < 40_000


def test_membership_batches_hold_at_most_500_ids() -> None:
    pairs = [(f"id{i}", ["x"]) for i in range(1_201)] + [("other", ["y"])]
    batches = membership_batches(pairs)
    assert [(lists, len(ids)) for lists, ids in batches] == [
        (("x",), 500),
        (("x",), 500),
        (("x",), 201),
        (("y",), 1),
    ]


def test_flush_answers_every_open_batch_in_the_order_their_list_sets_appeared() -> None:
    batcher = ImportBatcher[int]()
    batcher.add_many([1, 2], ["b", "a"], [{"email": "1@x.example"}, {"email": "2@x.example"}])
    batcher.add_many([3], ["c"], [{"email": "3@x.example"}])
    batcher.add_many([4], ["a", "b"], [{"email": "4@x.example"}])

    done = batcher.flush()
    assert [(b.list_ids, b.keys) for b in done] == [(("a", "b"), [1, 2, 4]), (("c",), [3])]
    assert batcher.flush() == []
