"""A small validator for YAML documents described by a schema that is itself YAML.

Used by ``cluster.py`` (``cluster_schema.yaml``) and ``jobs.py`` (``job_schema.yaml``). A
schema node has a ``type`` and, depending on it:

``mapping``
    ``keys`` (name -> node) and ``required`` (names), or ``values`` (one node for every
    value of a free-form mapping with string keys). A mapping may instead have a
    ``discriminator`` (a key name) and ``variants`` (value of that key -> mapping node): the
    document is checked against the variant its discriminator names.
``list``
    ``items`` (node), ``min_items``, ``max_items``; ``unique: true`` refuses a repeated item.
``int``, ``number``
    ``min`` (inclusive) or ``gt`` (exclusive); ``max`` (inclusive).
``str``
    ``choices``; ``nonempty: true`` refuses ""; ``pattern`` (a regular expression the whole
    string must match) with ``pattern_doc`` (how to say it in a message).
``oneof``
    ``options``: a list of nodes; the value must match one of them.
``address``
    ``schemes``: an address like ``tcp://host:8786`` whose scheme is one of these.
``duration``, ``bytes``, ``memory_limit``, ``scalar``, ``bool``, ``any``
    See :func:`valid_leaf`.

Every node may have ``nullable: true`` (null allowed), ``default`` (filled in when the key is
absent) and ``doc`` (one line of documentation).

Problems are collected as ``(path, problem)`` pairs, ``path`` dotted like
``cluster.local.n_workers`` (list items as ``hosts[1]``), so that every problem in a document is
reported at once and names the key at fault.
"""

from __future__ import annotations

import copy
import difflib
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from dask.utils import parse_bytes, parse_timedelta

__all__ = ["SchemaError", "expected", "is_int", "is_number", "load_yaml", "not_utf8", "parses",
           "show", "walk"]

ADDRESS = re.compile(r"^(?P<scheme>[a-z]+)://(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d+)$")
#: A bare ``host:port`` (or ``[v6 address]:port``), which distributed reaches over TCP.
HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d+")


def over_tcp(value):
    """``tcp://`` added to a bare ``host:port``, as ``distributed.Client`` takes it; any
    other value as it is (to be refused naming what was given)."""
    return f"tcp://{value}" if isinstance(value, str) and HOST_PORT.fullmatch(value) \
        else value


# --------------------------------------------------------------------------- YAML

# Plain scalars are typed conservatively, in job and cluster files as on the command line,
# so that a password or a profile name arrives exactly as written: YAML 1.1 (PyYAML) turns
# 0123 into 83 (octal), 12:30:00 into 45000 (base 60), 2024_01 into 202401, no into False
# and 2024-01-01 into a date, silently. Only these forms change type.
BOOL = re.compile(r"(?i:true|false)")
NULL = re.compile(r"(?i:null)")
INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
FLOAT = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
#: YAML 1.1's other booleans: read as text they would turn ``anon: no`` into a true value
#: (a non-empty string), read as booleans they break the rule above; so they are refused.
AMBIGUOUS_BOOL = re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")
_AMBIGUOUS_TAG = "tag:dask-kmeans:ambiguous-bool"


class AmbiguousBool(yaml.constructor.ConstructorError):
    """A plain ``yes``, ``no``, ``on`` or ``off`` (see :data:`AMBIGUOUS_BOOL`), at
    ``mark`` in a YAML document (None for a command-line value)."""

    def __init__(self, value: str, mark=None):
        super().__init__(None, None, f"{value!r} is ambiguous, which YAML 1.1 reads as a "
                         "boolean: write true or false for a boolean, or put it in quotes "
                         "for text", mark)


def _refuse_ambiguous(loader, node):
    raise AmbiguousBool(node.value, node.start_mark)


def _refuse_repeated_keys(loader, node):
    """A mapping, its own keys checked first: YAML keeps the last of two equal keys and
    drops the first without a word (``params:`` written twice loses the first block).
    Keys a ``<<`` merge brings in may be overridden, as YAML intends."""
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:  # an unhashable key: SafeLoader's own error follows
            continue
        if first is not key_node:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (first on line "
                f"{first.start_mark.line + 1}); YAML would keep only the last", key_node.start_mark)
    return yaml.SafeLoader.construct_yaml_map(loader, node)


