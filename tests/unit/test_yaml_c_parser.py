"""The config loader reads YAML with libyaml (ruamel.yaml.clib) when it is installed and with ruamel's Python parser
otherwise: both must give the same values, of the same types, at the same lines and columns, for every file the
project ships and for the corners of YAML an installer can type. A text the C parser does not load cleanly is read
by the Python parser, so every problem keeps its wording.
"""

from __future__ import annotations

import math
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from agent.config import loader
from agent.errors import ConfigError
from tests.support.paths import REPO

# The loader is only fast when the C parser is there; a wheel without it is a packaging defect, not a skip.
assert loader._CParser is not None, "ruamel.yaml.clib is a dependency (pyproject.toml): install it"

SHIPPED = sorted(p for p in subprocess.run(["git", "ls-files", "*.yaml", "*.yml"], cwd=REPO, capture_output=True,
                                          text=True, check=True).stdout.split())

CORNERS = {
    "scalars": "a: 0x1F\nb: 0o17\nc: 017\nd: 1_000\ne: .inf\nf: -.Inf\ng: .nan\nh: ~\ni: null\nj: yes\nk: on\n"
               "l: true\nm: 2026-12-06\nn: 1.5e3\no: '0e300000'\np: 0e300000\nq: \"\\u6c34\\u4f4d\"\nr: 12:30\n",
    "japanese": "nodes:\n  - id: \"0e300001\"\n    name: 川の水位 第一\n    site: 丹波\n",
    "blocks": "text: |\n  line one\n  line two\nfolded: >-\n  a\n  b\nplain: multi\n  line\n",
    "flow": "list: [1, 2, {a: b}]\nmap: {x: 1, y: [a, b]}\nempty: {}\nnone: []\n",
    "look_like_tags": "a: x&y\nb: 2*3\nc: 'q!'\nd: x!y\n",
    "document": "---\n# a comment\na: 1 # trailing\n...\n",
    "duplicates": "a: 1\nb: 2\na: 3\n",
    "bom": "\ufeffa: 1\n",
    "crlf": "a: 1\r\nb:\r\n  - x\r\n",
    "keys": "1: int key\n? complex\n: value\n'quoted key': v\n",
    "exclamations": "name: Help!\nnote: 'wow!'\n# careful!\n",
}


def plain_tree(value: Any, node: Any = None) -> Any:
    """Values with their exact types, and for every mapping and sequence the line and column of each key / item."""
    if isinstance(value, CommentedMap):
        # Where each key is; not where its value starts, which differs for an empty value and no message uses.
        return ("map", [(plain_tree(k), value.lc.data.get(k, [None, None])[:2], plain_tree(v))
                        for k, v in value.items()])
    if isinstance(value, CommentedSeq):
        return ("seq", [(value.lc.item(i), plain_tree(v)) for i, v in enumerate(value)])
    if isinstance(value, float) and math.isnan(value):
        return (type(value).__name__, "nan")
    return (type(value).__name__, value, getattr(value, "_width", None))


def node_marks(node: Any) -> Any:
    """Tag and start of every node, and the text of every key: what the duplicate-key and top-level messages use.
    A value's own text is left out (the constructed values are compared above; ruamel marks folds in a folded
    scalar's text, libyaml does not), and so is where an empty value starts (libyaml: after its key; ruamel: at
    the next token), which no message points at."""
    if node is None:
        return None
    if isinstance(node.value, list):
        if node.tag.endswith(":map"):
            inner = [(node_marks(k), k.value if isinstance(k.value, str) else None, node_marks(v))
                     for k, v in node.value]
        else:
            inner = [node_marks(n) for n in node.value]
        return (node.tag, node.start_mark.line, node.start_mark.column, inner)
    if node.tag.endswith(":null") and node.value == "":
        return (node.tag,)
    return (node.tag, node.start_mark.line, node.start_mark.column)


def both(text: str) -> tuple[Any, Any]:
    fast = loader._compose_in_c(text)
    yaml = loader._round_trip()
    try:
        root = yaml.compose(text)
        slow = (root, yaml.constructor.construct_document(root) if root is not None else None)
    except Exception as exc:  # noqa: BLE001 - compared below: the C path must not load what this refuses
        slow = exc
    return fast, slow


