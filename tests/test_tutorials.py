"""Every tutorial runs top to bottom in its small mode (``NEURODATA_TUTORIAL_SMALL=1``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.md"))


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    notebook = jupytext.read(path)
    code = "\n\n".join(
        cell.source for cell in notebook.cells
        if cell.cell_type == "code" and not cell.source.lstrip().startswith(("%", "!"))
    )
    script = tmp_path / f"{path.stem}.py"
    script.write_text(code)
    env = {**os.environ, "NEURODATA_TUTORIAL_SMALL": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
