"""Reading moesim's input files: any file gives its data or one `MoesimError` line, never a traceback.

Every reader of a user's file goes through this module, one function per
format, so a bad file reads the same everywhere:

- `read_bytes(path, what, hint)`: the bytes of a file; a missing path, a
  folder, an unreadable file (permissions) or an empty one is one line
  naming the path (a binary format's own decoder takes it from there);
- `read_text(path, what, hint)`: the text of a file, decoded as UTF-8
  strictly (a UTF-8 byte-order mark is dropped); a UTF-16/32 file or one
  with bytes that are not UTF-8 text (a binary file) is one line;
- `parse_json(text, where, hint)` / `read_json(path, what, hint)`;
- `parse_yaml(text, where, hint)` / `read_yaml(path, what, hint)`: a
  syntax error names its line; nesting deeper than `MAX_DEPTH` (which
  overflows the parsers' and validators' recursion), an alias that holds
  itself, or aliases that expand past `MAX_VALUES` values (which would
  hang whatever walks the document) are one line too, and so is a key
  given twice in one mapping (YAML's loaders keep the last silently: a
  second ``layout:`` block would drop the first);
- `check_magic(data, kind, where)`: a file that does not start as a
  ``.npy``, ``.npz``, ``.parquet`` or gzip file does;
- `expect_mapping(data, where, hint)`: a document that is a list or a
  scalar where a mapping of keys belongs;
- `StrictInput`: the base of every pydantic model of an input file: unknown
  keys, NaN and infinity refused, and ``true``/``false`` where a number
  belongs (pydantic would read them as 1 and 0: ``tp: true`` as TP1);
- `os_error(exc)`: an `OSError` that escaped anywhere (the CLI's last
  resort), as one line naming the file.

``what`` names the kind of file the caller expects (``"a scenario YAML"``),
``hint`` the fix; both go into the messages.
"""

from __future__ import annotations

import codecs
import errno
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from moesim.model.errors import MoesimError

#: libyaml's loader where PyYAML was built with it (10-40x faster than the pure-Python one: the hardware presets
#: load in about 0.01 s instead of 0.26 s per process); its parser stops at 1,000 nested levels with a
#: `yaml.YAMLError` (`_NEST_LIMIT`), which `_load_yaml` turns into the `RecursionError` Python's parser raises.
_SAFE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Words of libyaml's error for a document nested deeper than its parser goes.
_NEST_LIMIT = "maximum nesting depth"
#: Start of the problem `_unique_mapping` reports (`parse_yaml` gives it its own fix).
_DUPLICATE = "the same key twice in one mapping:"


def _unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    """A mapping constructed as the safe loader does, after checking that no key is written twice in it.

    Keys merged in with ``<<: *anchor`` are not counted: YAML lets a mapping's own keys override merged ones.
    Raises:
        yaml.constructor.ConstructorError: the second occurrence of a key, with its line and the first one's.
    """
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:  # an unhashable key: the constructor's own error says so below
            continue
        if first is not key_node:
            a, b = first.start_mark.line + 1, key_node.start_mark.line + 1
            where = f"on line {a}" if a == b else f"on lines {a} and {b}"
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{_DUPLICATE} {key!r} {where}: the second would silently replace the first",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=deep)


