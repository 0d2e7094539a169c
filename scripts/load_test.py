"""Load and attack the eCLIP MONAI Label app on 127.0.0.1: concurrent clients, valid and hostile requests.

Starts ``monailabel start_server`` (``tests/label_server.serve``) over a few phantom studies with a tiny
random-init checkpoint, or targets a running server (``--url``). ``--clients`` threads share one seeded,
shuffled list of ``--requests`` requests: findings and similar studies by image id, findings of an uploaded
DICOM, gaze-steered similar studies (an ROI), ``/info/``; and bad ones: unknown ids, path-like ids (relative
traversal, absolute paths, a real DICOM outside the datastore, the same smuggled in through ``params``),
oversized uploads, hostile uploads (a truncated DICOM, a decompression bomb), malformed and non-object JSON
params, bad ``top_k``/``roi``/``fixations``, an unknown model, a request with no image at all.

Pass criteria, per request kind: valid requests answer 200; bad ones a 4xx; a path-like id a 4xx that shows
the path was not opened ("4xx, unread": a 200 for the DICOM outside the datastore means it was read and
classified; a 422 whose detail starts with the path is the image reader's error, so the file was opened).
Reports p50/p99 latency per kind, and the server's RSS (process and children) after a warm-up, at its peak
and at the end.

    python scripts/load_test.py --out runs/load_test                      # 8 clients x 1,000 requests
    python scripts/load_test.py --url http://127.0.0.1:8000 --server-pid 1234 --ids a,b --clients 4

Writes ``load_test.md`` and ``load_test.json`` into ``--out``; exits 1 when any request missed its criterion.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
MODEL, SIZE, STUDIES = "eclip-tiny-cnn", 112, 5
OVERSIZED_BYTES = 96 * 2**20  # above the readers' 80 MiB file cap (64 MiB of pixels + 16 MiB of header)
REQUEST_TIMEOUT_S = 300


@dataclass
class Server:
    url: str
    pid: int | None
    ids: list[str]
    upload: bytes  # a valid DICOM to upload
    outside: str  # an absolute path to a valid DICOM that is NOT in the datastore
    hostile: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, bytes) to upload


@contextlib.contextmanager
def running_server(work: Path, studies: int = STUDIES, app: Path | None = None) -> Iterator[Server]:
    """A fresh server on 127.0.0.1 over ``studies`` phantom studies, with a tiny random-init checkpoint;
    ``app`` serves another copy of ``apps/monailabel_eclip`` (to check a change to it)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import label_server
    from label_server import serve

    if app is not None:
        label_server.APP = Path(app).resolve()

    from eclip_monai.data.phantom import ensure_phantom
    from eclip_monai.networks import build_eclip

    work.mkdir(parents=True, exist_ok=True)
    phantom = ensure_phantom(work / "phantom", studies=studies, seed=0, workers=1, eval_size=2,
                             progress=False)
    dicoms = sorted((phantom / "mimic-cxr" / "files").rglob("*.dcm"))
    store, outside = work / "studies", work / "outside"
    store.mkdir(exist_ok=True)
    outside.mkdir(exist_ok=True)
    for dicom in dicoms[:-1]:  # a flat folder, as MONAI Label's local datastore expects
        shutil.copy(dicom, store / dicom.name)
    secret = shutil.copy(dicoms[-1], outside / "not_in_the_datastore.dcm")
    torch.manual_seed(0)
    checkpoint = work / "model.pt"
    torch.save({"model": build_eclip(model_name=MODEL, image_size=SIZE).state_dict()}, checkpoint)
    conf = {"checkpoint": checkpoint, "model_name": MODEL, "image_size": SIZE, "top_k": 3}
    with serve(work, str(store), conf) as url:
        port = url.rsplit(":", 1)[1]
        ids = sorted(p.stem for p in store.glob("*.dcm"))
        yield Server(url, _server_pid(port), ids, dicoms[0].read_bytes(), str(secret))


def _server_pid(port: str) -> int | None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "start_server" in " ".join(child.cmdline()) and port in child.cmdline():
                return child.pid
    return None


def server_rss_mb(pid: int | None) -> float:
    """RSS of the server process and its children, in MB (NaN when the process is unknown)."""
    import psutil

    if pid is None:
        return float("nan")
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    except psutil.Error:
        return float("nan")


# --- requests -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str
    expect: str  # "200", "404", "4xx" or "4xx, unread"
    method: str = "POST"
    path: str = "/infer/eclip_findings"
    query: tuple = ()
    params: str | None = "{}"  # the raw form field
    upload: tuple[str, bytes] | None = None  # (file name, bytes)
    target: str = ""  # the server path a path-like request names


PATH_IDS = ("../../etc/passwd", "../../../../../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
            "....//....//etc/passwd", "/etc/passwd", "/proc/self/status", "/etc/hostname")
