"""Run caching: a run whose result file exists is finished and is never trained again.

The result file is written last and atomically (a temporary file renamed over it), so its
presence means the run completed; a run killed before that point resumes from its checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import write_json

RESULT = "result.json"


def finished(run_dir: Path) -> dict | None:
    """The stored result of a finished run, or None."""
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def store(run_dir: Path, result: dict) -> dict:
    write_json(Path(run_dir) / RESULT, result)
    return result