def _conservative_loader(name: str, *, files: bool) -> type[yaml.SafeLoader]:
    """A SafeLoader whose plain scalars are bools, nulls, ints and floats only by the
    patterns above (and empty ones null); a plain yes/no/on/off is refused
    (:class:`AmbiguousBool`); everything else is a string; a mapping that gives a key twice
    is refused. With ``files``, ``~`` is null too and ``<<`` merges a mapping, as YAML
    files commonly use them."""
    loader = type(name, (yaml.SafeLoader,), {"yaml_implicit_resolvers": {}})
    loader.add_constructor(_AMBIGUOUS_TAG, _refuse_ambiguous)
    loader.add_constructor("tag:yaml.org,2002:map", _refuse_repeated_keys)
    core = "tag:yaml.org,2002:"
    rules = [(core + "bool", BOOL.pattern, "tTfF"), (core + "null", NULL.pattern, "nN"),
             (core + "null", "", [""]), (core + "int", INT.pattern, "-+0123456789"),
             (core + "float", FLOAT.pattern, "-+0123456789."),
             (_AMBIGUOUS_TAG, AMBIGUOUS_BOOL.pattern, "yYnNoO")]
    if files:
        rules += [(core + "null", "~", "~"), (core + "merge", "<<", "<")]
    for tag, pattern, first in rules:
        loader.add_implicit_resolver(tag, re.compile(rf"^(?:{pattern})$"), list(first))
    return loader


#: Job and cluster files.
FileLoader = _conservative_loader("FileLoader", files=True)
#: A ``[...]`` or ``{...}`` value given on the command line.
FlowLoader = _conservative_loader("FlowLoader", files=False)


def load_yaml(text) -> Any:
    r"""A job or cluster file's YAML (text or a stream), plain scalars typed conservatively:
    ``true``/``false`` and ``null`` in any case, ``~`` and empty values are bools and null,
    decimal integers without leading zeros are ints, decimal numbers (``0.5``, ``1e-4``)
    floats; a plain ``yes``, ``no``, ``on`` or ``off`` is refused; anything else
    (``0123``, ``2024_01``, ``2024-01-01``, ``12:30:00``, ``'yes'``) is a string.

    Raises
    ------
    yaml.YAMLError
        If the text is not YAML, or holds a plain yes/no/on/off (:class:`AmbiguousBool`).

    Examples
    --------
    >>> load_yaml("a: 0123\nb: 1e-4\nc: 'yes'\nd: ~\ne: [2024-01-01, 7, TRUE]")
    {'a': '0123', 'b': 0.0001, 'c': 'yes', 'd': None, 'e': ['2024-01-01', 7, True]}
    """
    return yaml.load(text, Loader=FileLoader)  # a SafeLoader subclass


class SchemaError(ValueError):
    """A document does not follow its schema.

    Parameters
    ----------
    errors : list of (str, str)
        One ``(path, problem)`` pair per problem; ``path`` is dotted, like
        ``job.params.n_clusters``, and empty for the document as a whole.
    source : str, optional
        The file the document was read from, shown before the problems.

    Attributes
    ----------
    errors : list of (str, str)
        The ``(path, problem)`` pairs.
    source : str or None
        The file, if the document came from one.
    """

    #: What the document is, in "N problems in the <what>".
    what = "document"

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        lines = [f"{path or '(top level)'}: {problem}" for path, problem in self.errors]
        head = f"{source}: " if source else ""
        if len(lines) == 1:
            message = head + lines[0]
        else:
            message = (f"{head}{len(lines)} problems in the {self.what}:\n"
                       + "\n".join(f"  {line}" for line in lines))
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.errors, self.source)


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def parses(parse, v: Any) -> bool:
    """Whether ``parse(v)`` (``parse_timedelta``, ``parse_bytes``) gives a value > 0."""
    try:
        return parse(v) > 0
    except (ValueError, KeyError, TypeError):
        return False