UNREAD = "4xx, unread"
VALID_WEIGHTS = {"findings_id": 30, "similar_id": 20, "findings_upload": 10, "similar_roi": 6,
                 "similar_fixations": 4, "info": 5}
BAD_WEIGHTS = {"unknown_id": 6, "path_id": 10, "path_id_outside_dicom": 4, "path_in_params": 4,
               "malformed_json": 4, "params_not_object": 2, "bad_top_k": 3, "bad_roi": 3, "bad_fixations": 3,
               "unknown_model": 3, "no_image": 2, "hostile_upload": 6, "hostile_upload_roi": 3,
               "oversized_upload": 1}


def build_requests(server: Server, count: int, seed: int,
                   kinds: Sequence[str] | None = None) -> list[Request]:
    """``count`` requests drawn with the kinds' weights (every kind at least once), shuffled by ``seed``."""
    rng = np.random.default_rng(seed)
    weights = {**VALID_WEIGHTS, **BAD_WEIGHTS}
    if kinds is not None:
        weights = {k: w for k, w in weights.items() if k in kinds}
    names = list(weights)
    p = np.array([weights[k] for k in names], float)
    drawn = names + list(rng.choice(names, size=max(count - len(names), 0), p=p / p.sum()))
    out = [_request(kind, server, rng) for kind in drawn[:count]]
    return [out[i] for i in rng.permutation(len(out))]


def _request(kind: str, server: Server, rng: np.random.Generator) -> Request:
    image = server.ids[int(rng.integers(len(server.ids)))]
    json_ = lambda value: json.dumps(value)  # noqa: E731
    if kind == "findings_id":
        return Request(kind, "200", query=(("image", image),))
    if kind == "similar_id":
        return Request(kind, "200", path="/infer/eclip_similar", query=(("image", image),),
                       params=json_({"top_k": int(rng.integers(1, 4))}))
    if kind == "findings_upload":
        return Request(kind, "200", upload=("study.dcm", server.upload))
    if kind == "similar_roi":
        return Request(kind, "200", path="/infer/eclip_similar", query=(("image", image),),
                       params=json_({"roi": [20, 30, 120, 160], "top_k": 2}))
    if kind == "similar_fixations":
        points = [[float(x), float(y), 0.3] for x, y in rng.uniform(20, 200, (20, 2))]
        return Request(kind, "200", path="/infer/eclip_similar", query=(("image", image),),
                       params=json_({"fixations": points, "top_k": 2}))
    if kind == "info":
        return Request(kind, "200", method="GET", path="/info/", params=None)
    if kind == "unknown_id":
        return Request(kind, "404", query=(("image", f"no-such-study-{int(rng.integers(10**6))}"),))
    if kind == "path_id":
        target = PATH_IDS[int(rng.integers(len(PATH_IDS)))]
        model = "/infer/eclip_findings" if rng.random() < 0.5 else "/infer/eclip_similar"
        return Request(kind, UNREAD, path=model, query=(("image", target),), target=target)
    if kind == "path_id_outside_dicom":
        return Request(kind, UNREAD, query=(("image", server.outside),), target=server.outside)
    if kind == "path_in_params":  # MONAI Label copies params over the request, "image" included
        target = server.outside if rng.random() < 0.5 else "/etc/passwd"
        return Request(kind, UNREAD, query=(("image", image),), params=json_({"image": target}),
                       target=target)
    if kind == "malformed_json":
        return Request(kind, "4xx", query=(("image", image),), params='{"top_k": 3,')
    if kind == "params_not_object":
        return Request(kind, "4xx", query=(("image", image),), params="[1, 2, 3]")
    if kind == "bad_top_k":
        value = ["many", -3, 0, None, [1]][int(rng.integers(5))]
        return Request(kind, "4xx", path="/infer/eclip_similar", query=(("image", image),),
                       params=json_({"top_k": value}))
    if kind == "bad_roi":
        value = [[5, 5, 1, 1], [1, 2], "everywhere", [0, 0, float("inf"), 10]][int(rng.integers(4))]
        return Request(kind, "4xx", path="/infer/eclip_similar", query=(("image", image),),
                       params=json.dumps({"roi": value}))
    if kind == "bad_fixations":
        value = ["abc", [[1, 2]], [[1e9, 1e9, 1.0]], [["x", "y", "z"]]][int(rng.integers(4))]
        return Request(kind, "4xx", path="/infer/eclip_similar", query=(("image", image),),
                       params=json_({"fixations": value}))
    if kind == "unknown_model":
        return Request(kind, "4xx", path="/infer/no_such_model", query=(("image", image),))
    if kind == "no_image":
        return Request(kind, "4xx")
    if kind == "hostile_upload":
        name, content = server.hostile[int(rng.integers(len(server.hostile)))] if server.hostile else \
            ("truncated.dcm", server.upload[:700])
        return Request(kind, "4xx", upload=(name, content))
    if kind == "hostile_upload_roi":  # the ROI makes the app read the upload's header for its size first
        name, content = server.hostile[int(rng.integers(len(server.hostile)))] if server.hostile else \
            ("truncated.dcm", server.upload[:700])
        return Request(kind, "4xx", path="/infer/eclip_similar", params=json_({"roi": [1, 1, 50, 50]}),
                       upload=(name, content))
    if kind == "oversized_upload":
        return Request(kind, "4xx", upload=("huge.dcm", b"\0" * 128 + b"DICM" + b"\0" * OVERSIZED_BYTES))
    raise ValueError(f"unknown request kind {kind!r}")


