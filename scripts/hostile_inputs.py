"""Feed the hostile-input corpus (``scripts/hostile_corpus.py``) through every entry point that reads files.

Entry points: ``train`` (the training datalist path: ``train_transforms`` under ``SkipBadSamples``),
``evaluation`` (``evaluation.embed.eval_image_transforms``), ``inference`` (the inference bundle's
``inference.inference_transforms``), ``rest`` (``POST /infer/eclip_findings`` with the file uploaded to a
MONAI Label server on 127.0.0.1), ``gaze`` (the EGD-CXR / REFLACX readers, then every record's heatmap) and
``report`` (section extraction and tokenising, as the training chain reads report files).

Each (file, in-process entry point) runs in its own forked worker with a time limit (a hang is killed and
counted) and an address-space limit of ``--memory-limit`` above the worker's start (an allocation past it is a
``MemoryError``, counted as a crash, and keeps the machine safe). An outcome is ``loaded``, ``clean`` (a
``CXRDataError`` that names the file, a sample skipped by ``SkipBadSamples``, or a 4xx answer), ``unnamed``
(a ``CXRDataError`` that does not name the file), ``crash`` (any other exception, a signal, a 5xx answer) or
``hang``. Peak RSS is the worker's, which starts as a copy of the harness (the "baseline" column).

    python scripts/hostile_inputs.py --out runs/hostile --count 520          # full run, ~10 min on 2 cores
    python scripts/hostile_inputs.py --corpus /tmp/hostile --no-rest          # an existing corpus, no server

Writes ``hostile_inputs.md`` (the table) and ``hostile_inputs.json`` (every outcome) into ``--out``; exits 1
when any file crashed, hung or was refused without naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from hostile_corpus import Case, generate, load_manifest  # noqa: E402

from eclip_monai.data.robust import data_error  # noqa: E402

MODEL, SIZE = "eclip-tiny-cnn", 112
IMAGE_ENTRIES = ("train", "evaluation", "inference")
ENTRIES = {"dicom": IMAGE_ENTRIES, "image": IMAGE_ENTRIES, "egd": ("gaze",), "reflacx": ("gaze",),
           "report": ("report",)}
OUTCOMES = ("loaded", "clean", "unnamed", "crash", "hang")


@dataclass
class Outcome:
    case: str
    kind: str
    family: str
    entry: str
    outcome: str
    seconds: float
    peak_rss_mb: float
    growth_mb: float = 0.0  # peak RSS minus the worker's RSS when it started (rest: the server's growth)
    detail: str = ""


class Entries:
    """The in-process entry points, built once in the harness so every forked worker shares them."""

    def __init__(self):
        from monai.data import Dataset
        from monai.transforms import Compose

        from eclip_monai.data.robust import SkipBadSamples
        from eclip_monai.evaluation.embed import eval_image_transforms
        from eclip_monai.inference import inference_transforms
        from eclip_monai.networks import build_tokenizer
        from eclip_monai.transforms import ExtractReportSectiond, TokenizeTextd, train_transforms
        from eclip_monai.transforms.heatmap import FixationsToHeatmap

        tokenizer = build_tokenizer(MODEL)
        self.train_chain = train_transforms(SIZE, tokenizer=tokenizer,
                                            report_sections=("findings", "impression"))
        self.dataset, self.skip = Dataset, SkipBadSamples
        self.evaluation = eval_image_transforms(SIZE)
        self.inference = inference_transforms(SIZE)
        self.report_chain = Compose([ExtractReportSectiond("report", fallback_to_full=True),
                                     TokenizeTextd("report", "text", tokenizer=tokenizer)])
        self.heatmap = FixationsToHeatmap(sigma=1.0, sigma_unit="deg", default_pixels_per_degree=40.0)

    def run(self, entry: str, case: Case, path: Path) -> str:
        """``"loaded"`` or ``"skipped"``; raises what the entry point raises."""
        if entry == "train":
            item = {"image": str(path), "report": "FINDINGS: clear lungs.\nIMPRESSION: normal."}
            return "loaded" if self.skip(self.dataset([item], self.train_chain))[0] is not None else "skipped"
        if entry == "evaluation":
            self.evaluation({"image": str(path)})
        elif entry == "inference":
            self.inference({"image": str(path)})
        elif entry == "report":
            self.report_chain({"report": str(path)})
        elif entry == "gaze":
            self.gaze(case.kind, path)
        return "loaded"

    def gaze(self, kind: str, folder: Path) -> None:
        """Read the folder, then render every record as the expert pipeline would."""
        from eclip_monai.data.egd_cxr import read_egd_fixations
        from eclip_monai.data.reflacx import read_reflacx_fixations

        records, _ = read_egd_fixations(folder) if kind == "egd" else read_reflacx_fixations(folder)
        for readings in records.values():
            for record in readings if isinstance(readings, list) else [readings]:
                self.heatmap(record.fixations, (SIZE, SIZE), record.image_size, record.pixels_per_degree,
                             record.shown_region, path=str(folder))


def warm_up(entries: Entries, cases: list[Case], corpus: Path) -> None:
    """Run the well-formed cases once in the harness, so lazy imports (decoders, tokenizer tables) happen
    before forking rather than in every worker."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    for case in cases:
        if case.family in ("ok", "png_ok", "jpeg_ok", "nifti_ok", "ct"):
            for entry in ENTRIES[case.kind]:
                try:
                    entries.run(entry, case, corpus / case.path)
                except Exception:  # noqa: BLE001 - only the imports matter here
                    pass


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


