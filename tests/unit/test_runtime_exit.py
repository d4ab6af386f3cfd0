"""How a core script's process ends: exit handlers run, the interpreter's teardown does not."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_exit_now_runs_the_exit_handlers_and_skips_the_teardown() -> None:
    script = textwrap.dedent("""
        import atexit, sys
        from automation.scripts.runtime import _exit_now

        class Finalized:
            def __del__(self):
                print("teardown ran", flush=True)

        kept = Finalized()  # a module global: finalized only by the interpreter's teardown
        atexit.register(lambda: print("exit handler ran", flush=True))
        print("buffered line", end="")  # stdout is flushed before the process ends
        _exit_now(3)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert "buffered line" in res.stdout and "exit handler ran" in res.stdout
    assert "teardown ran" not in res.stdout
