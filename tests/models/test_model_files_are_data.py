"""Model files from strangers never choose code: every entry point refuses unregistered classes before importing.

Each crafted file names a standard-library class that would run a shell command when built with the file's
arguments; a marker file proves that nothing ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.distributed.export import ExportError, load_exported
from pipeline.models.baselines import CopyLastFrame
from pipeline.models.loading import ModelFileError, build_model, load_world_model, register_family
from pipeline.models.vjepa_ac import load_encoder_weights
from pipeline.nn.vit import VideoViT

HOSTILE = [
    ("subprocess.Popen", lambda marker: {"args": ["touch", str(marker)]}),
    ("os.system", lambda marker: {"command": f"touch {marker}"}),
    ("pipeline.models.loading.subprocess.Popen", lambda marker: {"args": ["touch", str(marker)]}),
]


def _crafted_ckpt(path: Path, class_path: str, hparams: dict) -> Path:
    torch.save({"state_dict": {}, "wm_class_path": class_path, "hyper_parameters": hparams}, path)
    return path


def _crafted_export(path: Path, class_path: str, hparams: dict) -> Path:
    meta = {"format": "wm-export/1", "weights": "both", "wm_class_path": class_path,
            "hyper_parameters": json.dumps(hparams), "checkpoint_format": "lightning", "global_step": "0"}
    save_file({"w": torch.zeros(1)}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(("class_path", "args"), HOSTILE)
def test_checkpoints_and_exports_naming_other_classes_are_refused(tmp_path: Path, class_path, args) -> None:
    marker = tmp_path / "ran"
    ckpt = _crafted_ckpt(tmp_path / "evil.ckpt", class_path, args(marker))
    with pytest.raises(ModelFileError, match="not a registered world-model family"):
        load_world_model(ckpt)
    export = _crafted_export(tmp_path / "evil.safetensors", class_path, args(marker))
    with pytest.raises(ExportError, match="not a registered world-model family"):
        load_exported(export)
    with pytest.raises(ModelFileError, match="expected pipeline.models.vjepa.VJEPAModule"):
        load_encoder_weights(VideoViT(dim=8, depth=1, heads=1, patch_size=8), str(ckpt))
    assert not marker.exists()


def test_unregistered_name_is_refused_before_anything_is_imported(tmp_path: Path) -> None:
    """A module named in the file is never imported: importing it would run its top-level code."""
    evil = tmp_path / "evilmod.py"
    evil.write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModelFileError):
            load_world_model(_crafted_ckpt(tmp_path / "m.ckpt", "evilmod.Model", {}))
    finally:
        sys.path.remove(str(tmp_path))
    assert not (tmp_path / "imported").exists() and "evilmod" not in sys.modules


def test_stored_arguments_are_checked_against_the_constructor(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"has no parameters \['command'\]"):
        build_model("pipeline.models.baselines.CopyLastFrame", {"context_frames": 2, "command": "rm -rf /"})
    with pytest.raises(ModelFileError, match=r"not plain data"):
        build_model("pipeline.models.baselines.CopyLastFrame", {"context_frames": torch.ones(1)})
    with pytest.raises(ModelFileError, match="not a mapping"):
        build_model("pipeline.models.baselines.CopyLastFrame", ["context_frames"])
    model = build_model("pipeline.models.baselines.CopyLastFrame", {"context_frames": 3, "_class_path": "x"})
    assert type(model) is CopyLastFrame and model.context_frames == 3


def test_register_family_admits_a_trusted_class(tmp_path: Path) -> None:
    class MyModel(CopyLastFrame):
        pass

    MyModel.__module__, MyModel.__qualname__ = CopyLastFrame.__module__, "MyModel"
    with pytest.raises(ModelFileError):
        build_model("pipeline.models.baselines.MyModel", {})
    import pipeline.models.baselines as baselines

    baselines.MyModel = MyModel
    try:
        register_family(MyModel)
        assert type(build_model("pipeline.models.baselines.MyModel", {"context_frames": 2})) is MyModel
    finally:
        from pipeline.models import loading

        loading.FAMILIES.discard("pipeline.models.baselines.MyModel")
        del baselines.MyModel
    with pytest.raises(TypeError):
        register_family(dict)


@pytest.mark.parametrize("command", [["eval", "--data", "x", "--out", "o.json"], ["plan", "--offline", "--data", "x"]])
def test_commands_refuse_a_crafted_checkpoint_in_one_line(tmp_path: Path, command) -> None:
    marker = tmp_path / "ran"
    ckpt = _crafted_ckpt(tmp_path / "evil.ckpt", "subprocess.Popen", {"args": ["touch", str(marker)]})
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", command[0], "--ckpt", str(ckpt), *command[1:]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not a registered world-model family" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()