def _child(entries: Entries, entry: str, case: Case, path: Path, memory_limit: int, pipe_w: int) -> None:
    """Run one job in the forked worker and write ``[outcome, detail, seconds, peak MB, growth MB]`` to the
    pipe; never returns (a worker that dies before writing is counted as a crash)."""
    try:
        warnings.simplefilter("ignore")  # pydicom warns about every malformed element; outcomes count
        logging.disable(logging.CRITICAL)
        limit = _vm_size() + memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        start_rss, start = _rss_mb(), time.perf_counter()
        try:
            outcome, detail = entries.run(entry, case, path), ""
            outcome = "clean" if outcome == "skipped" else outcome
        except BaseException as exc:  # noqa: BLE001 - classifying every escape is the point
            error = data_error(exc)
            if error is None:
                outcome, detail = "crash", _root_cause(exc)
            else:
                named = _names(str(error), case, path)
                outcome, detail = ("clean" if named else "unnamed"), str(error)[:300]
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        os.write(pipe_w, json.dumps([outcome, detail, seconds, peak, max(peak - start_rss, 0.0)]).encode())
    finally:
        os._exit(0)


def _root_cause(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost cause, where the escape started."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:400] + where


def _names(message: str, case: Case, path: Path) -> bool:
    """The error names the file: the case's own path, or (a gaze folder) a file inside it."""
    return str(path) in message or (path.is_dir() and str(path) + os.sep in message)


def run_forked(entries: Entries, jobs: list[tuple[str, Case, Path]], timeout: float, memory_limit: int,
               workers: int, progress: Callable[[Outcome], None]) -> list[Outcome]:
    """Each job in a forked child, ``workers`` at a time; a child past ``timeout`` is killed (a hang)."""
    pending, running, results = list(reversed(jobs)), {}, []
    while pending or running:
        while pending and len(running) < workers:
            entry, case, path = pending.pop()
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                _child(entries, entry, case, path, memory_limit, write)
            os.close(write)
            running[pid] = (entry, case, read, time.perf_counter(), bytearray())
        for pid, (entry, case, read, started, buffer) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.perf_counter() - started
            if not done and elapsed < timeout:
                continue
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.set_blocking(read, False)
            try:
                while chunk := os.read(read, 65536):
                    buffer += chunk
            except BlockingIOError:
                pass
            os.close(read)
            del running[pid]
            if not done:
                result = Outcome(case.path, case.kind, case.family, entry, "hang", elapsed, 0.0,
                                 detail=f"killed after {timeout:g} s")
            elif buffer:
                outcome, detail, seconds, peak, growth = json.loads(buffer)
                result = Outcome(case.path, case.kind, case.family, entry, outcome, seconds, peak, growth,
                                 detail)
            else:
                reason = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {status}"
                result = Outcome(case.path, case.kind, case.family, entry, "crash", elapsed, 0.0,
                                 detail=f"worker died ({reason})")
            results.append(result)
            progress(result)
        time.sleep(0.002)
    return results


# --- the REST entry point -----------------------------------------------------------------------------------


def rest_outcomes(cases: list[Case], corpus: Path, work: Path, timeout: float) -> tuple[list[Outcome], dict]:
    """Upload every image file to ``/infer/eclip_findings`` of a fresh server; 200 is loaded, 4xx clean."""
    import requests

    from load_test import running_server, server_rss_mb

    results = []
    with running_server(work) as server:
        rss_before = server_rss_mb(server.pid)
        peak = rss_before
        for case in cases:
            path = corpus / case.path
            start = time.perf_counter()
            try:
                with open(path, "rb") as f:
                    response = requests.post(f"{server.url}/infer/eclip_findings", params={"output": "json"},
                                             files={"file": (path.name, f)}, timeout=timeout)
                status, detail = response.status_code, response.text[:300]
                outcome = "loaded" if status == 200 else "clean" if 400 <= status < 500 else "crash"
            except requests.Timeout:
                outcome, status, detail = "hang", 0, f"no answer within {timeout:g} s"
            except requests.RequestException as exc:
                outcome, status, detail = "crash", 0, f"{type(exc).__name__}: {exc}"[:300]
            seconds = time.perf_counter() - start
            rss = server_rss_mb(server.pid)
            peak = max(peak, rss)
            results.append(Outcome(case.path, case.kind, case.family, "rest", outcome, seconds, rss,
                                   max(rss - rss_before, 0.0), f"{status}: {detail}"))
        alive = requests.get(f"{server.url}/info/", timeout=60).status_code == 200
        server_info = {"rss_before_mb": rss_before, "rss_after_mb": server_rss_mb(server.pid),
                       "peak_rss_mb": peak, "alive_after": alive}
    return results, server_info


# --- summary ------------------------------------------------------------------------------------------------


def summarise(results: Iterable[Outcome], key: Callable[[Outcome], tuple]) -> list[dict]:
    groups: dict[tuple, list[Outcome]] = defaultdict(list)
    for result in results:
        groups[key(result)].append(result)
    rows = []
    for group, items in groups.items():
        counts = {o: sum(r.outcome == o for r in items) for o in OUTCOMES}
        rows.append({"group": group, "files": len(items), **counts,
                     "max_seconds": max(r.seconds for r in items),
                     "peak_rss_mb": max(r.peak_rss_mb for r in items),
                     "growth_mb": max(r.growth_mb for r in items)})
    return rows


def _row(label: str, entry: str, r: dict) -> str:
    cells = [label, entry, r["files"], r["loaded"], r["clean"], r["crash"], r["hang"], r["unnamed"],
             f"{r['max_seconds']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['growth_mb']:.0f}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(results: list[Outcome], baseline_mb: float, args, server: dict | None) -> str:
    order = {"train": 0, "evaluation": 1, "inference": 2, "rest": 3, "gaze": 4, "report": 5}
    rows = sorted(summarise(results, lambda r: (r.kind, r.entry)),
                  key=lambda r: (r["group"][0], order[r["group"][1]]))
    lines = ["| input | entry point | files | loaded | clean errors | crashes | hangs | unnamed "
             "| max s / file | peak RSS MB | max growth MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [_row(*r["group"], r) for r in rows]
    lines.append(_row("**all**", "", summarise(results, lambda r: ())[0]))
    families = sorted(summarise(results, lambda r: (r.kind, r.family)), key=lambda r: r["group"])
    family_lines = ["| kind | family | runs | loaded | clean | crashes | hangs | unnamed |",
                    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    family_lines += [f"| {r['group'][0]} | {r['group'][1]} | {r['files']} | {r['loaded']} | {r['clean']} | "
                     f"{r['crash']} | {r['hang']} | {r['unnamed']} |" for r in families]
    notes = [f"Corpus seed {args.seed}, {args.count} mutated DICOMs; time limit {args.timeout:g} s per file "
             f"and entry point; address-space limit {args.memory_limit // 2**20} MiB above the worker's "
             "start. "
             f"Workers are forks of the harness ({baseline_mb:.0f} MB RSS with torch and MONAI loaded); peak "
             "RSS is a worker's own peak, growth that peak minus the worker's RSS when it started."]
    if server:
        notes.append(f"Server RSS: {server['rss_before_mb']:.0f} MB before the uploads, "
                     f"{server['rss_after_mb']:.0f} MB after, {server['peak_rss_mb']:.0f} MB peak; answering "
                     f"/info/ afterwards: {server['alive_after']}. For `rest`, RSS and growth are the "
                     "server's.")
    bad = [r for r in results if r.outcome in ("crash", "hang", "unnamed")]
    if bad:
        last = [r.detail.strip().splitlines()[-1] if r.detail.strip() else "" for r in bad[:40]]
        notes.append("Failures:\n\n" + "\n".join(f"- {r.case} ({r.entry}): {r.outcome}: {line}"
                                                  for r, line in zip(bad, last)))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n\n" + "\n".join(family_lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/hostile", help="where the table and JSON go")
    parser.add_argument("--corpus", help="an existing corpus (default: generate one in a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=520, help="mutated DICOMs when generating")
    parser.add_argument("--small", action="store_true", help="10^4-row instead of 10^6-row big gaze files")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per file and entry point")
    parser.add_argument("--memory-limit", type=int, default=3 * 2**30, help="bytes above the worker's start")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-rest", action="store_true", help="skip the MONAI Label upload entry point")
    parser.add_argument("--limit", type=int, help="only the first N cases (a quick look)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        if not args.corpus:
            generate(corpus, args.seed, args.count, 10_000 if args.small else 1_000_000)
        cases = load_manifest(corpus)[: args.limit]
        entries = Entries()
        warm_up(entries, load_manifest(corpus), corpus)
        baseline = _rss_mb()
        jobs = [(entry, case, corpus / case.path) for case in cases for entry in ENTRIES[case.kind]]
        started = time.perf_counter()

        def progress(result: Outcome) -> None:
            if result.outcome in ("crash", "hang", "unnamed"):
                detail = result.detail.strip()[-300:]
                print(f"{result.outcome.upper()}: {result.case} ({result.entry}): {detail}", flush=True)

        results = run_forked(entries, jobs, args.timeout, args.memory_limit, args.workers, progress)
        server = None
        if not args.no_rest:
            uploads = [c for c in cases if c.kind in ("dicom", "image")]
            rest, server = rest_outcomes(uploads, corpus, Path(tmp) / "server", args.timeout)
            results += rest
            for result in rest:
                progress(result)
    table = markdown(results, baseline, args, server)
    (out / "hostile_inputs.md").write_text(table)
    (out / "hostile_inputs.json").write_text(json.dumps({
        "seed": args.seed, "count": args.count, "timeout_s": args.timeout, "memory_limit": args.memory_limit,
        "baseline_rss_mb": baseline, "server": server, "seconds": time.perf_counter() - started,
        "results": [asdict(r) for r in results]}, indent=1))
    print(table)
    return int(any(r.outcome in ("crash", "hang", "unnamed") for r in results))


if __name__ == "__main__":
    sys.exit(main())
