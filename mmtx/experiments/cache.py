"""Run caching: a run whose result file exists is finished and is never trained again.

The result file is written last and atomically (a temporary file renamed over it), so its
presence means the run completed; a run killed before that point resumes from its checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULT = "result.json"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically and durably: a crash, even of the machine, never leaves half a
    file (the data reaches the disk before the rename makes it visible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def finished(run_dir: Path) -> dict | None:
    """The stored result of a finished run, or None."""
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def store(run_dir: Path, result: dict) -> dict:
    write_json(Path(run_dir) / RESULT, result)
    return result
