"""The Japanese guides follow the English ones: same headings, code blocks, commands and repo links.

Pairs: README.md's opening and "Set-up" sections with docs/README.ja.md, and deploy/{edge,backend}/README.md
with README.ja.md beside them. The English text is authoritative; these tests say where the Japanese one lags.
The glossary (docs/glossary.md) must carry the terms the dashboards and alert texts already use.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (English file, Japanese file), paths relative to the repository.
PAIRS = [
    ("README.md", "docs/README.ja.md"),
    ("deploy/edge/README.md", "deploy/edge/README.ja.md"),
    ("deploy/backend/README.md", "deploy/backend/README.ja.md"),
]

GLOSSARY = "docs/glossary.md"

#: Inline code that starts with one of these is a command a reader types: both languages must show the same ones.
COMMAND_PREFIXES = ("denen ", "bash ", "sudo ", "systemctl ", "journalctl ")

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_LINK = re.compile(r"(?<!!)\[(?:[^\]]|\](?!\())*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_JAPANESE = re.compile(r"[\u3040-\u30ff]")  # kana: kanji alone also occur in the English guides


@dataclass
class Guide:
    """What of a Markdown guide must match across languages."""

    headings: list[tuple[int, tuple[str, ...]]]  # (level, inline code in the heading)
    code_blocks: list[str]  # every fenced block, fences and indentation included, byte for byte
    commands: Counter[str]  # inline code starting with a COMMAND_PREFIXES entry, whitespace folded
    links: Counter[str]  # "path#anchor" of links into the repository, resolved from the repository's root
    external: Counter[str]  # http(s) links
    prose_by_section: list[str]  # text outside code blocks, one entry per heading (first: before any heading)


def split_blocks(text: str) -> tuple[list[str], list[str]]:
    """Separate fenced code blocks from the prose; the prose keeps a placeholder line per block."""
    prose: list[str] = []
    blocks: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i].rstrip("\n"))
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        fence = m.group(2)
        block = [lines[i]]
        i += 1
        while i < len(lines):
            block.append(lines[i])
            i += 1
            if lines[i - 1].strip().startswith(fence) and lines[i - 1].strip().strip(fence[0]) == "":
                break
        else:
            raise AssertionError(f"unclosed code block starting {block[0].strip()!r}")
        blocks.append("".join(block))
        prose.append("\n")
    return prose, blocks


def _resolve(link: str, doc: str) -> str | None:
    """A link's repository path (and anchor), None for links outside the repository, "" for links not compared."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
        return None
    path, _, anchor = link.partition("#")
    if path:
        target = PurePosixPath(doc).parent / path
        parts: list[str] = []
        for part in target.parts:
            if part == "..":
                if not parts:
                    raise AssertionError(f"{doc}: link {link!r} leaves the repository")
                parts.pop()
            elif part != ".":
                parts.append(part)
        resolved = "/".join(parts)
    else:
        resolved = doc
    if not doc.endswith(".ja.md") and (resolved.endswith(".ja.md") or resolved == GLOSSARY):
        return ""  # an English guide's pointer to its translation or the glossary has no Japanese counterpart
    # A Japanese guide may point at the Japanese version of a guide where the English one points at the English.
    resolved = re.sub(r"\.ja\.md$", ".md", resolved)
    return resolved + (f"#{anchor}" if anchor else "")


def parse(text: str, doc: str) -> Guide:
    """Read the parts of one guide that must match; ``doc`` is its path in the repository, for links."""
    prose_lines, blocks = split_blocks(text)
    headings: list[tuple[int, tuple[str, ...]]] = []
    sections: list[list[str]] = [[]]
    for line in prose_lines:
        m = _HEADING.match(line.rstrip("\n"))
        if m:
            code = tuple(" ".join(c.split()) for _, c in _INLINE_CODE.findall(m.group(2)))
            headings.append((len(m.group(1)), code))
            sections.append([])
        sections[-1].append(line)
    prose = "".join(prose_lines)
    commands = Counter(
        c for c in (" ".join(span.split()) for _, span in _INLINE_CODE.findall(prose)) if c.startswith(COMMAND_PREFIXES)
    )
    without_code = _INLINE_CODE.sub("", prose)
    links: Counter[str] = Counter()
    external: Counter[str] = Counter()
    for target in _LINK.findall(without_code):
        resolved = _resolve(target, doc)
        if resolved is None:
            external[target] += 1
        elif resolved:
            links[resolved] += 1
    for url in _AUTOLINK.findall(without_code):
        external[url] += 1
    return Guide(headings, blocks, commands, links, external, ["".join(s) for s in sections])