def assert_same(text: str, *, c_must_load: bool = False) -> None:
    """Same values, types and positions; or the C parser refused the text (libyaml reads YAML 1.1, which refuses
    a few 1.2 forms such as ``[a:b]``) and the Python parser reads it. Never the C parser loading what ruamel
    refuses."""
    fast, slow = both(text)
    if isinstance(slow, Exception):
        assert fast is None, f"the C parser loads what ruamel refuses ({slow!r})"
        return
    if fast is None:
        assert not c_must_load, "the C parser refused a text ruamel loads"
        return
    assert plain_tree(fast[1]) == plain_tree(slow[1])
    assert node_marks(fast[0]) == node_marks(slow[0])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p)
def test_every_shipped_yaml_file_reads_the_same(path: str) -> None:
    # The configs an installer starts from must take the fast path; compose files may use YAML 1.2 forms.
    assert_same((REPO / path).read_text(encoding="utf-8"), c_must_load=path.startswith("config/"))


@pytest.mark.parametrize("name", sorted(CORNERS))
def test_corners_of_yaml_read_the_same(name: str) -> None:
    assert_same(CORNERS[name], c_must_load=True)


def test_a_large_config_is_read_in_c() -> None:
    text = "nodes:\n" + "".join(f"  - id: \"{0x0E300000 + i:08x}\"\n    name: n{i}\n    kind: rain\n" for i in range(300))
    fast = loader._compose_in_c(text)
    assert fast is not None and len(fast[1]["nodes"]) == 300
    assert_same(text, c_must_load=True)


@pytest.mark.parametrize(("text", "refused"), [
    ("%YAML 1.1\n---\na: yes\n", False), ("a: !!str 12\n", False), ("a: [!!set {x}]\n", False),
    ("base: &b {host: h, port: 1}\nother: *b\nmerged:\n  <<: *b\n  port: 2\n", False), ("k: &a 0012\n", False), ("k: [*a]\n", True), ("k: ! 12\n", False),
    ("\ufeff%YAML 1.1\n---\nsiren: yes\n", False), ("# site\r%YAML 1.1\r---\rsiren: yes\r", False),
    ("k: {'id':!!str 0e300000}\n", False), ('k: ["a":!!int "017"]\n', True), ("\ufeff\ufeffid: 0e300001\n", False),
    ("siren: off\u2028threshold_mm: 50\n", True), ("siren: on # was off\x85threshold_mm: 50\n", True),
    ("note: |# free text\n  hello\n", True), ("note: >-# text\n  hello\n", True), ("a:\n\ufeff  - x\n", True),
    ("a: 1\nb: \x7f\n", True), ("a:\tb\n", True), ("a: [1, 2\n", True), ("a:\n\tb: 1\n", True)])
def test_tags_anchors_directives_control_characters_and_errors_are_left_to_the_python_parser(text: str, refused: bool) -> None:
    assert loader._compose_in_c(text) is None
    if refused:
        with pytest.raises(ConfigError):
            loader._compose(text, "g.yaml")
    else:
        assert loader._compose(text, "g.yaml")[1] is not None


SCALARS = st.one_of(st.integers(-10**6, 10**6).map(str), st.sampled_from(
    ["0x1a", "0o7", "007", "1_0", "yes", "No", "~", "null", ".5", "1e3", "-.inf", "'q'", '"d"', "2026-01-02", "a b",
     "川", "#x", "a #c", "\tx", "x\t", " ", "x\r",
     "\x85x", "x\u2028y", "\u2029", "\ufeffx", "|#", ">-#", ":!!str 1", "%YAML 1.1", "\r%x", "- x", "[]", "{}", "&a 1", "*a", "'", ":", "?", "@", "`"]))


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = []
    for i in range(draw(st.integers(1, 8))):
        indent = "  " * draw(st.integers(0, 2))
        shape = draw(st.sampled_from(["kv", "item", "key"]))
        value = draw(SCALARS)
        lines.append(f"{indent}k{i}: {value}" if shape == "kv" else f"{indent}- {value}" if shape == "item"
                     else f"{indent}k{i}:")
    return "\n".join(lines) + "\n"


@settings(max_examples=400, deadline=None)
@given(documents())
def test_generated_documents_read_the_same_or_are_left_to_the_python_parser(text: str) -> None:
    assert_same(text)
