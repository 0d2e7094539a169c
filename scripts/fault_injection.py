"""Fault injection: kill a short training run with SIGKILL at chosen points, resume it, and check the result.

    .venv/bin/python scripts/fault_injection.py                 # every case (about 5 minutes on 2 cores)
    .venv/bin/python scripts/fault_injection.py --cases fast    # the slice `make test` runs (2-epoch runs)
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
Prints one Markdown table row per case; exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class Case:
    """A kill point per run (``kills``, syntax in ``_install``), each run after the first resuming the one
    before; ``where`` says it in words; ``workers`` is ``num_workers`` of every run of the case."""

    name: str
    where: str
    kills: tuple[str, ...]
    workers: int = 0


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
)}
FAST = ("ckpt-write-2", "validation-1", "expert-load-3")


# ---- inside a child: the run and its kill point ------------------------------------------------------------


def _die(point: str) -> None:
    os.write(2, f"fault_injection: SIGKILL at {point}\n".encode())  # the run's log, whatever sys.stderr is
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
    - ``resume_loaded``: right after ``--resume_from`` was restored.
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

    @property
    def passed(self) -> bool:
        died = len(self.killed) == len(self.case.kills) and all("SIGKILL" in k for k in self.killed)
        return died and not self.torn and self.difference is None and not self.temporary


class Harness:
    """One phantom, one uninterrupted reference run of ``epochs`` epochs, and any number of cases run against
    them (every case is written for 3 epochs; those in ``FAST`` also hold at 2)."""

    def __init__(self, workdir: Path, epochs: int = EPOCHS, keep: bool = False):
        self.workdir, self.epochs, self.keep = Path(workdir), epochs, keep  # keep: each case's folder
        self.phantom = self.workdir / "phantom"
        self.reference_dir = self.workdir / "reference"
        self.reference: dict[str, Any] = {}

    def prepare(self) -> None:
        from eclip_monai.data.phantom import generate_phantom

        if not (self.phantom / "phantom_done.json").is_file():
            generate_phantom(self.phantom, studies=48, seed=0, workers=1, eval_size=4, progress=False)
        warm_up(self.phantom)
        if not (checkpoint_dir(self.reference_dir) / "final.pt").is_file():
            code = run_child(self.reference_dir, self.phantom, epochs=self.epochs)
            if code != 0:
                log = self.reference_dir / "run.log"
                raise RuntimeError(f"the uninterrupted run failed ({code}); see {log}")
        self.reference, torn = load_checkpoints(checkpoint_dir(self.reference_dir))
        if torn or not {"final.pt", "model.pt"} <= set(self.reference):
            raise RuntimeError(f"the uninterrupted run left no loadable final.pt and model.pt: {torn}")

    def run_case(self, case: Case) -> Result:
        start, result = time.monotonic(), Result(case)
        run_dir = self.workdir / case.name
        folder = checkpoint_dir(run_dir)
        for point in case.kills:
            resume_from = latest_checkpoint(folder)
            code = run_child(run_dir, self.phantom, point, resume_from, case.workers, self.epochs)
            log = (run_dir / "run.log").read_text(errors="replace")
            if code == -signal.SIGKILL and f"SIGKILL at {point}" in log:
                result.killed.append("SIGKILL")
            elif point.startswith("worker") and code == 1 and "DataLoader worker" in log:
                result.killed.append("worker SIGKILL, trainer raised")
            else:
                result.killed.append("not reached" if code == 0 else f"exit {code}")
            result.torn += [f"after {point}: {t}" for t in load_checkpoints(folder)[1]]
            result.left_after_kill = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        code = run_child(run_dir, self.phantom, None, latest_checkpoint(folder), case.workers, self.epochs)
        loaded, torn = load_checkpoints(folder)
        result.torn += [f"after resume: {t}" for t in torn]
        if code != 0:
            result.difference = f"the resumed run failed ({code}); see {run_dir / 'run.log'}"
        else:
            result.difference = self.compare(loaded)
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        reference = {p.name for p in checkpoint_dir(self.reference_dir).iterdir()}
        result.temporary = sorted(n for n in names if n.startswith("."))
        result.extra = sorted(names - reference - set(result.temporary))
        if not self.keep:  # a case leaves about 0.5 GB of checkpoints
            shutil.rmtree(run_dir)
        result.seconds = time.monotonic() - start
        return result

    def compare(self, loaded: Mapping[str, Any]) -> str | None:
        """Where the resumed ``final.pt`` or ``model.pt`` differs from the uninterrupted run's, or None."""
        for name in ("final.pt", "model.pt"):
            if name not in loaded:
                return f"{name} missing"
            diff = first_difference(self.reference[name], loaded[name])
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
        verdict = "pass" if r.passed else "FAIL" + (f" (torn: {'; '.join(r.torn)})" if r.torn else "")
        killed = ", ".join(r.killed)
        rows.append(f"| {r.case.name} | {r.case.where} | {killed} | {equal} | {left} | {extra} | {verdict} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="all",
                        help="'all', 'fast' (the make-test slice) or comma-separated case names (see --list)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where runs are written and kept (default: a temporary folder; each case's "
                             "runs are removed once checked)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--list", action="store_true", help="print the cases and their kill points, and exit")
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES.values():
            print(f"{case.name:18} {' -> '.join(case.kills):60} {case.where}")
        return 0
    names = {"all": list(CASES), "fast": list(FAST)}.get(args.cases) or args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; see --list")

    import tempfile

    with tempfile.TemporaryDirectory(prefix="fault_injection_") as tmp:
        epochs = FAST_EPOCHS if args.cases == "fast" else EPOCHS
        harness = Harness(args.workdir or Path(tmp), epochs, keep=args.workdir is not None)
        start = time.monotonic()
        harness.prepare()
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
          f"phantom and the uninterrupted run; {4 * harness.epochs} iterations a run), one thread per run.")
    if args.json:
        args.json.write_text(json.dumps([{"case": r.case.name, "where": r.case.where, "kills": r.case.kills,
                                          "killed": r.killed, "difference": r.difference, "torn": r.torn,
                                          "extra": r.extra, "temporary": r.temporary, "passed": r.passed,
                                          "seconds": round(r.seconds, 1)} for r in results], indent=2) + "\n")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
