"""A PyTorch Lightning callback that checkpoints when gpucloud gives a preemption notice.

``Trainer(callbacks=[gpucloud.lightning.CheckpointOnNotice("/mnt/ckpt")])``: when the notice
comes, the callback saves a checkpoint at the end of the current batch, reports it (so a managed
job's next attempt gets it as ``GPUCLOUD_RESUME_FROM``) and asks the trainer to stop. Lightning is
optional: without it the class still has the same hooks, for any trainer that calls them.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from . import workload

try:  # pragma: no cover - depends on what is installed
    from lightning.pytorch.callbacks import Callback as _Base  # type: ignore
except ImportError:  # pragma: no cover
    try:
        from pytorch_lightning.callbacks import Callback as _Base  # type: ignore
    except ImportError:
        _Base = object  # type: ignore


class CheckpointOnNotice(_Base):  # type: ignore[misc]
    def __init__(self, dirpath: Optional[str] = None, watch: bool = True):
        super().__init__()
        self.dirpath = dirpath or os.environ.get("GPUCLOUD_CHECKPOINT_DIR") or "."
        self.watch = watch
        self.notice: Optional[workload.Notice] = None
        self.saved: Optional[str] = None
        self._watcher: Optional[workload.PreemptionWatcher] = None

    def _noticed(self, n: workload.Notice) -> None:
        self.notice = n

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.watch and os.environ.get("GPUCLOUD_METADATA_URL"):
            self._watcher = workload.watch_preemption(self._noticed)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.notice is None or self.saved is not None:
            return
        step = getattr(trainer, "global_step", batch_idx)
        path = os.path.join(self.dirpath, f"preempted-step-{step}.ckpt")
        trainer.save_checkpoint(path)
        self.saved = path
        if os.environ.get("GPUCLOUD_METADATA_URL"):
            workload.report_checkpoint(path)
        trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._watcher is not None:
            self._watcher.stop()
