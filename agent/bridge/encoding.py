"""InfluxDB line protocol text, as both InfluxDB 1.6.7 and VictoriaMetrics read it alike: escaping of measurement
names, keys, tag values and string fields, the float format, and the limits of a line
(https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/). Why each rule: the "Text"
part of :mod:`agent.bridge.lineproto`.
"""

from __future__ import annotations

import re

__all__ = [
    "CONTROL_RE",
    "FIELDS_MAX",
    "FIELD_KEY_MAX",
    "STRING_FIELD_MAX",
    "TAG_VALUE_MAX",
    "escape_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag_value",
    "format_float",
    "split_line",
    "unescape_tag_value",
    "valid_key",
]

#: Longest tag value (a name), in characters; longer ones are cut (:mod:`agent.bridge.lineproto`, "Text").
TAG_VALUE_MAX = 200
#: Longest field key (a values key), in characters; longer ones reject the reading.
FIELD_KEY_MAX = 200
#: Longest string field value (message, agent), in characters; longer ones are cut.
STRING_FIELD_MAX = 1000
#: Longest field set of one line, in characters: 4 bytes a character at most keeps a line far below the 256 KiB
#: VictoriaMetrics takes.
FIELDS_MAX = 32_768

#: Control characters (Unicode category Cc): a newline would end the line, and none belongs in a name.
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def escape_measurement(name: str) -> str:
    """Escape a measurement name: commas and spaces."""
    return name.replace(",", "\\,").replace(" ", "\\ ") if _needs(name, ", ") else name


def escape_key(key: str) -> str:
    """Escape a tag key or field key: commas, equals signs and spaces.

    The key must pass :func:`valid_key`: InfluxDB and VictoriaMetrics read a backslash in a key differently.
    """
    return key.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") if _needs(key, ",= ") else key


def valid_key(key: str) -> bool:
    """Whether a field key can be written so that InfluxDB 1.x and VictoriaMetrics read the same key: not empty, at
    most :data:`FIELD_KEY_MAX` characters, no control characters, no backslash and no double quote."""
    return (0 < len(key) <= FIELD_KEY_MAX and not CONTROL_RE.search(key) and "\\" not in key
            and '"' not in key)


def escape_tag_value(value: str) -> str:
    """Normalise and escape a tag value (a free-text name) so that InfluxDB 1.x and VictoriaMetrics store the same.

    Cut to :data:`TAG_VALUE_MAX` characters; control characters become spaces (a newline would end the line); a
    backslash becomes U+FF3C, because the two servers read a backslash before an escaped character differently and
    InfluxDB refuses one at the end; then commas, equals signs and spaces are escaped. Only free-text names get
    here; ids are checked against the schema's patterns first. The result may be empty (then leave the tag out).
    """
    if len(value) > TAG_VALUE_MAX:
        value = value[:TAG_VALUE_MAX]
    if CONTROL_RE.search(value):
        value = CONTROL_RE.sub(" ", value)
    if "\\" in value:
        value = value.replace("\\", "\uff3c")
    if _needs(value, ",= "):
        value = value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    return value


def escape_string_field(value: str) -> str:
    """Quote a string field value: cut to :data:`STRING_FIELD_MAX` characters, control characters become spaces
    (InfluxDB refuses a line break even inside a quoted string), backslashes and double quotes are escaped."""
    if len(value) > STRING_FIELD_MAX:
        value = value[:STRING_FIELD_MAX]
    if CONTROL_RE.search(value):
        value = CONTROL_RE.sub(" ", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_float(value: float) -> str:
    """A float field value: the shortest text that reads back as the same float (``3.0``, ``182.5``,
    ``1e+16``). Never an integer literal. The caller checks that the value is finite."""
    return repr(float(value))


def _needs(text: str, chars: str) -> bool:
    return any(c in text for c in chars)


# One line of the bridge's own output read back strictly (nothing else is accepted, so what passes is what InfluxDB
# reads): measurement, ",key=value" tags, "key=value" fields (quoted strings may hold spaces and commas), integer
# timestamp. Escapes are matched as unrolled loops (``[^x\\]*(?:\\.[^x\\]*)*``): linear, and fast in re.
_TAG_TEXT = r"[^ ,=\\]*(?:\\.[^ ,=\\]*)*"
_KEY = r'[^ ,="\\]*(?:\\.[^ ,="\\]*)*'
_VALUE = r'(?:"[^"\\]*(?:\\.[^"\\]*)*"|[^ ,"\\]+)'
_LINE_RE = re.compile(rf"([^ ,\\]+(?:\\.[^ ,\\]*)*)((?:,{_TAG_TEXT}={_TAG_TEXT})*) "
                      rf"({_KEY}={_VALUE}(?:,{_KEY}={_VALUE})*) (\d{{1,19}})\Z", re.DOTALL)
_TAG_RE = re.compile(rf"({_TAG_TEXT})=({_TAG_TEXT})")
_FIELD_RE = re.compile(rf"({_KEY})=({_VALUE})")


def split_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int] | None:
    """(measurement, tags, fields, timestamp in µs) of one line as written (keys and values still escaped, string
    fields still quoted), or None when it is not a line the bridge writes (or names a key twice)."""
    match = _LINE_RE.match(line)
    if match is None:
        return None
    tag_text, field_text = match[2], match[3]
    # Without an escaped ',' or '=' and without strings, every ',' separates and every item has one '=' (the match
    # made sure): plain splits, the common case, cost a fraction of the regex.
    tag_pairs = _TAG_RE.findall(tag_text) if _escaped(tag_text) else [t.split("=") for t in tag_text.split(",")[1:]]
    field_pairs = _FIELD_RE.findall(field_text) if '"' in field_text or _escaped(field_text) \
        else [f.split("=") for f in field_text.split(",")]
    tags, fields = dict(tag_pairs), dict(field_pairs)
    if len(tags) != len(tag_pairs) or len(fields) != len(field_pairs):
        return None
    return match[1], tags, fields, int(match[4])


def unescape_tag_value(text: str) -> str:
    """A tag value as :func:`escape_tag_value` wrote it, read back."""
    return text.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ") if "\\" in text else text


def _escaped(text: str) -> bool:
    return "\\," in text or "\\=" in text
