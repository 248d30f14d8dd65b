"""What a run reports: a JSONL log, a progress bar, and TensorBoard events when installed.
Only rank 0 builds a RunLog; the others get `RunLog(None)`, which does nothing.

    log = RunLog(run_dir, total=1000, start=0, unit="img")
    log.step(10, {"loss": 0.3, "lr": 1e-4}, samples=64)
    log.close()
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLog:
    """Appends one JSON object per record to RUN_DIR/log.jsonl (kept across resumes), shows a
    tqdm bar with the loss and the throughput, and mirrors scalars to TensorBoard
    (RUN_DIR/tensorboard) when the `tensorboard` package is importable."""

    def __init__(self, run_dir: str | Path | None, *, total: int = 0, start: int = 0, unit: str = "img",
                 progress: bool = True):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.unit, self.history = unit, []
        self._bar = self._tb = self._file = None
        self._t = time.perf_counter()
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "log.jsonl", "a")
        from vqfast.progress import progress_bar
        self._bar = progress_bar(total, "train", progress, unit="step")
        self._bar.update(start)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        """One record to the JSONL file (and its numbers to TensorBoard under the record's kind)."""
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, record["step"])

    def step(self, step: int, values: dict, *, samples: int, steps: int = 1) -> None:
        """A training record: values (loss terms, lr, ...) at `step`, with the throughput of the
        last `steps` steps that processed `samples` items in all (over every rank)."""
        now = time.perf_counter()
        rate = samples / max(now - self._t, 1e-9)
        self._t = now
        record = {"kind": "train", "step": step, **values, f"{self.unit}_per_s": rate, "time": time.time()}
        self.history.append(record)
        self.write(record)
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix_str(f"loss {values.get('loss', float('nan')):.4f} {rate:.1f} {self.unit}/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_log(run_dir: str | Path, kind: str | None = "train") -> list[dict]:
    """The records of RUN_DIR/log.jsonl (of one kind; None: all)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