def valid_leaf(node: dict, v: Any) -> bool:
    """Whether ``v`` (not None) is a valid value of a node that is no mapping, list or oneof."""
    kind = node["type"]
    if kind == "any":
        return True
    if kind == "str":
        return (isinstance(v, str) and v in node.get("choices", [v])
                and not (node.get("nonempty") and not v.strip())
                and ("pattern" not in node or re.fullmatch(node["pattern"], v) is not None))
    if kind == "bool":
        return isinstance(v, bool)
    if kind in ("int", "number"):
        ok = is_int(v) if kind == "int" else is_number(v)
        return (ok and node.get("min", v) <= v <= node.get("max", v)
                and ("gt" not in node or v > node["gt"]))
    if kind == "scalar":
        return isinstance(v, str) or is_number(v)
    if kind == "address":
        match = ADDRESS.match(v) if isinstance(v, str) else None
        return (match is not None and match["scheme"] in node["schemes"]
                and 0 < int(match["port"]) < 65536)
    if kind == "duration":
        return (isinstance(v, str) or is_number(v)) and parses(parse_timedelta, v)
    if kind == "bytes":
        return (isinstance(v, str) or is_int(v)) and parses(parse_bytes, v)
    if kind == "memory_limit":
        if v == "auto" or (isinstance(v, float) and 0 < v <= 1):
            return True
        return (isinstance(v, str) or is_int(v)) and parses(parse_bytes, v)
    raise AssertionError(f"schema: unknown type {kind!r}")


