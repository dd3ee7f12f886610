from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.eval import weights_command
from pipeline.eval.features import build_extractors
from pipeline.eval.weights import sha256_of


@pytest.fixture
def empty_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("WM_I3D_WEIGHTS", "WM_I3D_TORCHSCRIPT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_where_lists_found_and_missing_files(empty_env: Path, capsys: pytest.CaptureFixture) -> None:
    (empty_env / "cache").mkdir()
    (empty_env / "cache" / "i3d_torchscript.pt").write_bytes(b"x")
    assert weights_command.main(["where"]) == 0
    out = capsys.readouterr().out
    assert f"i3d_torchscript  found    {empty_env / 'cache' / 'i3d_torchscript.pt'}" in out
    assert f"sha256={sha256_of(empty_env / 'cache' / 'i3d_torchscript.pt')}" in out
    assert "i3d              missing" in out and "$WM_I3D_WEIGHTS unset" in out
    assert f"lpips-alex       missing  {empty_env / 'torch_home' / 'hub' / 'checkpoints' / 'alexnet'}" in out


def test_download_failure_is_reported(empty_env: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.eval import weights

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    assert weights_command.main(["download", "i3d"]) == 1
    assert "network unreachable" in capsys.readouterr().err
    assert not list((empty_env / "cache").glob("*"))


def test_absent_i3d_is_recorded_with_the_reason(empty_env: Path) -> None:
    ex = build_extractors(lpips=False)
    assert ex.i3d is None and ex.info["i3d"]["file"] == "absent"
    assert "i3d_pretrained_400.pt" in ex.info["i3d"]["reason"] and "wm weights where" in ex.info["i3d"]["reason"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_extractors(i3d_weights=str(empty_env / "missing.pt"), lpips=False)
