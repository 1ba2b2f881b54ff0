"""papermill engine `kwyn` (dvc.yaml: `papermill --engine kwyn ...`): papermill's own nbclient engine,
except that the kernel is stopped as soon as the last cell has run, its channels are encrypted and its
progress bars are text.

papermill asks the kernel to exit and waits for it; a kernel that has imported torch then spends
about 2 s tearing its interpreter down (Python's module teardown, not our code; measured by
benchmarks/stage_overheads.py), and the default grid has 98 notebook stages. By then every cell has finished and its files are
closed and its outputs received, so nothing is lost by stopping the kernel at once (nbclient's
shutdown_kernel="immediate": SIGKILL to the kernel's process group).

A kernel reached over TCP without CurveZMQ keys logs `[IPKernelApp] WARNING | Kernel is running over TCP
without encryption...` at every start, into every stage's log. StageKernelManager has jupyter_client provision
CurveZMQ keys (transport_encryption "auto") for the kernels whose kernelspec declares support (ipykernel >= 7.4:
python3 and the `kwyn` kernel of `make lab`), which is what the warning asks for; others start as before.
It also starts the kernel with KWYN_PROGRESS=text, so that kwyn's progress bars are text there
(kwyn.io.tqdm): `--log-output` shows them advance, and the executed notebook keeps their final state.
"""
from __future__ import annotations

import os

import zmq
from jupyter_client import AsyncKernelManager
from papermill.engines import NBClientEngine
from traitlets import default

from kwyn.io import PROGRESS_ENV


class StageKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, CurveZMQ-encrypted where pyzmq can, the kernel's bars in text."""

    @default("transport_encryption")
    def _auto_encryption(self) -> str:
        return "auto" if zmq.has("curve") else "disabled"

    async def start_kernel(self, **kw):
        kw["env"] = {**(kw.get("env") or os.environ), PROGRESS_ENV: "text"}
        return await super().start_kernel(**kw)


class ImmediateShutdownEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        kwargs.setdefault("kernel_manager_class", StageKernelManager)
        return super().execute_managed_notebook(nb_man, kernel_name, shutdown_kernel="immediate", **kwargs)
