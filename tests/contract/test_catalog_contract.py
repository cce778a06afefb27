"""The catalog contract, run against every catalog backend."""

import sqlite3
from typing import Any

import anyio
import pytest

from mlhub_mcp.catalog import Catalog
from mlhub_mcp.errors import Conflict, InvalidInput

pytestmark = pytest.mark.anyio


def model_id(index: int) -> str:
    """Return an id in the catalog's format (24 hex digits) that sorts by ``index``."""
    return f"{index:024x}"


def model(index: int, **fields: Any) -> dict[str, Any]:
    """Return a model entry whose id sorts by ``index``."""
    return {
        "id": model_id(index),
        "name": f"model-{index}",
        "version": 1,
        "artifact_key": None,
        **fields,
    }


async def insert_models(catalog: Catalog, count: int, **fields: Any) -> list[str]:
    ids = []
    for index in range(count):
        entry = await catalog.insert("models", model(index, **fields))
        ids.append(entry["id"])

    return ids


async def test_insert_then_get(catalog: Catalog) -> None:
    entry = model(1, tags=["a", "b"], metrics={"accuracy": 0.9})

    returned = await catalog.insert("models", entry)
    stored = await catalog.get("models", model_id(1))

    assert returned == entry
    assert stored == entry


async def test_get_missing_entry(catalog: Catalog) -> None:
    assert await catalog.get("models", "nope") is None


async def test_duplicate_unique_key_conflicts(catalog: Catalog) -> None:
    await catalog.insert("models", model(1, name="iris", version=3))

    with pytest.raises(Conflict) as caught:
        await catalog.insert("models", model(2, name="iris", version=3))

    assert str(caught.value) == "model 'iris' version 3 already exists"
    assert await catalog.count("models") == 1


@pytest.mark.parametrize(
    ("collection", "message"),
    [
        ("datasets", "dataset 'digits' already exists"),
        ("deployments", "deployment 'digits' already exists"),
    ],
)
async def test_duplicate_name_message(catalog: Catalog, collection: str, message: str) -> None:
    await catalog.insert(collection, {"id": model_id(1), "name": "digits"})

    with pytest.raises(Conflict) as caught:
        await catalog.insert(collection, {"id": model_id(2), "name": "digits"})

    assert str(caught.value) == message


async def test_same_name_other_version_is_allowed(catalog: Catalog) -> None:
    await catalog.insert("models", model(1, name="iris", version=1))
    await catalog.insert("models", model(2, name="iris", version=2))

    assert await catalog.count("models", {"name": "iris"}) == 2


async def test_duplicate_id_conflicts(catalog: Catalog) -> None:
    await catalog.insert("datasets", {"id": "d1", "name": "digits"})

    with pytest.raises(Conflict) as caught:
        await catalog.insert("datasets", {"id": "d1", "name": "other"})

    stored = await catalog.get("datasets", "d1")
    assert str(caught.value) == "dataset with id 'd1' already exists"
    assert stored is not None
    assert stored["name"] == "digits"


async def test_filters_match_equal_values(catalog: Catalog) -> None:
    await insert_models(catalog, 6)
    await catalog.update("models", model_id(2), {"artifact_key": "sha256/" + "a" * 64})

    by_name = await catalog.find("models", {"name": "model-3"})
    by_key = await catalog.find("models", {"artifact_key": "sha256/" + "a" * 64})
    by_two = await catalog.find("models", {"name": "model-3", "version": 2})

    assert [e["id"] for e in by_name.items] == [model_id(3)]
    assert [e["id"] for e in by_key.items] == [model_id(2)]
    assert by_two.items == []


async def test_list_filter_matches_any_item(catalog: Catalog) -> None:
    await insert_models(catalog, 6)

    page = await catalog.find("models", {"name": ["model-1", "model-4", "model-9"]})
    empty = await catalog.find("models", {"name": []})

    assert [e["id"] for e in page.items] == [model_id(1), model_id(4)]
    assert empty.items == []
    assert await catalog.count("models", {"name": []}) == 0


