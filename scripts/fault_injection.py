"""Fault injection: kill a short training run with SIGKILL at chosen points, resume it, and check the result.

    .venv/bin/python scripts/fault_injection.py                 # every case (about 8 minutes on 2 cores)
    .venv/bin/python scripts/fault_injection.py --cases fast    # the slice `make test` runs (2-epoch runs)
    .venv/bin/python scripts/fault_injection.py --cases ddp     # the 2-process torchrun cases only
    .venv/bin/python scripts/fault_injection.py --list          # the cases and their kill points

The run is the training bundle (``bundle/configs/train.json`` + ``configs/tiny_cpu.json``) at 64 x 64 on a
48-study phantom: 3 epochs (2 for ``--cases fast``) of 4 iterations of batch 8, validation every epoch, expert
batches drawn with p = 0.5 (``curriculum#mode constant``). Every run executes in a child process forked from
this one, so the library is imported once; each child trains with one thread, which makes the float results of
all runs comparable bit for bit. A case kills one child at its kill point and resumes the way a user would:
``--resume_from`` the newest checkpoint left (``final.pt`` if present, else the highest
``checkpoint_epoch=N.pt``), from scratch if there is none. Some cases kill the resumed run again.

The kill points are installed in the child only (a handler on the trainer or evaluator; wrappers around
``torch.save``, ``os.replace``, ``ExpertStream`` and the dataset's item loading); the library has no kill
switch. A case passes when: the child died at its kill point (SIGKILL, or for a killed DataLoader worker the
error the trainer raises), every file under a checkpoint name loads (``weights_only``, digest verified) after
each kill, the resumed run's ``final.pt`` and ``model.pt`` equal the uninterrupted run's in every tensor and
value, and no temporary file is left. Files the uninterrupted run would have removed (a resumed run keeps the
interval checkpoints written before the kill, as ``n_saved`` counts per process) are listed, not failed.

The ``ddp-*`` cases run the same bundle as a user runs it on several processes: ``torchrun --standalone
--nnodes 1 --nproc_per_node 2 -m monai.bundle run`` with ``bundle/configs/multi_gpu_train.json`` (gloo on CPU,
``batch_size`` 4 per process: the same global batch of 8), each run a fresh ``torchrun``. The kill point is
armed in rank 1 only, through a ``sitecustomize`` put on the ranks' ``PYTHONPATH`` for the killed run
(``RANK_HOOK``), so the command is unchanged; rank 0, which writes every checkpoint, is never armed. Such a
case also passes only when torchrun names rank 1 (SIGKILL) as its first failure, exits non-zero within
``DETECTION_LIMIT_S`` of the kill, and leaves no rank running; the resumed run (the same command plus
``--resume_from``) is compared with an uninterrupted 2-process run.
Prints one Markdown table row per case; exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "bundle/configs/train.json", ROOT / "configs/tiny_cpu.json"]
SETTINGS = {"image_size": 64, "batch_size": 8, "val_interval": 1, "generate_phantom": False,
            "curriculum#mode": "constant", "log_every": 1000, "num_workers": 0}
EPOCHS, FAST_EPOCHS = 3, 2  # of 4 iterations each with these settings
RUN = "eclip_tiny"
# the 2-process runs: torchrun, gloo on CPU; batch_size is per process, so the global batch (and the 4
# iterations an epoch) are those of the single-process runs
DDP_CONFIGS = [ROOT / "bundle/configs/train.json", ROOT / "bundle/configs/multi_gpu_train.json",
               ROOT / "configs/tiny_cpu.json"]
DDP_SETTINGS = {**SETTINGS, "batch_size": 4}
NPROC = 2
# torchrun's agent polls its workers every 0.1 s (--monitor-interval), then sends the others SIGTERM and,
# 30 s later, SIGKILL (LocalElasticAgent._shutdown): a killed rank stops the run within about 30.1 s plus
# the agent's own exit. A case whose torchrun exits later than DETECTION_LIMIT_S after the kill fails.
DETECTION_LIMIT_S = 45.0
TORCHRUN_LIMIT_S = 900  # a torchrun run still going after this is killed (it and every process under it)


@dataclass(frozen=True)
class Case:
    """A kill point per run (``kills``, syntax in ``_install``), each run after the first resuming the one
    before; ``where`` says it in words; ``workers`` is ``num_workers`` of every run of the case. ``rank``:
    None for a single-process run (a forked child); else every run of the case is a 2-process ``torchrun``
    and the kill point is armed in that rank only."""

    name: str
    where: str
    kills: tuple[str, ...]
    workers: int = 0
    rank: int | None = None


CASES = {c.name: c for c in (
    Case("first-step", "iteration 1 starts, before any checkpoint (restart from scratch)",
         ("iteration_started:1",)),
    Case("mid-epoch-1", "after the optimiser step of iteration 2", ("iteration_completed:2",)),
    Case("validation-1", "inside validation after epoch 1", ("validation:1:1",)),
    Case("before-save-1", "epoch 1 validated, its checkpoint not yet written", ("epoch_completed:1",)),
    Case("best-write-1", "half of model.pt's temporary file written (epoch 1)", ("write_mid:model.pt:1",)),
    Case("ckpt-write-1", "half of checkpoint_epoch=1.pt's temporary file written",
         ("write_mid:checkpoint_epoch=1.pt:1",)),
    Case("ckpt-rename-1", "checkpoint_epoch=1.pt written and synced, not renamed",
         ("before_rename:checkpoint_epoch=1.pt:1",)),
    Case("ckpt-renamed-1", "checkpoint_epoch=1.pt renamed into place, before the next step",
         ("after_rename:checkpoint_epoch=1.pt:1",)),
    Case("epoch-2-start", "iteration 5 (the first of epoch 2) starts", ("iteration_started:5",)),
    Case("expert-load-1", "loading the 1st expert batch, after its first sample", ("expert_batch:1",)),
    Case("expert-load-3", "loading the 3rd expert batch, after its first sample", ("expert_batch:3",)),
    Case("mid-epoch-2", "after the optimiser step of iteration 7", ("iteration_completed:7",)),
    Case("validation-2", "inside validation after epoch 2", ("validation:2:1",)),
    Case("ckpt-write-2", "half of checkpoint_epoch=2.pt's temporary file written",
         ("write_mid:checkpoint_epoch=2.pt:1",)),
    Case("ckpt-rename-3", "checkpoint_epoch=3.pt written (epoch 1's already removed), not renamed",
         ("before_rename:checkpoint_epoch=3.pt:1",)),
    Case("final-write", "half of final.pt's temporary file written", ("write_mid:final.pt:1",)),
    Case("final-rename", "final.pt written and synced, not renamed", ("before_rename:final.pt:1",)),
    Case("final-renamed", "final.pt renamed into place, before the process exits",
         ("after_rename:final.pt:1",)),
    Case("worker-killed", "a DataLoader worker (1 per loader) killed while loading, after iteration 6",
         ("worker:6",), workers=1),
    Case("main-with-workers", "the trainer killed at iteration 10 while its worker prefetches",
         ("iteration_started:10",), workers=1),
    Case("killed-twice", "iteration 3, then the resumed run at iteration 9",
         ("iteration_completed:3", "iteration_completed:9")),
    Case("killed-on-resume", "iteration 6, then the resumed run right after loading its checkpoint",
         ("iteration_completed:6", "resume_loaded")),
    Case("killed-thrice", "writing checkpoint_epoch=2.pt, then iteration 10, then writing final.pt",
         ("before_rename:checkpoint_epoch=2.pt:1", "iteration_started:10", "write_mid:final.pt:1")),
    # 2-process torchrun (gloo, CPU); rank 1 is killed, rank 0 (which writes every checkpoint) is not
    Case("ddp-rank1-mid-epoch-2", "2 processes: rank 1 after the optimiser step of iteration 6; rank 0 "
         "blocks in its next collective", ("iteration_completed:6",), rank=1),
    Case("ddp-rank1-validation-2", "2 processes: rank 1 inside validation after epoch 2, rank 0 in it too",
         ("validation:2:1",), rank=1),
    Case("ddp-rank1-during-save-2", "2 processes: rank 1 the moment rank 0 begins to write "
         "checkpoint_epoch=2.pt; torchrun's SIGTERM reaches rank 0 inside the write",
         ("file_appears:.checkpoint_epoch=2.pt.tmp",), rank=1),
)}
FAST = ("ckpt-write-2", "validation-1", "expert-load-3")
DDP = tuple(name for name, case in CASES.items() if case.rank is not None)
SINGLE = tuple(name for name, case in CASES.items() if case.rank is None)


# ---- inside a child: the run and its kill point ------------------------------------------------------------


def _die(point: str) -> None:
    os.write(2, f"fault_injection: SIGKILL at {point}\n".encode())  # the run's log, whatever sys.stderr is
    if os.environ.get("FAULT_INJECTION_DIR"):  # a torchrun rank: when it died, to time the others' stop
        Path(os.environ["FAULT_INJECTION_DIR"], "killed_at").write_text(repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str, parser, flag: Path) -> None:
    """Arm ``point`` in this process (the child). Kill points:

    - ``iteration_started:N``, ``iteration_completed:N``, ``epoch_completed:E``: at that trainer event (an
      epoch's end after its validation, before its checkpoint);
    - ``validation:E:I``: after iteration I of the validation that follows epoch E;
    - ``expert_batch:K``: loading the K-th expert batch, once its first sample is loaded;
    - ``write_mid:NAME:K``: the K-th write of checkpoint NAME, half of its temporary file written;
      ``before_rename:NAME:K`` / ``after_rename:NAME:K``: just before / after that write's rename;
    - ``worker:N``: in a DataLoader worker, at the first sample it loads once iteration N has completed
      (``flag`` tells the workers, which are separate processes);
    - ``resume_loaded``: right after ``--resume_from`` was restored;
    - ``file_appears:NAME``: the moment NAME appears in the checkpoint folder, written by another process
      (a thread polls every millisecond; e.g. ``.checkpoint_epoch=2.pt.tmp``: rank 0 has begun that write).
    """
    from ignite.engine import Events

    from eclip_monai.data import robust
    from eclip_monai.engines import streams
    from eclip_monai.handlers import checkpoint as handler_checkpoint

    kind, *args = point.split(":")
    trainer = parser.get_parsed_content("train#trainer")
    if kind in ("iteration_started", "iteration_completed", "epoch_completed"):
        event = {"iteration_started": Events.ITERATION_STARTED, "epoch_completed": Events.EPOCH_COMPLETED,
                 "iteration_completed": Events.ITERATION_COMPLETED}[kind]
        trainer.add_event_handler(event(once=int(args[0])), lambda _: _die(point))
    elif kind == "validation":
        evaluator = parser.get_parsed_content("validate#evaluator")
        epoch, iteration = map(int, args)

        def in_validation(engine) -> None:
            if trainer.state.epoch == epoch and engine.state.iteration == iteration:
                _die(point)

        evaluator.add_event_handler(Events.ITERATION_COMPLETED, in_validation)
    elif kind in ("write_mid", "before_rename", "after_rename"):
        name, nth = args[0], int(args[1])
        seen = {"n": 0}

        def reached(target: str) -> bool:
            if Path(target).name.removeprefix(".").removesuffix(".tmp") != name:
                return False
            seen["n"] += 1
            return seen["n"] == nth

        if kind == "write_mid":
            real_save = torch.save

            def half_save(obj, f, *a, **k):
                if hasattr(f, "write") and reached(getattr(f, "name", "")):
                    buffer = io.BytesIO()
                    real_save(obj, buffer, *a, **k)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    _die(point)
                return real_save(obj, f, *a, **k)

            torch.save = half_save
        else:
            real_replace = os.replace

            def replace(src, dst, *a, **k):
                hit = reached(os.fspath(dst))
                if hit and kind == "before_rename":
                    _die(point)
                real_replace(src, dst, *a, **k)
                if hit:
                    _die(point)

            os.replace = replace
    elif kind == "expert_batch":
        nth, real_next = int(args[0]), streams.ExpertStream.__next__
        real_item = robust.SkipBadSamples.__getitem__
        state = {"batches": 0, "armed": False}

        def next_batch(self):
            state["batches"] += 1
            state["armed"] = state["batches"] == nth
            return real_next(self)

        def item(self, index):
            loaded = real_item(self, index)
            if state["armed"]:
                _die(point)
            return loaded

        streams.ExpertStream.__next__ = next_batch
        robust.SkipBadSamples.__getitem__ = item
    elif kind == "worker":
        from torch.utils.data import get_worker_info

        real_item = robust.SkipBadSamples.__getitem__

        def item(self, index):
            if get_worker_info() is not None and flag.exists():
                _die(point)
            return real_item(self, index)

        robust.SkipBadSamples.__getitem__ = item
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=int(args[0])), lambda _: flag.touch())
    elif kind == "file_appears":
        import threading

        target = Path(parser.get_parsed_content("ckpt_dir")) / args[0]

        def watch() -> None:
            while not target.exists():
                time.sleep(0.001)
            _die(point)

        threading.Thread(target=watch, name="fault_injection", daemon=True).start()
    elif kind == "resume_loaded":
        real_call = handler_checkpoint.VerifiedCheckpointLoader.__call__

        def load(self, engine):
            real_call(self, engine)
            _die(point)

        handler_checkpoint.VerifiedCheckpointLoader.__call__ = load
    else:
        raise ValueError(f"unknown kill point {point!r}")


def _train(run_dir: Path, phantom: Path, point: str | None, resume_from: Path | None, workers: int,
           epochs: int) -> None:
    from monai.bundle import ConfigWorkflow

    overrides = {**SETTINGS, "dataset_dir": str(phantom), "runs_dir": str(run_dir), "num_workers": workers,
                 "max_epochs": epochs,
                 "resume_from": str(resume_from or "")}
    workflow = ConfigWorkflow(config_file=[str(c) for c in CONFIGS], workflow_type="train", **overrides)
    workflow.initialize()
    if point is not None:
        _install(point, workflow.parser, run_dir / "kill.flag")
    workflow.run()
    workflow.finalize()


def run_child(run_dir: Path, phantom: Path, point: str | None = None, resume_from: Path | None = None,
              workers: int = 0, epochs: int = EPOCHS) -> int:
    """Train in a forked child; its exit code (negative: the signal that ended it). Output goes to run.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            log = os.open(run_dir / "run.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # a test runner may have replaced them
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            torch.set_num_threads(1)
            _train(run_dir, phantom, point, resume_from, workers, epochs)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ---- 2-process torchrun runs: the same kill points, armed in one rank -------------------------------------

# ``sitecustomize.py`` in a folder put first on the ranks' PYTHONPATH, for a killed run only: Python imports
# it at start-up, so the command stays the user's ``torchrun ... -m monai.bundle run ...``. Every rank
# records its pid; the rank named by FAULT_INJECTION_RANK loads this file and arms FAULT_INJECTION_POINT.
# torchrun's agent has no RANK in its environment.
RANK_HOOK = """import os
env = os.environ
if env.get("RANK") is not None and env.get("FAULT_INJECTION_DIR"):
    with open(os.path.join(env["FAULT_INJECTION_DIR"], "rank%s.pid" % env["RANK"]), "w") as f:
        f.write(str(os.getpid()))
    if env["RANK"] == env.get("FAULT_INJECTION_RANK"):
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("fault_injection", env["FAULT_INJECTION_HARNESS"])
        sys.modules["fault_injection"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.arm_rank(env["FAULT_INJECTION_POINT"], env["FAULT_INJECTION_DIR"])
"""


def arm_rank(point: str, run_dir: str) -> None:
    """In a torchrun rank (through ``RANK_HOOK``): arm ``point`` when the trainer starts to run, the first
    ``Engine.run`` of ``monai.bundle run``. Not earlier: building the trainer (the ``DistributedDataParallel``
    in it broadcasts rank 0's weights) out of the config's order would pair this rank's collectives with the
    other rank's ``barrier`` and hang both."""
    from ignite.engine import Engine
    from monai.bundle import ConfigWorkflow

    real_run, real_engine_run = ConfigWorkflow.run, Engine.run

    def run(workflow):
        def engine_run(engine, *args, **kwargs):
            Engine.run = real_engine_run
            _install(point, workflow.parser, Path(run_dir) / "kill.flag")  # every object is built by now
            return real_engine_run(engine, *args, **kwargs)

        Engine.run = engine_run
        return real_run(workflow)

    ConfigWorkflow.run = run


def torchrun_command(run_dir: Path, phantom: Path, epochs: int, resume_from: Path | None = None) -> list[str]:
    """``torchrun --standalone --nnodes 1 --nproc_per_node 2 -m monai.bundle run`` with the harness's settings
    (``torchrun`` is ``python -m torch.distributed.run``)."""
    overrides = {**DDP_SETTINGS, "dataset_dir": phantom, "runs_dir": run_dir, "max_epochs": epochs}
    if resume_from is not None:
        overrides["resume_from"] = resume_from
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(NPROC), "-m", "monai.bundle", "run",
               "--config_file", str([str(c) for c in DDP_CONFIGS])]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


@dataclass
class TorchrunRun:
    code: int  # torchrun's exit status (negative: the signal that ended it)
    killed_at: float | None = None  # when the armed rank killed itself (time.time())
    exited_at: float = 0.0  # when torchrun had exited
    pids: dict[int, int] = field(default_factory=dict)  # rank: pid (killed runs only)
    timed_out: bool = False

    @property
    def detection_s(self) -> float | None:
        """From the kill to torchrun's exit (every rank stopped and reaped)."""
        return None if self.killed_at is None else self.exited_at - self.killed_at


def run_torchrun(run_dir: Path, phantom: Path, epochs: int, point: str | None = None, rank: int = 1,
                 resume_from: Path | None = None) -> TorchrunRun:
    """One 2-process torchrun training run (output appended to run.log), ``point`` armed in ``rank``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("killed_at", *(f"rank{r}.pid" for r in range(NPROC))):
        (run_dir / stale).unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a harness started under torchrun must not pass its own rank on
    if point is not None:
        hook = run_dir.parent / "rank_hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(RANK_HOOK)
        env.update(PYTHONPATH=os.pathsep.join([str(hook), *filter(None, [env.get("PYTHONPATH")])]),
                   FAULT_INJECTION_DIR=str(run_dir), FAULT_INJECTION_RANK=str(rank),
                   FAULT_INJECTION_POINT=point, FAULT_INJECTION_HARNESS=str(Path(__file__).resolve()))
    command = torchrun_command(run_dir, phantom, epochs, resume_from)
    with open(run_dir / "run.log", "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code, timed_out = process.wait(timeout=TORCHRUN_LIMIT_S), False
        except subprocess.TimeoutExpired:  # the ranks run in sessions of their own: kill each by its pid
            _kill_tree(process.pid, _rank_pids(run_dir).values())
            code, timed_out = process.wait(), True
    run = TorchrunRun(code, exited_at=time.time(), timed_out=timed_out, pids=_rank_pids(run_dir))
    if (run_dir / "killed_at").is_file():
        run.killed_at = float((run_dir / "killed_at").read_text())
    return run


def _rank_pids(run_dir: Path) -> dict[int, int]:
    """rank: pid, as the ranks of a killed run recorded them (``RANK_HOOK``)."""
    files = ((r, run_dir / f"rank{r}.pid") for r in range(NPROC))
    return {r: int(f.read_text()) for r, f in files if f.is_file()}


def _kill_tree(pid: int, also: Iterable[int] = ()) -> None:
    """SIGKILL ``pid``, every process under it (with psutil, when installed) and ``also``."""
    pids = [*also]
    try:
        import psutil

        pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except (ImportError, OSError):
        pass
    for target in (*pids, pid):
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def failure_summary(log: str) -> tuple[tuple[int, int] | None, dict[int, int]]:
    """From the summary torchrun prints on failing (``ChildFailedError``): (rank, exit code) of the first
    failure it observed ("Root Cause"), and rank: exit code of every failed rank."""
    import re

    entry = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
    start = log.rfind("Failures:")
    if start < 0:
        return None, {}
    codes = {int(r): int(c) for r, c in entry.findall(log[start:])}
    first = entry.search(log[max(start, log.rfind("Root Cause")):]) if "Root Cause" in log[start:] else None
    return (int(first[1]), int(first[2])) if first else None, codes


def sigterm_sent_at(log: str) -> float | None:
    """When torchrun's agent logged sending the other ranks SIGTERM (its first such line), as time.time()."""
    import datetime
    import re

    found = re.search(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+) .*closing signal SIGTERM", log, flags=re.M)
    if not found:
        return None
    year = datetime.datetime.now().year
    return datetime.datetime.strptime(f"{year}{found[1]} {found[2]}", "%Y%m%d %H:%M:%S.%f").timestamp()


# ---- in the parent: cases and checks -----------------------------------------------------------------------


def warm_up(phantom: Path) -> None:
    """Import, once and in this process, what a run imports (configs, towers, readers, handlers), so that each
    forked child starts in about a second. Builds the network and loads one sample without touching this
    process's random state, logging configuration or any file."""
    import random

    import numpy as np
    import torch.utils.tensorboard  # noqa: F401 - imported by the runs' TensorBoard handlers
    from ignite.handlers import ProgressBar  # noqa: F401
    from monai.bundle import ConfigParser, ConfigWorkflow  # noqa: F401

    import eclip_monai.engines.evaluator  # noqa: F401
    import eclip_monai.metrics  # noqa: F401

    parser = ConfigParser()
    parser.read_config([str(c) for c in CONFIGS])
    parser.update({**SETTINGS, "dataset_dir": str(phantom), "cache_rate": 0.0})
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        for part in ("network_def", "loss", "validate#dataset"):
            parser.get_parsed_content(part)
        parser.get_parsed_content("train#expert_dataset")[0]  # readers and transforms import on first use
    random.setstate(states[0])
    np.random.set_state(states[1])


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / RUN / "checkpoints"


def latest_checkpoint(folder: Path) -> Path | None:
    """What a user resumes from: ``final.pt`` if the run completed, else the highest epoch checkpoint."""
    if (folder / "final.pt").is_file():
        return folder / "final.pt"
    epochs = sorted(folder.glob("checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
    return epochs[-1] if epochs else None


def load_checkpoints(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Every file under a checkpoint's name, loaded (``weights_only``, digest verified), and those that do not
    load, with why."""
    from eclip_monai.networks.checkpoint import load_tensors

    loaded, torn = {}, []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else ():
        try:
            loaded[path.name] = load_tensors(path)
        except Exception as e:  # noqa: BLE001 - any failure to load is what this check reports
            torn.append(f"{path.name}: {e}")
    return loaded, torn


def reference_checkpoints(run_dir: Path, what: str) -> dict[str, Any]:
    """The loaded checkpoints of an uninterrupted ``what``; it must have left a loadable final.pt and
    model.pt."""
    reference, torn = load_checkpoints(checkpoint_dir(run_dir))
    if torn or not {"final.pt", "model.pt"} <= set(reference):
        raise RuntimeError(f"the uninterrupted {what} left no loadable final.pt and model.pt: {torn}")
    return reference


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The first place two loaded checkpoints differ (tensors bit for bit), else None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return None if same else where
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if list(a) != list(b):
            return f"{where} keys"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where} length"
        found = (first_difference(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
        return next((d for d in found if d is not None), None)
    return None if a == b else where


@dataclass
class Result:
    case: Case
    killed: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    difference: str | None = "not run"
    left_after_kill: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # torchrun cases: seconds from the kill to torchrun's exit, per kill; what did not stop as it should
    detection_s: list[float] = field(default_factory=list)
    not_stopped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        died = len(self.killed) == len(self.case.kills) and all("SIGKILL" in k for k in self.killed)
        checked = not self.torn and self.difference is None and not self.temporary and not self.not_stopped
        return died and checked


class Harness:
    """One phantom, one uninterrupted reference run of ``epochs`` epochs, and any number of cases run against
    them (every case is written for 3 epochs; those in ``FAST`` also hold at 2). The torchrun cases have an
    uninterrupted 2-process reference run of their own, made when the first of them runs."""

    def __init__(self, workdir: Path, epochs: int = EPOCHS, keep: bool = False):
        self.workdir, self.epochs, self.keep = Path(workdir), epochs, keep  # keep: each case's folder
        self.phantom = self.workdir / "phantom"
        self.reference_dir = self.workdir / "reference"
        self.ddp_reference_dir = self.workdir / "reference-ddp"
        self.reference: dict[str, Any] = {}
        self.ddp_reference: dict[str, Any] = {}

    def prepare(self, single: bool = True) -> None:
        """The phantom and, with ``single``, the single-process reference run (and the warm-up its forked
        children need)."""
        from eclip_monai.data.phantom import generate_phantom

        if not (self.phantom / "phantom_done.json").is_file():
            generate_phantom(self.phantom, studies=48, seed=0, workers=1, eval_size=4, progress=False)
        if not single:
            return
        warm_up(self.phantom)
        if not (checkpoint_dir(self.reference_dir) / "final.pt").is_file():
            code = run_child(self.reference_dir, self.phantom, epochs=self.epochs)
            if code != 0:
                log = self.reference_dir / "run.log"
                raise RuntimeError(f"the uninterrupted run failed ({code}); see {log}")
        self.reference = reference_checkpoints(self.reference_dir, "run")

    def prepare_ddp(self) -> None:
        """The uninterrupted 2-process torchrun run the torchrun cases are compared with."""
        if self.ddp_reference:
            return
        if not (checkpoint_dir(self.ddp_reference_dir) / "final.pt").is_file():
            run = run_torchrun(self.ddp_reference_dir, self.phantom, self.epochs)
            if run.code != 0:
                log = self.ddp_reference_dir / "run.log"
                raise RuntimeError(f"the uninterrupted torchrun run failed ({run.code}); see {log}")
        self.ddp_reference = reference_checkpoints(self.ddp_reference_dir, "torchrun run")

    def _killed_child(self, case: Case, run_dir: Path, point: str, resume_from: Path | None,
                      result: Result) -> None:
        code = run_child(run_dir, self.phantom, point, resume_from, case.workers, self.epochs)
        log = (run_dir / "run.log").read_text(errors="replace")
        if code == -signal.SIGKILL and f"SIGKILL at {point}" in log:
            result.killed.append("SIGKILL")
        elif point.startswith("worker") and code == 1 and "DataLoader worker" in log:
            result.killed.append("worker SIGKILL, trainer raised")
        else:
            result.killed.append("not reached" if code == 0 else f"exit {code}")

    def _killed_torchrun(self, case: Case, run_dir: Path, point: str, resume_from: Path | None,
                         result: Result) -> None:
        """Rank ``case.rank`` kills itself at ``point``: torchrun must name it (SIGKILL) as the first failure,
        stop the other rank and exit non-zero within ``DETECTION_LIMIT_S`` of the kill, leaving no rank."""
        log_start = (run_dir / "run.log").stat().st_size if (run_dir / "run.log").is_file() else 0
        run = run_torchrun(run_dir, self.phantom, self.epochs, point, case.rank, resume_from)
        with open(run_dir / "run.log", "rb") as f:
            f.seek(log_start)
            log = f.read().decode(errors="replace")
        if run.timed_out:
            result.not_stopped.append(f"torchrun still running {TORCHRUN_LIMIT_S} s after it started")
        if f"SIGKILL at {point}" not in log or run.detection_s is None:
            result.killed.append("not reached" if run.code == 0 else f"torchrun exit {run.code}, {point} "
                                 "not reached")
            return
        root, codes = failure_summary(log)
        signalled, detection = sigterm_sent_at(log), run.detection_s
        result.detection_s.append(round(detection, 1))
        others = "".join(f"; rank {r} exit {c}" for r, c in sorted(codes.items()) if r != case.rank)
        result.killed.append(
            f"rank {case.rank} SIGKILL; "
            + (f"SIGTERM to the others after {signalled - run.killed_at:.1f} s; " if signalled else "")
            + f"torchrun exit {run.code} after {detection:.1f} s "
            + (f"(first failure: rank {root[0]} exit {root[1]}{others})" if root else "(no failure summary)"))
        if run.code == 0:
            result.not_stopped.append("torchrun exited 0")
        if detection > DETECTION_LIMIT_S:
            result.not_stopped.append(f"torchrun exited {detection:.0f} s after the kill (limit "
                                      f"{DETECTION_LIMIT_S:.0f} s)")
        if root != (case.rank, -signal.SIGKILL):
            result.not_stopped.append(f"torchrun's first failure is {root}, not rank {case.rank} by SIGKILL")
        if len(run.pids) != NPROC:
            result.not_stopped.append(f"ranks that recorded their pid: {sorted(run.pids)}")
        survivors = {r: pid for r, pid in run.pids.items() if alive(pid)}
        if survivors:
            result.not_stopped.append(f"running after torchrun exited: ranks {sorted(survivors)}")
            for pid in survivors.values():
                os.kill(pid, signal.SIGKILL)

    def run_case(self, case: Case) -> Result:
        if case.rank is not None:
            self.prepare_ddp()
        start, result = time.monotonic(), Result(case)
        run_dir = self.workdir / case.name
        folder = checkpoint_dir(run_dir)
        for point in case.kills:
            resume_from = latest_checkpoint(folder)
            if case.rank is None:
                self._killed_child(case, run_dir, point, resume_from, result)
            else:
                self._killed_torchrun(case, run_dir, point, resume_from, result)
            result.torn += [f"after {point}: {t}" for t in load_checkpoints(folder)[1]]
            result.left_after_kill = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        resume_from = latest_checkpoint(folder)
        if case.rank is None:
            code = run_child(run_dir, self.phantom, None, resume_from, case.workers, self.epochs)
            reference_dir, reference = self.reference_dir, self.reference
        else:  # the same torchrun command, plus --resume_from
            code = run_torchrun(run_dir, self.phantom, self.epochs, resume_from=resume_from).code
            reference_dir, reference = self.ddp_reference_dir, self.ddp_reference
        loaded, torn = load_checkpoints(folder)
        result.torn += [f"after resume: {t}" for t in torn]
        if code != 0:
            result.difference = f"the resumed run failed ({code}); see {run_dir / 'run.log'}"
        else:
            result.difference = self.compare(loaded, reference)
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        result.temporary = sorted(n for n in names if n.startswith("."))
        result.extra = sorted(names - {p.name for p in checkpoint_dir(reference_dir).iterdir()}
                              - set(result.temporary))
        if not self.keep:  # a case leaves about 0.5 GB of checkpoints
            shutil.rmtree(run_dir)
        result.seconds = time.monotonic() - start
        return result

    def compare(self, loaded: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> str | None:
        """Where the resumed ``final.pt`` or ``model.pt`` differs from the uninterrupted run's (``reference``,
        by default the single-process one), or None."""
        reference = self.reference if reference is None else reference
        for name in ("final.pt", "model.pt"):
            if name not in loaded:
                return f"{name} missing"
            diff = first_difference(reference[name], loaded[name])
            if diff is not None:
                return f"{name}{diff}"
        return None


def table(results: Sequence[Result]) -> str:
    rows = ["| case | kill point | killed | resumed == uninterrupted | files left after the kill "
            "| extra after resume | result |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        equal = "yes (final.pt, model.pt)" if r.difference is None else f"NO: {r.difference}"
        left = ", ".join(r.left_after_kill) or "none"
        extra = ", ".join(r.extra + r.temporary) or "none"
        verdict = "pass" if r.passed else "FAIL" + "".join(f" ({why})" for why in (
            *(["torn: " + "; ".join(r.torn)] if r.torn else []), *r.not_stopped))
        killed = ", ".join(r.killed)
        rows.append(f"| {r.case.name} | {r.case.where} | {killed} | {equal} | {left} | {extra} | {verdict} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="all",
                        help="'all', 'fast' (the make-test slice), 'single' (the single-process cases), "
                             "'ddp' (the 2-process torchrun cases) or comma-separated names (see --list)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where runs are written and kept (default: a temporary folder; each case's "
                             "runs are removed once checked)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--list", action="store_true", help="print the cases and their kill points, and exit")
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES.values():
            where = case.where if case.rank is None else f"[torchrun, rank {case.rank}] {case.where}"
            print(f"{case.name:22} {' -> '.join(case.kills):60} {where}")
        return 0
    groups = {"all": list(CASES), "fast": list(FAST), "single": list(SINGLE), "ddp": list(DDP)}
    names = groups.get(args.cases) or args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; see --list")

    import tempfile

    with tempfile.TemporaryDirectory(prefix="fault_injection_") as tmp:
        epochs = FAST_EPOCHS if args.cases == "fast" else EPOCHS
        harness = Harness(args.workdir or Path(tmp), epochs, keep=args.workdir is not None)
        start = time.monotonic()
        harness.prepare(single=any(CASES[n].rank is None for n in names))
        if any(CASES[n].rank is not None for n in names):
            harness.prepare_ddp()
        reference_s = time.monotonic() - start
        results = []
        for name in names:
            results.append(harness.run_case(CASES[name]))
            verdict = "pass" if results[-1].passed else "FAIL"
            print(f"{name}: {verdict} ({results[-1].seconds:.0f} s)", file=sys.stderr)
        total = time.monotonic() - start
    print(table(results))
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} cases passed; {total:.0f} s in all ({reference_s:.0f} s for the "
          f"phantom and the uninterrupted runs; {4 * harness.epochs} iterations a run), one thread per "
          f"process.")
    if args.json:
        args.json.write_text(json.dumps([{"case": r.case.name, "where": r.case.where, "kills": r.case.kills,
                                          "killed": r.killed, "difference": r.difference, "torn": r.torn,
                                          "extra": r.extra, "temporary": r.temporary, "passed": r.passed,
                                          "rank": r.case.rank, "detection_s": r.detection_s,
                                          "not_stopped": r.not_stopped,
                                          "seconds": round(r.seconds, 1)} for r in results], indent=2) + "\n")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