def readme_part(text: str) -> str:
    """README.md's opening and its "Set-up" section: what docs/README.ja.md translates."""
    lines = text.splitlines(keepends=True)
    in_code = False
    start = None
    for n, line in enumerate(lines):
        if _FENCE.match(line.rstrip("\n")):
            in_code = not in_code
        if in_code or not line.startswith("## "):
            continue
        if start is not None:
            return "".join(lines[:n])
        if line[3:].startswith("Set-up"):
            start = n
    raise AssertionError('README.md has no "## Set-up" section followed by another "## " section')


def source_note(text: str) -> tuple[str, str]:
    """Split off the note under the title that names the English original; returns (note, the rest)."""
    lines = text.splitlines(keepends=True)
    assert lines and lines[0].startswith("# "), "a Japanese guide starts with its title"
    i = 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    j = i
    while j < len(lines) and lines[j].startswith(">"):
        j += 1
    assert j > i, "under the title, a quoted note (> ...) names the English original"
    return "".join(lines[i:j]), "".join(lines[:i] + lines[j:])


def differences(english: str, japanese: str, en_doc: str, ja_doc: str) -> list[str]:
    """Every way the Japanese guide departs from the English one (empty when in step)."""
    en, ja = parse(english, en_doc), parse(japanese, ja_doc)
    out: list[str] = []
    if [lvl for lvl, _ in en.headings] != [lvl for lvl, _ in ja.headings]:
        out.append(f"heading levels differ: {[lvl for lvl, _ in en.headings]} vs {[lvl for lvl, _ in ja.headings]}")
    else:
        for n, ((_, a), (_, b)) in enumerate(zip(en.headings, ja.headings, strict=True)):
            if a != b:
                out.append(f"heading {n + 1}: code {a} vs {b}")
    if len(en.code_blocks) != len(ja.code_blocks):
        out.append(f"{len(en.code_blocks)} code blocks vs {len(ja.code_blocks)}")
    for n, (a, b) in enumerate(zip(en.code_blocks, ja.code_blocks)):
        if a != b:
            out.append(f"code block {n + 1} differs:\n{a}---\n{b}")
    for what, a, b in (("commands", en.commands, ja.commands), ("repo links", en.links, ja.links),
                       ("external links", en.external, ja.external)):
        if a != b:
            only_en, only_ja = sorted((a - b).elements()), sorted((b - a).elements())
            out.append(f"{what}: only in English {only_en}, only in Japanese {only_ja}")
    return out


def _pair(en_path: str, ja_path: str) -> tuple[str, str]:
    english = (ROOT / en_path).read_text(encoding="utf-8")
    if en_path == "README.md":
        english = readme_part(english)
    japanese = (ROOT / ja_path).read_text(encoding="utf-8")
    return english, japanese


@pytest.mark.parametrize(("en_path", "ja_path"), PAIRS)
def test_japanese_guide_follows_the_english_one(en_path: str, ja_path: str) -> None:
    english, japanese = _pair(en_path, ja_path)
    _, body = source_note(japanese)
    assert differences(english, body, en_path, ja_path) == []


@pytest.mark.parametrize(("en_path", "ja_path"), PAIRS)
def test_japanese_guide_names_its_english_original(en_path: str, ja_path: str) -> None:
    _, japanese = _pair(en_path, ja_path)
    note, _ = source_note(japanese)
    targets = [_resolve(t, ja_path) for t in _LINK.findall(note)]
    assert en_path in targets, f"{ja_path}: the note under the title links to {en_path}"
    assert "英語版" in note and "優先" in note, f"{ja_path}: the note says the English version prevails"


@pytest.mark.parametrize(("en_path", "ja_path"), PAIRS)
def test_repo_links_point_at_files_that_exist(en_path: str, ja_path: str) -> None:
    for doc, text in zip((en_path, ja_path), _pair(en_path, ja_path), strict=True):
        for target in _LINK.findall(_INLINE_CODE.sub("", "".join(split_blocks(text)[0]))):
            if _resolve(target, doc) is None or target.startswith("#"):
                continue
            path = (ROOT / doc).parent / target.partition("#")[0]
            assert path.exists(), f"{doc}: link to {target} ({path} is missing)"