@dataclass
class Answer:
    kind: str
    expect: str
    status: int  # 0: no answer (connection error or timeout)
    seconds: float
    detail: str = ""
    target: str = ""
    after_500: bool = False  # the previous answer on this client's connection was a 500

    @property
    def passed(self) -> bool:
        if self.expect == "200":
            return self.status == 200
        if self.expect == "404":
            return self.status == 404
        opened = self.expect == UNREAD and self.detail.startswith(f'{{"detail":"{self.target}')
        return 400 <= self.status < 500 and not opened


def send(session: requests.Session, url: str, request: Request) -> Answer:
    start = time.perf_counter()
    try:
        if request.method == "GET":
            response = session.get(url + request.path, params=dict(request.query), timeout=REQUEST_TIMEOUT_S)
        else:
            files = {"file": (request.upload[0], io.BytesIO(request.upload[1]))} if request.upload else None
            data = {"params": request.params} if request.params is not None else None
            response = session.post(url + request.path, params={**dict(request.query), "output": "json"},
                                    data=data, files=files, timeout=REQUEST_TIMEOUT_S)
        status, detail = response.status_code, response.text[:300]
    except requests.RequestException as exc:
        status, detail = 0, f"{type(exc).__name__}: {exc}"[:200]
    return Answer(request.kind, request.expect, status, time.perf_counter() - start, detail, request.target)