def _unique_loader(base: type) -> type:
    """``base`` (a safe loader class) that refuses a key written twice in one mapping (`_unique_mapping`)."""
    loader = type(f"Unique{base.__name__}", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:map", _unique_mapping)
    return loader


#: The loaders `_load_yaml` uses: PyYAML's safe loader and libyaml's (where built), each refusing duplicate keys.
_PY_LOADER: type = _unique_loader(yaml.SafeLoader)
_FAST_LOADER: type = _unique_loader(_SAFE_LOADER) if _SAFE_LOADER is not yaml.SafeLoader else _PY_LOADER

#: Deepest nesting of lists and mappings accepted in a YAML or JSON file (a scenario needs about 5 levels).
MAX_DEPTH = 100
#: Most values (list items, mapping entries) a checked YAML or JSON document may hold, its aliases expanded.
MAX_VALUES = 10_000_000

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def os_reason(exc: OSError) -> str:
    """Why an `OSError` happened, in a few words (for one-line messages that name the path themselves)."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "it is a folder, not a file"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "a read-only file system"
    if exc.errno == errno.ENAMETOOLONG:
        return "the name is too long"
    if exc.errno == errno.EEXIST:
        return "a file is in the way of a folder"
    return " ".join((exc.strerror or str(exc) or type(exc).__name__).split())


def os_error(exc: OSError) -> MoesimError:
    """A one-line `MoesimError` for an `OSError` that escaped a reader or a writer, naming its file(s)."""
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    where = f"{' -> '.join(names)}: " if names else ""
    return MoesimError(f"{where}{os_reason(exc)}", "check the path, its permissions and the free space on its disk")


def read_bytes(
    path: str | Path, what: str = "an input file", hint: str = "", empty_ok: bool = False, limit: int | None = None
) -> bytes:
    """The bytes of ``path`` (only the first ``limit`` when given: a format check of a large file).

    Raises:
        MoesimError: ``path`` is missing, a folder, unreadable, or empty (unless ``empty_ok``).
    """
    p = Path(path)
    fix = hint or f"give the path of {what}"
    try:
        if p.is_dir():
            raise MoesimError(f"{p} is a folder, not {what}", fix)
        if p.exists() and not (p.is_file() or p.is_fifo()):  # /dev/zero would never end
            raise MoesimError(f"{p} is a device or a socket, not {what}", fix)
        with p.open("rb") as f:
            data = f.read() if limit is None else f.read(limit)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise MoesimError(f"{p}: no such file", fix) from None
        raise MoesimError(f"cannot read {p}: {os_reason(exc)}", hint or "check the path and its permissions") from None
    if not data and not empty_ok:
        raise MoesimError(f"{p} is empty", fix)
    return data


#: The first bytes of the binary formats moesim reads.
MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK", ".parquet": b"PAR1", ".gz": b"\x1f\x8b"}


def check_magic(data: bytes, kind: str, where: str | Path, hint: str = "", noun: str = "") -> None:
    """`MoesimError` unless ``data`` starts as a ``kind`` file does (a `MAGIC` key such as ``".npy"``); the
    message says ``where`` is not ``noun`` (default: "a <kind> file") and what it holds instead."""
    if not data.startswith(MAGIC[kind]):
        bom = next((name for mark, name in _BOMS if data.startswith(mark)), None)
        what = f"{bom} text" if bom else "text" if _is_text(data[:4096]) else "some other binary format"
        raise MoesimError(f"{where} is not {noun or f'a {kind} file'} (it holds {what})", hint or f"give a {kind} file")


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a character cut at the end of the sample
    return b"\x00" not in head


def decode_text(data: bytes, where: str | Path, hint: str = "") -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped).

    Raises:
        MoesimError: UTF-16/UTF-32 text, a NUL byte, or bytes that are not UTF-8 (a binary file).
    """
    fix = hint or "give a UTF-8 text file"
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise MoesimError(f"{where} is {name} text, not UTF-8", "re-save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise MoesimError(f"{where} is not UTF-8 text (a NUL byte at offset {nul}: a binary file?)", fix)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MoesimError(
            f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}: a binary file?)", fix
        ) from None


def read_text(path: str | Path, what: str = "a text file", hint: str = "", empty_ok: bool = False) -> str:
    """The UTF-8 text of ``path``; `MoesimError` as `read_bytes` (with ``hint``) and `decode_text` say."""
    return decode_text(read_bytes(path, what, hint, empty_ok), path, f"give {what} as UTF-8 text")


def _nesting(data: Any, limit: int, max_nodes: int) -> str | None:
    """Why ``data`` cannot be walked recursively, or None.

    ``"cycle"``: a YAML alias inside itself; ``"deep"``: lists and mappings nested deeper than ``limit``;
    ``"big"``: more than ``max_nodes`` values once aliases are expanded (a "billion laughs" file). Iterative,
    each shared object visited once.
    """
    depth: dict[int, int] = {}  # id -> levels of nesting in the object, itself included
    size: dict[int, int] = {}  # id -> values in the object once expanded, itself included
    path: set[int] = set()  # ids of the objects being expanded (the current path from the root)
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        obj, done = stack.pop()
        values = list(obj.values() if isinstance(obj, dict) else obj)
        kids = [v for v in values if isinstance(v, (list, dict))]
        key = id(obj)
        if done:
            path.discard(key)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            size[key] = 1 + len(values) - len(kids) + sum(size[id(k)] for k in kids)
            if depth[key] > limit:
                return "deep"
            if size[key] > max_nodes:
                return "big"
        elif key in path:
            return "cycle"
        elif key not in depth:
            path.add(key)
            stack.append((obj, True))
            stack.extend((k, False) for k in kids)
    return None


def _check_nesting(data: Any, where: str | Path, hint: str) -> None:
    if not isinstance(data, (list, dict)):
        return
    why = _nesting(data, MAX_DEPTH, MAX_VALUES)
    if why == "cycle":
        raise MoesimError(f"{where}: an alias refers to itself (a structure that holds itself)", hint or "remove it")
    if why == "big":
        raise MoesimError(
            f"{where}: more than {MAX_VALUES:,} values once its aliases are expanded", hint or "use fewer aliases"
        )
    if why == "deep":
        raise _deep(where, hint)


def _deep(where: str | Path, hint: str) -> MoesimError:
    fix = hint or "check for unbalanced brackets; a moesim file nests a few levels"
    return MoesimError(f"{where}: lists or mappings nested more than {MAX_DEPTH} levels deep", fix)


def _value_error(exc: ValueError) -> str:
    """What a parser's `ValueError` means (Python refuses integers of more than 4300 digits)."""
    text = " ".join(str(exc).split())
    return "a number with more than 4300 digits" if "4300 digits" in text else text[:120]


