"""Faults during training and at its edges: a full disk or read-only folder while writing checkpoints and
results, NaN/Inf losses and gradients, damaged checkpoints at every loader, and too many bad samples.

Training runs reuse the toy setup of ``test_trainer`` (4 iterations an epoch of 8 pairs). ENOSPC is simulated
by making ``torch.save`` (checkpoints) or ``open`` (results) raise ``OSError(errno.ENOSPC)`` part-way, as a
full disk would; a read-only folder is ``chmod 555`` where that binds (not as root, whom the permission bits
do not stop) and otherwise ``open`` raising ``EROFS``, as a read-only mount would. SIGKILL resume lives in
``test_fault_injection.py``.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from test_trainer import ToyECLIP, build

from eclip_monai import files
from eclip_monai.engines import ECLIPTrainer
from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.run import write_results
from eclip_monai.handlers import AtomicCheckpointSaver, TrainingGuard, VerifiedCheckpointLoader
from eclip_monai.inference.writers import SaveFindingsd
from eclip_monai.networks import build_eclip, load_weights, read_state_dict
from eclip_monai.networks.checkpoint import DIGEST_KEY, load_tensors

ROOT = Path(__file__).resolve().parents[1]


def full_disk_after(nbytes: int):
    """A ``torch.save`` that writes ``nbytes`` of the checkpoint, then fails as a full disk does."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only: ``chmod 555`` when that stops this user, else ``open`` for writing fails with
    ``EROFS`` inside it (as root, where permission bits do not bind)."""
    folders: list[Path] = []

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        folders.append(folder)
        if os.access(folder, os.W_OK):  # root
            real_open = open

            def guarded(path, mode="r", *args, **kwargs):
                if any(c in mode for c in "wax+") and Path(path).parent in folders:
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return real_open(path, mode, *args, **kwargs)

            monkeypatch.setattr(files, "open", guarded, raising=False)
        return folder

    yield make
    for folder in folders:
        folder.chmod(0o755)


def saver_run(folder: Path, epochs: int, **kwargs) -> tuple:
    """A toy run with interval checkpoints every epoch and ``final.pt``; returns ``(setup, saver)``."""
    setup = build(max_epochs=epochs, mode="off")
    saver = AtomicCheckpointSaver(str(folder), setup.save_dict, save_interval=1, save_final=True,
                                  final_filename="final.pt", **kwargs)
    saver.attach(setup.trainer)
    return setup, saver


# ---- a full disk or a read-only folder --------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    setup, _ = saver_run(tmp_path, epochs=2)
    setup.trainer.add_event_handler(Events.EPOCH_STARTED(once=2),
                                    lambda _: monkeypatch.setattr(torch, "save", full_disk_after(1000)))
    full = r"No space left on device while writing a checkpoint.*checkpoint_epoch=2\.pt"
    with pytest.raises(OSError, match=full) as error:
        setup.trainer.run()
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # no partial, no final.pt
    assert load_tensors(tmp_path / "checkpoint_epoch=1.pt")["trainer"]["iteration"] == 4


def test_a_read_only_checkpoint_folder_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, read_only):
    setup, _ = saver_run(tmp_path, epochs=2)
    setup.trainer.add_event_handler(Events.EPOCH_STARTED(once=2), lambda _: read_only(tmp_path))
    with pytest.raises(OSError, match=r"while writing a checkpoint.*checkpoint_epoch=2\.pt") as error:
        setup.trainer.run()
    assert error.value.errno in (errno.EACCES, errno.EROFS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    load_tensors(tmp_path / "checkpoint_epoch=1.pt")


def test_a_full_disk_while_writing_results_leaves_the_earlier_results_whole(tmp_path, monkeypatch):
    write_results({"chexpert": {"zero_shot": {"auroc": 0.9}}}, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            handle.write(b"{")  # a few bytes get out, then the disk is full
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return handle

    monkeypatch.setattr(files, "open", full_disk, raising=False)
    with pytest.raises(OSError, match=r"No space left on device while writing evaluation results.*metrics"):
        write_results({"chexpert": {"zero_shot": {"auroc": 0.5}}}, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no partial file, old ones kept
    assert json.loads((tmp_path / "metrics.json").read_text())["chexpert"]["zero_shot"]["auroc"] == 0.9


def test_a_read_only_results_folder_names_the_file_and_leaves_nothing(tmp_path, read_only):
    (tmp_path / "out").mkdir()
    out = read_only(tmp_path / "out")
    with pytest.raises(OSError, match=r"while writing evaluation results.*out/metrics\.json"):
        write_results({"chexpert": {"zero_shot": {"auroc": 0.9}}}, out)
    image = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "/in/a.dcm"})
    writer = SaveFindingsd("probabilities", ["Effusion"], out)
    with pytest.raises(OSError, match=r"while writing an inference result.*out/a_embedding\.npy"):
        writer({"image": image, "probabilities": np.array([0.5]), "embedding": np.zeros(4)})
    assert list(out.iterdir()) == []


# ---- NaN and Inf ------------------------------------------------------------------------------------------


def poison_loss(setup, iterations: set[int]) -> None:
    """Make the contrastive loss NaN at the given iterations, as a diverging run would."""
    loss = setup.trainer.loss_function

    def poisoned(*args):
        value = loss(*args)
        return value * float("nan") if setup.trainer.state.iteration in iterations else value

    setup.trainer.loss_function = poisoned


def weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_a_nan_loss_stops_naming_the_step_the_samples_and_the_term_before_touching_the_weights(tmp_path):
    setup, _ = saver_run(tmp_path, epochs=2)
    poison_loss(setup, {6})
    kept = {}
    setup.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5),
                                    lambda _: kept.update(weights(setup.network)))
    stop = r"non-finite loss_clip \(nan\) at iteration 6 \(epoch 2\); batch sample ids: \['p\d+/image\.dcm'"
    with pytest.raises(FloatingPointError, match=stop) as error:
        setup.trainer.run()
    assert error.value.args[0].count("/image.dcm") == 8  # every sample of the batch is named
    assert all(torch.equal(v, kept[k]) for k, v in setup.network.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # failed: no final.pt


def test_a_nan_gradient_with_a_finite_loss_is_caught_naming_the_parameter():
    setup = build(max_epochs=1, mode="off")
    weight = setup.network.image_proj.weight
    setup.trainer.add_event_handler(Events.ITERATION_STARTED(once=2),
                                    lambda _: weight.register_hook(lambda grad: grad * float("inf")))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient of image_proj\.weight at iteration 2"):
        setup.trainer.run()


def test_skip_drops_non_finite_steps_up_to_the_limit_then_stops():
    setup = build(max_epochs=2, mode="off")
    setup.trainer.nonfinite_policy, setup.trainer.max_nonfinite_skips = "skip", 2
    poison_loss(setup, {2, 7})
    setup.trainer.run()
    assert [o["skipped"] for o in setup.outputs] == [0, 1, 0, 0, 0, 0, 1, 0]
    assert [o.get("nonfinite", 0) for o in setup.outputs] == [0, 1, 0, 0, 0, 0, 1, 0]
    assert setup.trainer.state_dict()["nonfinite_steps"] == 2  # checkpointed, so a resumed run keeps counting
    assert all(torch.isfinite(v).all() for v in setup.network.state_dict().values())

    again = build(max_epochs=2, mode="off")
    again.trainer.nonfinite_policy, again.trainer.max_nonfinite_skips = "skip", 2
    poison_loss(again, {2, 3, 7})
    limit = r"iteration 7 .*3 steps dropped so far .*max_nonfinite_skips=2"
    with pytest.raises(FloatingPointError, match=limit):
        again.trainer.run()


def test_a_checkpoint_holding_nan_is_never_written_as_final_or_best(tmp_path):
    network = torch.nn.Linear(2, 2)
    best = AtomicCheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=True,
                                 key_metric_name="score", key_metric_filename="model.pt")
    evaluator = Engine(lambda e, b: None)
    scores = iter([0.5, 0.9])
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=next(scores)))
    best.attach(evaluator)
    evaluator.run([0], max_epochs=1)
    saved = load_tensors(tmp_path / "model.pt")["model"]
    with torch.no_grad():
        network.weight[0, 0] = float("nan")
    refused = r"model\.pt: refusing to save a checkpoint whose model\.weight"
    with pytest.raises(FloatingPointError, match=refused):
        evaluator.run([0], max_epochs=2)  # a better score, but diverged weights
    assert torch.equal(load_tensors(tmp_path / "model.pt")["model"]["weight"], saved["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_training_bundle_has_a_non_finite_policy():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/train.json"))
    assert (parser["nonfinite_policy"], parser["max_nonfinite_skips"]) == ("stop", 10)
    trainer = parser["train"]["trainer"]
    assert trainer["nonfinite_policy"] == "@nonfinite_policy"
    assert trainer["max_nonfinite_skips"] == "@max_nonfinite_skips"
    network = ToyECLIP()
    with pytest.raises(ValueError, match="nonfinite_policy: expected 'stop' or 'skip', found 'ignore'"):
        ECLIPTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=network, loss_function=None,
                     optimizer=torch.optim.SGD(network.parameters(), 0.1), nonfinite_policy="ignore")


# ---- damaged checkpoints at every loader ------------------------------------------------------------------


def flip_a_tensor_byte(path: Path) -> None:
    """Change one byte inside a stored tensor (the zip records are stored uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    header = record.header_offset  # local header: 30 bytes, then the name and extra field, then the data
    name_length = int.from_bytes(raw[header + 26:header + 28], "little")
    extra_length = int.from_bytes(raw[header + 28:header + 30], "little")
    start = header + 30 + name_length + extra_length
    raw[start + record.file_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))


