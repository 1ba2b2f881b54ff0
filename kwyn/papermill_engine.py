"""papermill engine `kwyn` (dvc.yaml: `papermill --engine kwyn ...`): papermill's own nbclient engine,
except that the kernel is stopped as soon as the last cell has run.

papermill asks the kernel to exit and waits for it; a kernel that has imported torch then spends
about 2 s tearing its interpreter down (Python's module teardown, not our code; measured by
benchmarks/stage_overheads.py), and the default grid has 63 stages. By then every cell has finished and its files are
closed and its outputs received, so nothing is lost by stopping the kernel at once (nbclient's
shutdown_kernel="immediate": SIGKILL to the kernel's process group).
"""
from __future__ import annotations

from papermill.engines import NBClientEngine


class ImmediateShutdownEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        return super().execute_managed_notebook(nb_man, kernel_name, shutdown_kernel="immediate", **kwargs)