def expected(node: dict) -> str:
    """What a node accepts, in words: "an int >= 1 or null"."""
    kind = node["type"]
    if kind in ("int", "number"):
        text = "an int" if kind == "int" else "a number"
        if "min" in node:
            text += f" >= {node['min']}"
        if "gt" in node:
            text += f" > {node['gt']}"
        if "max" in node:
            text += f" and <= {node['max']}"
    elif kind == "str":
        if len(node.get("choices", ())) == 1:
            text = repr(node["choices"][0])
        elif "choices" in node:
            text = f"one of {', '.join(node['choices'])}"
        elif "pattern" in node:
            text = node.get("pattern_doc", f"a string matching {node['pattern']}")
        else:
            text = "a non-empty string" if node.get("nonempty") else "a string"
    elif kind == "list":
        item = node["items"]
        if item["type"] == "str":
            items = "strings"
        elif item["type"] == "int":
            items = "ints" + (f" >= {item['min']}" if "min" in item else "")
        else:
            items = "items"
        text = f"a list of {items}"
        lo, hi = node.get("min_items"), node.get("max_items")
        if lo is not None and lo == hi:
            text = f"a list of {lo} {items}"
        elif lo == 1 and hi is None:
            text = f"a non-empty list of {items}"
        elif lo:
            text += f" with at least {lo} entries"
    elif kind == "oneof":
        text = " or ".join(expected({**option, "nullable": False})
                           for option in node["options"])
    elif kind == "mapping" and "variants" in node:
        text = f"a mapping with a '{node['discriminator']}'"
    else:
        text = {
            "bool": "true or false",
            "mapping": "a mapping",
            "scalar": "a string or a number",
            "address": " or ".join(f"{s}://host:port" for s in node.get("schemes", ())),
            "duration": "a duration like '10s' or a number of seconds > 0",
            "bytes": "a size like '16GiB' or a number of bytes > 0",
            "memory_limit": "'auto', a size like '4GiB', a number of bytes or a fraction "
                            "of the machine's memory in (0, 1]",
        }[kind]
        if kind == "address":
            text = "an address like " + text
    return text + (" or null" if node.get("nullable") else "")


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Why a document's file could not be decoded, without repeating its contents (which
    may hold a credential)."""
    return (f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): save "
            "it as UTF-8")


def show(v: Any) -> str:
    """A value as a message shows it: short, and never a whole mapping."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def closest(word: str, options) -> str | None:
    """The option most like ``word`` (difflib's similarity of at least 0.6), or None."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return close[0] if close else None


def suggest(word: str, options) -> str:
    close = closest(word, options)
    return f"; did you mean '{close}'?" if close is not None else ""


def walk(node: dict, value: Any, path: str, errors: list) -> Any:
    """Check ``value`` against ``node``; return a copy with the defaults filled in.

    Problems are appended to ``errors`` as ``(path, problem)``; where a value is wrong,
    the copy holds None.
    """
    if value is None and (node.get("nullable") or node["type"] == "any"):
        return None  # "any" is anything, null too (known_hosts: null, region_name: null)
    kind = node["type"]
    if kind == "mapping" and isinstance(value, Mapping):
        if "variants" in node:
            return _walk_variant(node, value, path, errors)
        return _walk_mapping(node, value, path, errors)
    if kind == "list" and isinstance(value, list) \
            and node.get("min_items", 0) <= len(value) <= node.get("max_items", len(value)):
        out = [walk(node["items"], v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        if node.get("unique"):
            seen: list = []
            repeated = [v for v in out if v is not None and (v in seen or seen.append(v))]
            if repeated:
                errors.append((path, f"names {show(repeated[0])} more than once; each "
                                     "entry must differ"))
                return None
        return out
    if kind == "oneof" and value is not None:
        for option in node["options"]:
            found: list = []
            out = walk(option, value, path, found)
            if not found:
                return out
        # A mapping or list meant for the only option of its type reports its own problems.
        container = "mapping" if isinstance(value, Mapping) else \
            "list" if isinstance(value, list) else None
        same = [o for o in node["options"] if o["type"] == container]
        if container and len(same) == 1:
            return walk(same[0], value, path, errors)
    elif kind == "address" and "tcp" in node["schemes"] and valid_leaf(node, over_tcp(value)):
        return over_tcp(value)  # a bare host:port, everywhere an address goes
    elif kind not in ("mapping", "list", "oneof") and value is not None \
            and valid_leaf(node, value):
        return value
    hint = suggest(value, node["choices"]) if isinstance(value, str) and "choices" in node else ""
    if kind == "str" and "choices" not in node and "pattern" not in node \
            and (is_number(value) or isinstance(value, bool)):
        # YAML and the command line read 2024 or true as a number or a bool. Turning it
        # back into text is not always what was written (YAML's 0123 is 83, 1.50 is 1.5),
        # so it is refused, saying how to write text.
        hint = f"; to give it as text, write it in quotes: '{show(value)}'"
    errors.append((path, f"expected {expected(node)}, got {show(value)}{hint}"))
    return None


def _walk_variant(node: dict, value: Mapping, path: str, errors: list) -> dict | None:
    key = node["discriminator"]
    variants = node["variants"]
    if key not in value:
        errors.append((join(path, key), f"missing required key (one of {', '.join(variants)})"))
        return None
    chosen = value[key]
    if not isinstance(chosen, str) or chosen not in variants:
        hint = suggest(chosen, variants) if isinstance(chosen, str) else ""
        errors.append((join(path, key), f"expected one of {', '.join(variants)}, got "
                                        f"{show(chosen)}{hint}"))
        return None
    return _walk_mapping(variants[chosen], value, path, errors)


def _walk_mapping(node: dict, value: Mapping, path: str, errors: list) -> dict:
    out = {}
    keys = node.get("keys", {})
    for key, v in value.items():
        sub = join(path, key)
        if not isinstance(key, str):
            errors.append((sub, f"keys must be strings, got {show(key)}"))
        elif "values" in node:
            out[key] = walk(node["values"], v, sub, errors)
        elif key in keys:
            out[key] = walk(keys[key], v, sub, errors)
        else:
            errors.append((sub, f"unknown key '{key}'{suggest(key, keys)} "
                                f"(allowed: {', '.join(keys)})"))
    for key in node.get("required", ()):
        if key not in value:
            errors.append((join(path, key), "missing required key"))
    for key, sub in keys.items():
        if key not in value and "default" in sub:
            default = copy.deepcopy(sub["default"])
            # A default mapping gets the defaults of its own keys.
            out[key] = (walk(sub, default, join(path, key), errors)
                        if isinstance(default, Mapping) and sub["type"] == "mapping" else default)
    return out


def did_you_mean(missing: Sequence[str], available: Sequence[str]) -> str:
    """The hint "; did you mean 'age'?" naming the closest existing name to each missing
    one that has one (and which missing one it is for, when there are several); "" if
    none is close."""
    if len(missing) == 1:
        return suggest(missing[0], available)
    close = [(name, closest(name, available)) for name in missing]
    hints = [f"'{match}' for '{name}'" for name, match in close if match is not None]
    return f"; did you mean {', '.join(hints)}?" if hints else ""