class Payload:
    def __reduce__(self):
        return (os.system, ("echo tampered",))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    """A good training checkpoint of the toy setup (``good``) and damaged ones: ``empty``, ``truncated``,
    ``tampered`` (one tensor byte changed), ``code`` (a pickle that runs a command) and ``foreign`` (the toy
    network at another width); plus the same for a tiny eCLIP's ``{"model": ...}`` (``eclip_*``)."""
    tmp = tmp_path_factory.mktemp("damaged")
    setup, _ = saver_run(tmp / "run", epochs=1)
    setup.trainer.run()
    good = tmp / "run" / "checkpoint_epoch=1.pt"
    paths = {"good": good}
    for prefix, source in (("", good), ("eclip_", tmp / "eclip.pt")):
        if prefix:
            torch.manual_seed(0)
            net = build_eclip(model_name="eclip-tiny", image_size=64, experts=False)
            saver = AtomicCheckpointSaver(str(tmp), {"model": net}, save_final=True,
                                          final_filename="eclip.pt")
            engine = Engine(lambda e, b: None)
            saver.attach(engine)
            engine.run([0])
            paths["eclip_good"] = source
        data = source.read_bytes()
        (tmp / f"{prefix}empty.pt").write_bytes(b"")
        (tmp / f"{prefix}truncated.pt").write_bytes(data[: len(data) // 2])
        tampered = tmp / f"{prefix}tampered.pt"
        tampered.write_bytes(data)
        flip_a_tensor_byte(tampered)
        torch.save({"model": Payload()}, tmp / f"{prefix}code.pt")
        for kind in ("empty", "truncated", "tampered", "code"):
            paths[f"{prefix}{kind}"] = tmp / f"{prefix}{kind}.pt"
    foreign = ToyECLIP(dim=16)
    stored = {k: v for k, v in load_tensors(good).items() if k != "network"}
    torch.save({"network": foreign.state_dict(), **stored}, tmp / "foreign.pt")
    torch.save({"model": build_eclip(model_name="eclip-tiny", image_size=96, experts=False).state_dict()},
               tmp / "eclip_foreign.pt")
    paths.update(foreign=tmp / "foreign.pt", eclip_foreign=tmp / "eclip_foreign.pt")
    return paths


def label_app_network():
    """``apps/monailabel_eclip/lib/network.py`` (no MONAI Label import), loaded by file like the app does."""
    name = "eclip_label_network"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "apps/monailabel_eclip/lib/network.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


REFUSALS = {
    "empty": r"file is empty \(0 bytes\)",
    "truncated": r"expected a readable PyTorch checkpoint .*not truncated.*found \w*Error",
    "tampered": r"sha256: expected contents matching the checkpoint's own SHA-256",
    "code": r"expected a readable PyTorch checkpoint .*no pickled code.*found UnpicklingError",
}


def test_a_good_checkpoint_carries_a_digest_and_resumes(damaged):
    assert isinstance(torch.load(damaged["good"], weights_only=True)[DIGEST_KEY], str)
    setup = build(max_epochs=2, mode="off")
    VerifiedCheckpointLoader(str(damaged["good"]), setup.save_dict).attach(setup.trainer)
    setup.trainer.run()
    assert len(setup.outputs) == 4  # epoch 2 only


@pytest.mark.parametrize("kind", [*REFUSALS, "foreign"])
def test_resume_refuses_a_damaged_checkpoint_naming_it(damaged, kind):
    setup = build(max_epochs=2, mode="off")
    VerifiedCheckpointLoader(str(damaged[kind]), setup.save_dict).attach(setup.trainer)
    expected = REFUSALS.get(kind, r"network: the stored network does not fit this run's")
    with pytest.raises(CXRDataError, match=rf"{kind}\.pt: {expected}"):
        setup.trainer.run()
    assert not setup.outputs


def test_resume_from_an_earlier_versions_checkpoint_starts_missing_optional_state_fresh(damaged, tmp_path):
    setup = build(max_epochs=2, mode="off")
    best = AtomicCheckpointSaver(str(tmp_path), {"model": setup.network}, save_key_metric=True,
                                 key_metric_name="score", key_metric_filename="model.pt")
    load_dict = {**setup.save_dict, "best_model": best}  # the toy checkpoint has no best-model tracking
    with pytest.raises(CXRDataError, match=r"best_model: expected a checkpoint with entries"):
        VerifiedCheckpointLoader(str(damaged["good"]), load_dict)(setup.trainer)
    VerifiedCheckpointLoader(str(damaged["good"]), load_dict, optional=["best_model"]).attach(setup.trainer)
    setup.trainer.run()
    assert len(setup.outputs) == 4 and best.state_dict() == {"_saved": []}


def test_resume_from_a_weights_only_file_says_what_is_missing(damaged):
    setup = build(max_epochs=2, mode="off")
    VerifiedCheckpointLoader(str(damaged["eclip_good"]), setup.save_dict).attach(setup.trainer)
    missing = r"eclip\.pt: network: expected a checkpoint with entries \['network'.*found \['model'\]"
    with pytest.raises(CXRDataError, match=missing):
        setup.trainer.run()


@pytest.mark.parametrize("kind", [*REFUSALS, "foreign"])
def test_evaluation_packaging_inference_and_the_label_app_refuse_a_damaged_checkpoint(damaged, kind):
    path = damaged[f"eclip_{kind}"]
    expected = REFUSALS.get(kind, "the weights do not fit the network")
    network = build_eclip(model_name="eclip-tiny", image_size=64, experts=False)
    with pytest.raises(CXRDataError, match=rf"{path.name}: .*{expected}"):  # evaluate.json, rag, gaze search
        load_weights(network, path)
    if kind != "foreign":  # packaging and the app's start-up read the weights without a network to fit
        with pytest.raises(CXRDataError, match=rf"{path.name}: {expected}"):
            read_state_dict(path)  # scripts/package_bundle.py
        with pytest.raises(CXRDataError, match=rf"{path.name}: {expected}"):
            label_app_network().checkpoint_has_processor(str(path))  # the MONAI Label app's start-up
    engine = Engine(lambda e, b: None)  # inference: the handler inference.json's CheckpointLoader should be
    VerifiedCheckpointLoader(str(path), {"model": network}).attach(engine)
    with pytest.raises(CXRDataError, match=rf"{path.name}: "):
        engine.run([0])
    load_weights(network, damaged["eclip_good"])  # and the good one loads everywhere


def test_the_training_bundle_resumes_through_the_verifying_loader():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/train.json"))
    assert parser["checkpoint_loader"]["_target_"] == "eclip_monai.handlers.VerifiedCheckpointLoader"
    assert parser["checkpoint_objects"]["best_model"] == "@best_model_saver"  # model.pt's score is resumed
    assert "@best_model_saver" in parser["validate"]["handlers"]
    assert parser["best_model_saver"]["_target_"] == parser["checkpoint_saver"]["_target_"] == \
        "eclip_monai.handlers.AtomicCheckpointSaver"


# ---- too many bad samples ---------------------------------------------------------------------------------


def test_a_run_with_too_many_bad_samples_stops_with_counts_per_reason_and_example_files():
    guard = TrainingGuard(max_bad_fraction=0.05, require_experts=False, min_samples=16, examples=2)
    setup = build(max_epochs=2, corrupt=(5, 17, 30), mode="off", handlers=(guard,))
    setup.trainer.data_loader.loader.dataset.describe = True  # as train.json's datasets
    with pytest.raises(RuntimeError, match=r"3 of 32 samples seen") as error:
        setup.trainer.run()
    message = str(error.value)
    assert "By reason: 'PixelData: expected 64 pixels': 3 (e.g. p" in message
    assert message.count("/corrupt.dcm") == 2  # `examples` files per reason
    restored = TrainingGuard()
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # checkpointed with the guard
    assert restored.bad_reasons == {"PixelData: expected 64 pixels": 3}


def test_the_training_bundle_describes_bad_samples_and_sets_the_share():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/train.json"))
    assert parser["train"]["dataset"]["describe"] and parser["train"]["expert_dataset"]["describe"]
    assert (parser["max_bad_fraction"], parser["bad_fraction_min_samples"]) == (0.05, 200)
    assert parser["training_guard"]["min_samples"] == "@bad_fraction_min_samples"
