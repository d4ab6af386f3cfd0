"""Where the stand-in once differed from clearml-server, driven by the real SDK: `Dataset.create`
without an explicit version (a dotted projection of an empty parent), and projects created by many
callers at once (get-or-create must give every caller the one project)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testing.stacks import StackHandle, admin_client

pytestmark = pytest.mark.integration


def test_a_dataset_round_trips_through_the_sdk(local_stack: StackHandle, tmp_path: Path) -> None:
    from clearml import Dataset

    source = tmp_path / "data"
    source.mkdir()
    (source / "train.jsonl").write_text('{"text": "hello"}\n')
    (source / "notes.md").write_text("# notes\n")
    dataset: Any = Dataset.create(dataset_name="fidelity-ds", dataset_project="fidelity-tests")  # no version given
    dataset.add_files(str(source))
    dataset.upload()
    dataset.finalize()
    assert dataset.version  # the SDK picked one, reading runtime.version of `runtime: {}`

    again: Any = Dataset.get(dataset_id=dataset.id)
    copy = Path(again.get_local_copy())
    assert (copy / "train.jsonl").read_text() == '{"text": "hello"}\n'
    assert sorted(again.list_files()) == ["notes.md", "train.jsonl"]


def test_many_callers_get_or_create_one_project(local_stack: StackHandle) -> None:
    """Eight clients (each with its own cache and lock, as eight processes would be) ask for the
    same project, and four for a child whose parent it is, at the same moment: one project per
    name and the same id for every caller. The stand-in itself stays as strict as clearml-server
    (a second create of a name is refused), so the client's get-or-create is what closes the race."""
    import asyncio

    from automation.clearml.client import ApiCallError, ClearMLBackend

    names = ["fidelity-race", "fidelity-race/child"]

    async def race() -> dict[str, list[str]]:
        clients = [ClearMLBackend() for _ in range(8)]
        try:
            ids = await asyncio.gather(*(c.project_id(names[i % 2]) for i, c in enumerate(clients)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        got: dict[str, list[str]] = {n: [] for n in names}
        for i, project_id in enumerate(ids):
            got[names[i % 2]].append(project_id)
        return got

    got = asyncio.run(race())
    api = admin_client(local_stack.env)
    for name in names:
        listed = [p for p in api.call("projects.get_all", {"name": f"^{name}$", "search_hidden": True})["projects"]
                  if p["name"] == name]
        assert len(listed) == 1, (name, listed)
        assert set(got[name]) == {listed[0]["id"]}, (name, got[name])

    async def duplicate() -> None:
        client = ClearMLBackend()
        try:
            await client.call("projects.create", {"name": names[0]})
        finally:
            await client.aclose()

    with pytest.raises(ApiCallError, match="already exists"):
        asyncio.run(duplicate())
