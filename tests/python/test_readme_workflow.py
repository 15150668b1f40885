"""The README's workflow example, run as written (only the server address and key are this
test's): the block between the `readme-workflow-example` marker and the end of its code
fence is executed against a real one-node intentd."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from conftest import REPO, Server

MARKER = "<!-- readme-workflow-example -->"


def example() -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(MARKER, 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    return code


def test_the_readme_workflow_example_runs_as_written(server: Server) -> None:
    code = example().replace("http://127.0.0.1:8080", server.base_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"KEY": server.admin_key})
    lines = out.getvalue().splitlines()
    assert lines[0] == "intent.completed", lines
    assert lines[1] == str([("check", "succeeded"), ("approve", "succeeded"),
                            ("cool_off", "succeeded"), ("tell", "succeeded")]), lines