def run_load(server: Server, requests_: list[Request], clients: int) -> tuple[list[Answer], dict]:
    """Send ``requests_`` from ``clients`` threads; returns the answers and the server's RSS over the run."""
    queue, answers, lock = list(reversed(requests_)), [], threading.Lock()
    rss = {"before_mb": server_rss_mb(server.pid), "peak_mb": server_rss_mb(server.pid)}
    done = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            last = 0
            while True:
                with lock:
                    if not queue:
                        return
                    request = queue.pop()
                answer = send(session, server.url, request)
                answer.after_500, last = last == 500, answer.status
                with lock:
                    answers.append(answer)

    def sample() -> None:
        while not done.wait(0.5):
            rss["peak_mb"] = max(rss["peak_mb"], server_rss_mb(server.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rss["seconds"] = time.perf_counter() - started
    done.set()
    sampler.join()
    rss["after_mb"] = server_rss_mb(server.pid)
    rss["peak_mb"] = max(rss["peak_mb"], rss["after_mb"])
    rss["alive_after"] = send(requests.Session(), server.url, Request("info", "200", "GET", "/info/",
                                                                      params=None)).status == 200
    return answers, rss


def warm_up(server: Server) -> None:
    """One of each valid kind, so the first model load and datastore embedding are not in the latencies."""
    rng = np.random.default_rng(0)
    with requests.Session() as session:
        for kind in VALID_WEIGHTS:
            send(session, server.url, _request(kind, server, rng))


# --- summary ------------------------------------------------------------------------------------------------


def summarise(answers: list[Answer]) -> list[dict]:
    groups: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        groups[answer.kind].append(answer)
    rows = []
    for kind in [*VALID_WEIGHTS, *BAD_WEIGHTS]:
        items = groups.get(kind)
        if not items:
            continue
        seconds = np.array([a.seconds for a in items]) * 1000
        statuses = defaultdict(int)
        for a in items:
            statuses[a.status] += 1
        rows.append({"kind": kind, "expect": items[0].expect, "requests": len(items),
                     "statuses": dict(sorted(statuses.items())), "failed": sum(not a.passed for a in items),
                     "p50_ms": float(np.percentile(seconds, 50)), "p99_ms": float(np.percentile(seconds, 99)),
                     "max_ms": float(seconds.max())})
    return rows


def markdown(rows: list[dict], rss: dict, args, answers: list[Answer]) -> str:
    lines = ["| request | expected | requests | answers (status: count) | failed | p50 ms | p99 ms "
             "| max ms |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        statuses = ", ".join(f"{s}: {n}" for s, n in r["statuses"].items())
        lines.append(f"| {r['kind']} | {r['expect']} | {r['requests']} | {statuses} | {r['failed']} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |")
    valid = [a for a in answers if a.kind in VALID_WEIGHTS]
    v_ms = np.array([a.seconds for a in valid]) * 1000 if valid else np.zeros(1)
    lines.append(f"| **valid, all** | 200 | {len(valid)} | | {sum(not a.passed for a in valid)} | "
                 f"{np.percentile(v_ms, 50):.0f} | {np.percentile(v_ms, 99):.0f} | {v_ms.max():.0f} |")
    bad = [a for a in answers if a.kind not in VALID_WEIGHTS]
    lines.append(f"| **bad, all** | 4xx | {len(bad)} | | {sum(not a.passed for a in bad)} | | | |")
    notes = [f"{args.clients} clients, {len(answers)} requests (seed {args.seed}) in {rss['seconds']:.0f} s; "
             f"server RSS {rss['before_mb']:.0f} MB after warm-up, {rss['peak_mb']:.0f} MB peak, "
             f"{rss['after_mb']:.0f} MB after (growth {rss['after_mb'] - rss['before_mb']:+.0f} MB); "
             f"answering /info/ afterwards: {rss['alive_after']}."]
    unanswered = [a for a in answers if a.status == 0]
    if unanswered:
        notes.append(f"Status 0: no HTTP answer ({len(unanswered)} requests: "
                     f"{sum('reset' in a.detail for a in unanswered)} reset connections, "
                     f"{sum(a.after_500 for a in unanswered)} of them sent right after a 500 on the same "
                     "keep-alive connection).")
    failures = [a for a in answers if not a.passed]
    if failures:
        seen, shown = set(), []
        for a in failures:
            if (a.kind, a.status) not in seen:
                seen.add((a.kind, a.status))
                shown.append(f"- {a.kind}: expected {a.expect}, got {a.status}: {a.detail.strip()[:160]}")
        notes.append("Missed criteria (first answer of each kind and status):\n\n" + "\n".join(shown))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def hostile_uploads(work: Path, seed: int) -> list[tuple[str, bytes]]:
    """A few hostile image files from the corpus generator (bombs, truncated, bit-flipped, not images)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from hostile_corpus import generate

    corpus = work / "corpus"
    cases = generate(corpus, seed, count=24, big_rows=100)
    wanted = ("truncated", "bitflip", "bomb_dims", "codestream_bomb", "deflate_bomb", "not_dicom",
              "no_pixels", "colour", "multiframe", "png_bomb", "png_truncated", "jpeg_bomb", "nifti_bomb",
              "bmp_bomb")
    picked = [c for c in cases if c.family in wanted and c.kind in ("dicom", "image")]
    return [(Path(c.path).name, (corpus / c.path).read_bytes()) for c in picked if _refused(corpus / c.path)]


def _refused(path: Path) -> bool:
    """Whether the readers refuse the file (a bit flip may leave a file loadable: it is then no 4xx case)."""
    from eclip_monai.errors import CXRDataError
    from eclip_monai.transforms.io import LoadCXRImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's decompression-bomb warning for the PNG bombs
        try:
            LoadCXRImage()(path)
        except CXRDataError:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/load_test")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="a running server instead of starting one (needs --ids and --outside)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server process, for its RSS")
    parser.add_argument("--ids", help="with --url: comma-separated image ids in its datastore")
    parser.add_argument("--outside", default="/etc/hostname", help="with --url: a server path outside it")
    parser.add_argument("--app", help="serve this copy of apps/monailabel_eclip instead")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        hostile = hostile_uploads(Path(tmp), args.seed)
        with contextlib.ExitStack() as stack:
            if args.url:
                from eclip_monai.data.phantom import ensure_phantom

                phantom = ensure_phantom(Path(tmp) / "phantom", studies=1, seed=args.seed, workers=1,
                                         eval_size=1, progress=False)
                upload = sorted((phantom / "mimic-cxr" / "files").rglob("*.dcm"))[0].read_bytes()
                server = Server(args.url, args.server_pid, args.ids.split(","), upload, args.outside)
            else:
                server = stack.enter_context(running_server(Path(tmp) / "server", app=args.app))
            server.hostile = hostile
            warm_up(server)
            answers, rss = run_load(server, build_requests(server, args.requests, args.seed), args.clients)
    rows = summarise(answers)
    table = markdown(rows, rss, args, answers)
    (out / "load_test.md").write_text(table)
    (out / "load_test.json").write_text(json.dumps({"clients": args.clients, "seed": args.seed, "rss": rss,
                                                    "rows": rows, "answers": [asdict(a) for a in answers]},
                                                   indent=1))
    print(table)
    return int(any(not a.passed for a in answers) or not rss["alive_after"])


if __name__ == "__main__":
    sys.exit(main())
