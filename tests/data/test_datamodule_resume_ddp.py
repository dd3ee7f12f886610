"""Exact resume of the data stream in a 2-process DDP fit (gloo on the CPU) with 2 DataLoader workers per rank:
a fit resumed from a mid-epoch checkpoint sees the same samples and losses on every rank as the run that saved it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SCRIPT = """
import json, sys
from pathlib import Path
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
sys.path.insert(0, {here!r})
from test_datamodule_fit import Recorder, make_dm

root = Path({root!r})

def fit(tag, ckpt_path=None, **kw):
    model = Recorder()
    args = dict(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False)
    args.update(kw)
    trainer = pl.Trainer(**args)
    trainer.fit(model, make_dm(root / "data", steps_per_epoch=6), ckpt_path=ckpt_path)
    out = {{"keys": model.keys.get(0, []), "losses": model.losses, "weight": model.layer.weight.tolist()}}
    (root / f"{{tag}}-rank{{trainer.global_rank}}.json").write_text(json.dumps(out))

# the uninterrupted run saves a checkpoint after step 3 (its loaders have already prefetched beyond it)
fit("reference", enable_checkpointing=True,
    callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1)])
fit("resumed", ckpt_path=str(next((root / "ckpt").glob("*step=3*.ckpt"))))
"""


@pytest.mark.multiproc
@pytest.mark.slow
def test_ddp_resume_sees_the_same_samples_on_every_rank(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    try:
        from test_datamodule_fit import write_dataset
    finally:
        sys.path.remove(str(HERE))
    write_dataset(tmp_path / "data", shards=5, bad=False)  # 5 shards over 2 ranks: unequal shares
    script = tmp_path / "fit_ddp.py"
    script.write_text(SCRIPT.format(here=str(HERE), root=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {tag: [json.loads((tmp_path / f"{tag}-rank{r}.json").read_text()) for r in range(2)]
            for tag in ("reference", "resumed")}  # fmt: skip
    for rank in range(2):
        reference, resumed = runs["reference"][rank], runs["resumed"][rank]
        assert len(reference["keys"]) == 12  # 6 steps x batch 2 on each rank
        assert resumed["keys"] == reference["keys"][6:]
        assert resumed["losses"] == pytest.approx(reference["losses"][3:], rel=1e-6)
    assert set(runs["reference"][0]["keys"]) != set(runs["reference"][1]["keys"])  # ranks read different shards
    assert runs["resumed"][0]["weight"] == runs["resumed"][1]["weight"] == runs["reference"][0]["weight"]
