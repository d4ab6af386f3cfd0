"""Bad input to the local-stack launcher is refused before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_queue_names_that_are_not_names_are_refused_before_anything_starts(tmp_path: Path) -> None:
    from automation.devstack.stack import LocalStack
    from automation.errors import StackError

    with pytest.raises(StackError, match=r"--queues: \['../x'\] are not queue names"):
        LocalStack(tmp_path / "data").up(queues=["../x"], agents=False)
    assert not (tmp_path / "data").exists()
