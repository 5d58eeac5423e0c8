"""The output folder of a resumable experiment pipeline (``scripts/nas_*_experiments.py``).

JSON files are written atomically (a stage interrupted mid-write leaves the previous file), and
``timings.json`` keeps the wall time of every stage, merged with what other workers sharing the folder
have recorded since this one started.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from shiftadd.utils import atomic_write_json


class PipelineFolder:
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: Dict[str, float] = self._load("timings.json") or {}

    def _load(self, name: str) -> Optional[Any]:
        path = self.out / name
        return json.loads(path.read_text()) if path.is_file() else None

    def _save(self, name: str, data: Any) -> None:
        atomic_write_json(self.out / name, data)

    def _timed(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage``'s wall time (the other stages as ``timings.json`` has them now)."""
        self.timings = {**(self._load("timings.json") or {}), **self.timings}
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self._save("timings.json", self.timings)