@pytest.mark.parametrize(("en_path", "ja_path"), PAIRS)
def test_every_section_is_translated(en_path: str, ja_path: str) -> None:
    _, japanese = _pair(en_path, ja_path)
    _, body = source_note(japanese)
    for n, section in enumerate(parse(body, ja_path).prose_by_section):
        if section.strip():
            assert _JAPANESE.search(section), f"{ja_path}: section {n} has no Japanese text:\n{section[:300]}"


# The checker itself must notice what it is there for: each mutation of a real pair is reported.

def _mutations(japanese: str, ja_path: str) -> dict[str, str]:
    _, ja_blocks = split_blocks(japanese)
    block = ja_blocks[0]
    heading = next(line for line in japanese.splitlines(keepends=True) if line.startswith("## "))
    command = next(c for c in sorted(parse(japanese, ja_path).commands))
    return {
        "a code block's byte": japanese.replace(block, block.replace("\n", " \n", 1), 1),
        "a missing heading": japanese.replace(heading, "", 1),
        "a heading one level down": japanese.replace(heading, "#" + heading, 1),
        "a missing code block": japanese.replace(block, "", 1),
        "a missing command": japanese.replace(f"`{command}`", "", 1),
        "an extra repo link": japanese + "\n[設定](../config/README.md)\n",
    }


@pytest.mark.parametrize(("en_path", "ja_path"), PAIRS[1:])
def test_the_checker_reports_each_kind_of_drift(en_path: str, ja_path: str) -> None:
    english, japanese = _pair(en_path, ja_path)
    _, body = source_note(japanese)
    assert differences(english, body, en_path, ja_path) == []
    for what, mutated in _mutations(body, ja_path).items():
        assert mutated != body, what
        assert differences(english, mutated, en_path, ja_path), f"not noticed: {what}"


def test_readme_part_stops_after_set_up() -> None:
    text = "# t\n\nintro\n\n```sh\n## not a heading\n```\n\n## Set-up: x\n\nbody\n\n## Next\n\nlater\n"
    assert readme_part(text) == "# t\n\nintro\n\n```sh\n## not a heading\n```\n\n## Set-up: x\n\nbody\n\n"


# Glossary

#: Terms the glossary must carry, and where each is already used (the glossary follows the product, not the reverse).
REQUIRED_TERMS = {
    "SOS発信": "agent/rules/",
    "わな作動": "agent/console/pages.py",
    "水位": "agent/dev/liveview.py",
    "水防団待機水位": "deploy/backend/grafana/dashboards/river-rain.json",
    "はん濫注意水位": "deploy/backend/grafana/dashboards/river-rain.json",
    "避難判断水位": "deploy/backend/grafana/dashboards/river-rain.json",
    "はん濫危険水位": "deploy/backend/grafana/dashboards/river-rain.json",
}


def source_text(where: str) -> str:
    """The text of a file, or of every Python module in a package folder."""
    path = ROOT / where
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def glossary_rows() -> list[list[str]]:
    rows = []
    for line in (ROOT / GLOSSARY).read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize(("term", "used_in"), sorted(REQUIRED_TERMS.items()))
def test_glossary_has_the_terms_the_product_uses(term: str, used_in: str) -> None:
    assert term in source_text(used_in), f"{term} is no longer used in {used_in}"
    japanese_cells = {row[1] for row in glossary_rows() if len(row) > 1}
    assert any(term == cell or term in cell.split(" / ") for cell in japanese_cells), f"{GLOSSARY}: no row for {term}"


def test_glossary_stage_names_match_the_gateway() -> None:
    rules = source_text("agent/rules/")
    stages = re.findall(r'(\d): \("river_\w+", "([^"]+)"', rules)
    assert len(stages) == 4
    for level, name in stages:
        row = next((r for r in glossary_rows() if len(r) > 1 and r[1] == name), None)
        assert row is not None, f"{GLOSSARY}: no row for stage {level} {name}"
        assert f"stage {level}" in " ".join(row), f"{GLOSSARY}: the row for {name} names stage {level}"