def parse_json(text: str | bytes, where: str | Path, hint: str = "", check_depth: bool = True) -> Any:
    """The JSON document ``text`` (bytes are decoded as `decode_text` says).

    Args:
        text: the document.
        where: the file (or upload) it came from, for the messages.
        hint: the fix to suggest.
        check_depth: refuse nesting deeper than `MAX_DEPTH` (off for large data files, such as traces).
    Raises:
        MoesimError: not JSON (naming the line and column), or nested too deeply.
    """
    if isinstance(text, bytes):
        text = decode_text(text, where, hint)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if text.strip() else "no JSON document"
        raise MoesimError(f"{where}: not valid JSON ({at})", hint or "fix the JSON syntax") from None
    except RecursionError:
        raise _deep(where, hint) from None
    except ValueError as exc:
        raise MoesimError(f"{where}: not valid JSON ({_value_error(exc)})", hint or "fix the JSON syntax") from None
    if check_depth:
        _check_nesting(data, where, hint)
    return data


def _load_yaml(text: str) -> Any:
    """``text`` read by libyaml's safe loader (`_SAFE_LOADER`, refusing duplicate keys: `_unique_mapping`); a
    document it refuses is read again by PyYAML's own, so that what is accepted and every error's wording and
    line are PyYAML's (``but got ':'``, where libyaml says less). Raises `yaml.YAMLError`, and `RecursionError`
    for a document nested deeper than either parser goes.
    """
    if _FAST_LOADER is _PY_LOADER:
        return yaml.load(text, Loader=_PY_LOADER)  # a safe loader: `_unique_loader(yaml.SafeLoader)`
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # libyaml's parser, PyYAML's safe constructor
    except yaml.YAMLError as exc:
        if _NEST_LIMIT in str(getattr(exc, "problem", "") or ""):
            raise RecursionError(str(exc)) from None
    return yaml.load(text, Loader=_PY_LOADER)


def parse_yaml(text: str | bytes, where: str | Path, hint: str = "") -> Any:
    """The YAML document ``text`` (bytes are decoded as `decode_text` says).

    Raises:
        MoesimError: not YAML (naming the line), several documents, or nested deeper than `MAX_DEPTH`.
    """
    if isinstance(text, bytes):
        text = decode_text(text, where, hint)
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f" ({' '.join(str(problem).split())})" if problem else ""
        if str(problem or "").startswith(_DUPLICATE):
            raise MoesimError(f"{where}: {problem}", "keep one of them (merge the two into one)") from None
        raise MoesimError(f"{where}: not valid YAML{at}{detail}", hint or "fix the YAML syntax") from None
    except RecursionError:
        raise _deep(where, hint) from None
    except ValueError as exc:
        raise MoesimError(f"{where}: not valid YAML ({_value_error(exc)})", hint or "fix the YAML syntax") from None
    _check_nesting(data, where, hint)
    return data


def read_json(path: str | Path, what: str = "a JSON file", hint: str = "", check_depth: bool = True) -> Any:
    """The JSON document in the file ``path``; `MoesimError` naming the file for any problem (``hint``: the fix
    for a missing, folder or empty path)."""
    return parse_json(read_text(path, what, hint), path, check_depth=check_depth)


def read_yaml(path: str | Path, what: str = "a YAML file", hint: str = "") -> Any:
    """The YAML document in the file ``path``; `MoesimError` naming the file for any problem (``hint``: the fix
    for a missing, folder or empty path)."""
    return parse_yaml(read_text(path, what, hint), path)


def expect_mapping(data: Any, where: str | Path, hint: str = "") -> dict[Any, Any]:
    """``data`` when it is a mapping; else `MoesimError` saying what it is instead."""
    if isinstance(data, dict):
        return data
    kind = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    got = "nothing" if data is None else kind.get(type(data), type(data).__name__)
    raise MoesimError(f"{where}: expected a mapping of keys, got {got}", hint or "write 'key: value' lines")


def _number_not_bool(annotation: Any) -> bool:
    """Whether a field typed ``annotation`` takes an int or a float but not a bool (through ``Optional``,
    ``Union`` and ``Annotated``; containers and literals are not looked into)."""
    seen: set[Any] = set()

    def walk(a: Any) -> None:
        origin = typing.get_origin(a)
        if origin is typing.Annotated:
            walk(typing.get_args(a)[0])
        elif origin is typing.Union or origin is types.UnionType:
            for arg in typing.get_args(a):
                walk(arg)
        else:
            seen.add(a)

    walk(annotation)
    return bool(seen & {int, float}) and bool not in seen


class StrictInput(BaseModel):
    """The base of the pydantic models that read input files: unknown keys, NaN and infinity are refused, and so is
    ``true`` or ``false`` given for a number (pydantic's lax mode would take them as 1 and 0, so ``tp: true``
    would silently mean TP1). Instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _number_not_bool(field.annotation):
                raise PydanticCustomError("bool_for_number", "must be a number, not true or false")
        return value