async def test_none_filter_matches_null_and_missing(catalog: Catalog) -> None:
    await catalog.insert("executions", {"id": "e1", "status": "done", "plot_key": None})
    await catalog.insert("executions", {"id": "e2", "status": "done"})
    await catalog.insert("executions", {"id": "e3", "status": "done", "plot_key": "k"})

    page = await catalog.find("executions", {"plot_key": None})

    assert [e["id"] for e in page.items] == ["e1", "e2"]


async def test_operator_as_filter_value_matches_nothing(catalog: Catalog) -> None:
    """A dict value is data, so an operator in it cannot widen the match.

    SQLite cannot bind a dict and raises; MongoDB compares it with ``$eq``.
    """
    await insert_models(catalog, 3)

    try:
        count = await catalog.count("models", {"name": {"$ne": "nothing"}})
    except sqlite3.ProgrammingError:
        return

    assert count == 0


async def test_invalid_filter_field_rejected(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="invalid filter field"):
        await catalog.find("models", {"$where": "1"})

    with pytest.raises(ValueError, match="invalid filter field"):
        await catalog.count("models", {"meta.owner": "x"})


async def test_unknown_collection_rejected(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="unknown collection"):
        await catalog.get("users", "x")


@pytest.mark.parametrize("newest_first", [False, True])
async def test_pagination_visits_each_entry_once(catalog: Catalog, newest_first: bool) -> None:
    ids = await insert_models(catalog, 23)
    expected = sorted(ids, reverse=newest_first)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await catalog.find("models", limit=5, cursor=cursor, newest_first=newest_first)
        seen.extend(e["id"] for e in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == expected
    assert pages == 5


async def test_pagination_with_filter(catalog: Catalog) -> None:
    await insert_models(catalog, 10)
    names = [f"model-{i}" for i in range(0, 10, 2)]

    first = await catalog.find("models", {"name": names}, limit=3)
    second = await catalog.find("models", {"name": names}, limit=3, cursor=first.next_cursor)

    assert [e["id"] for e in first.items] == [model_id(0), model_id(2), model_id(4)]
    assert [e["id"] for e in second.items] == [model_id(6), model_id(8)]
    assert second.next_cursor is None


@pytest.mark.parametrize("cursor", ["garbage", "M" * 24, "0" * 23, "0" * 25, "0" * 23 + "\n"])
async def test_invalid_cursor_is_rejected(catalog: Catalog, cursor: str) -> None:
    await insert_models(catalog, 3)

    with pytest.raises(InvalidInput) as caught:
        await catalog.find("models", limit=2, cursor=cursor)

    assert f"invalid cursor {cursor!r}" in str(caught.value)
    assert "pass the next_cursor of the previous page" in str(caught.value)


async def test_exact_page_has_no_next_cursor(catalog: Catalog) -> None:
    await insert_models(catalog, 5)

    page = await catalog.find("models", limit=5)

    assert len(page.items) == 5
    assert page.next_cursor is None


async def test_find_all_and_find_one(catalog: Catalog) -> None:
    await insert_models(catalog, 7)

    everything = await catalog.find_all("models")
    found = await catalog.find_one("models", {"name": "model-5"})
    missing = await catalog.find_one("models", {"name": "absent"})

    assert [e["id"] for e in everything] == [model_id(i) for i in range(7)]
    assert found is not None
    assert found["id"] == model_id(5)
    assert missing is None


async def test_count_with_and_without_filters(catalog: Catalog) -> None:
    await insert_models(catalog, 4)
    await catalog.insert("executions", {"id": "e1", "status": "queued"})
    await catalog.insert("executions", {"id": "e2", "status": "running"})
    await catalog.insert("executions", {"id": "e3", "status": "queued"})

    assert await catalog.count("models") == 4
    assert await catalog.count("executions", {"status": "queued"}) == 2
    assert await catalog.count("executions", {"status": ["queued", "running"]}) == 3
    assert await catalog.count("audit") == 0


async def test_update_sets_fields(catalog: Catalog) -> None:
    await catalog.insert("executions", {"id": "e1", "status": "queued", "progress": 0})

    updated = await catalog.update("executions", "e1", {"progress": 50, "note": None})
    stored = await catalog.get("executions", "e1")

    assert updated == {"id": "e1", "status": "queued", "progress": 50, "note": None}
    assert stored == updated


async def test_update_onto_taken_unique_key(catalog: Catalog) -> None:
    """An update cannot give an entry another entry's unique key.

    The embedded catalog raises Conflict. NOTE: nx-27017 0.8.1 returns no
    document for such a findAndModify instead of error code 11000, so the
    MongoDB catalog returns None against it. A real MongoDB reports code
    11000, which the catalog turns into Conflict; that path is not run here.
    """
    await catalog.insert("datasets", {"id": "d1", "name": "digits"})
    await catalog.insert("datasets", {"id": "d2", "name": "iris"})

    try:
        result = await catalog.update("datasets", "d2", {"name": "digits"})
    except Conflict as exc:
        assert str(exc) == "dataset 'digits' already exists"
        result = None

    stored = await catalog.get("datasets", "d2")
    assert result is None
    assert stored is not None
    assert stored["name"] == "iris"


async def test_update_missing_entry_returns_none(catalog: Catalog) -> None:
    assert await catalog.update("executions", "absent", {"status": "done"}) is None


async def test_update_with_stale_expectation_changes_nothing(catalog: Catalog) -> None:
    await catalog.insert("executions", {"id": "e1", "status": "running"})

    result = await catalog.update(
        "executions", "e1", {"status": "cancelled"}, expected={"status": ["queued"]}
    )
    stored = await catalog.get("executions", "e1")

    assert result is None
    assert stored is not None
    assert stored["status"] == "running"


async def test_concurrent_claims_have_one_winner(catalog: Catalog) -> None:
    await catalog.insert("executions", {"id": "e1", "status": "queued", "worker": None})
    winners: list[int] = []

    async def claim(worker: int) -> None:
        claimed = await catalog.update(
            "executions",
            "e1",
            {"status": "running", "worker": worker},
            expected={"status": ["queued"]},
        )
        if claimed is not None:
            winners.append(worker)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for worker in range(20):
                group.start_soon(claim, worker)

    stored = await catalog.get("executions", "e1")
    assert len(winners) == 1
    assert stored is not None
    assert stored["status"] == "running"
    assert stored["worker"] == winners[0]


async def test_delete_removes_entry(catalog: Catalog) -> None:
    await insert_models(catalog, 2)

    first = await catalog.delete("models", model_id(0))
    again = await catalog.delete("models", model_id(0))

    assert first is True
    assert again is False
    assert await catalog.get("models", model_id(0)) is None
    assert await catalog.count("models") == 1


async def test_deleted_unique_key_can_be_reused(catalog: Catalog) -> None:
    await catalog.insert("datasets", {"id": "d1", "name": "digits"})
    await catalog.delete("datasets", "d1")

    await catalog.insert("datasets", {"id": "d2", "name": "digits"})

    assert await catalog.count("datasets", {"name": "digits"}) == 1


async def test_ping_describes_backend(catalog: Catalog) -> None:
    description = await catalog.ping()

    assert "SQLite" in description or "MongoDB" in description


async def test_insert_many_writes_every_entry(catalog: Catalog) -> None:
    docs = [{"id": model_id(i), "server": "model", "operation": "list_models"} for i in range(50)]

    inserted = await catalog.insert_many("audit", docs)

    assert inserted == 50
    assert await catalog.count("audit") == 50
    assert await catalog.get("audit", model_id(7)) == docs[7]


async def test_insert_many_with_taken_id_is_conflict(catalog: Catalog) -> None:
    await catalog.insert("audit", {"id": model_id(1), "server": "model"})

    with pytest.raises(Conflict):
        await catalog.insert_many(
            "audit", [{"id": model_id(2), "server": "data"}, {"id": model_id(1), "server": "x"}]
        )

    assert (await catalog.get("audit", model_id(1)))["server"] == "model"
