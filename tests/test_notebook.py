"""The quickstart notebook's code cells run top to bottom (without Jupyter)."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(emu, tmp_path, capsys):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict[str, object] = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec", dont_inherit=True),
                 namespace)
    out = namespace["out"]
    assert out["_status"].to_list() == ["completed"] * out.height
