"""Multi-process launch: `--num-processes N` re-launches the command under the DeepSpeed launcher, and each rank
is set up to start and end cleanly.

accelerate 1.15 picks no distributed backend when CUDA is absent, so under `deepspeed --num_gpus N` on CPU
each rank believes it is alone. `prepare_rank` makes it choose gloo / MULTI_CPU there. It also removes, at exit,
the 64 MiB /dev/shm segment that DeepSpeed's CPU all-reduce creates per rank and never unlinks
(ops/csrc/cpu/comm/shm.cpp): without that, every multi-process CPU run left 128 MiB of RAM behind until reboot.
And it destroys the process group at exit, while the interpreter is still whole: neither transformers nor
DeepSpeed does, and gloo's worker threads then sometimes abort the rank after its work is done ("terminate
called without an active exception", exit 250; pytorch/pytorch#190489), which fails the whole launch. That
still happens now and then on a loaded machine, so `relaunch` reads the launch by its result: a launch that
saved its run (run.json written) succeeded, whatever the exit code of a rank's teardown.
Outside a launcher (no LOCAL_RANK) it changes nothing.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from prefopt.config import write_config
from prefopt.errors import PrefoptError


def prepare_rank() -> None:
    import torch

    if int(os.environ.get("LOCAL_RANK", -1)) == -1:
        return
    atexit.register(_destroy_process_group)
    if torch.cuda.is_available():
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return backend or "gloo", DistributedType.MULTI_CPU

    PartialState._prepare_backend = _prepare_backend
    atexit.register(Path(shm_buffer()).unlink, missing_ok=True)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shm_buffer() -> str:
    """This rank's DeepSpeed CPU all-reduce segment, named as shm.cpp names it (uid, master addr and port, rank)."""
    env = os.environ
    return (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR')}_{env.get('MASTER_PORT')}_"
            f"{env.get('RANK')}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch(cfg, stage: str) -> bool:
    """Run `prefopt STAGE` in cfg.num_processes processes under the DeepSpeed launcher; False when this process
    should train itself (one process asked for, or already launched)."""
    if cfg.num_processes <= 1 or "LOCAL_RANK" in os.environ:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / f"{stage}.yaml"
        write_config(cfg, cfg_file)  # the ranks see LOCAL_RANK and train, not relaunch
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cfg.num_processes),
               "--master_port", str(_free_port()), "--module", "prefopt.cli", stage, "--config", str(cfg_file)]
        print("prefopt: launching", " ".join(cmd), flush=True)
        code = subprocess.run(cmd).returncode
    if code != 0 and not finished(cfg):
        raise PrefoptError(f"prefopt {stage}: a rank failed under the DeepSpeed launcher (see its output above)")
    if code != 0:  # every rank was past the last barrier of `train.finish`, after run.json was written
        print(f"prefopt {stage}: a rank exited with an error after the run was saved (exit code {code}); the run "
              f"in {cfg.output_dir} is complete", flush=True)
    return True


def finished(cfg) -> bool:
    """The run of this launch is saved: run.json, the completion marker (each run removes the one of the run
    before it when it starts), and the merged model where --merge asked for it."""
    out = Path(cfg.output_dir)
    if not (out / "run.json").is_file():
        return False
    merged = out / "merged"  # written after run.json: an older run's is older
    return not cfg.merge or (merged.is_dir() and
                             merged.stat().st_mtime >= (out / "run.json").stat().st_mtime)
