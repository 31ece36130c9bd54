"""YAML reading that remembers where every value came from, and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; SkyPilot rejects them, and so do we, with both
lines. Each document also gets a map from YAML path to (line, column), so that an error found later by
the models can point at the line it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tsky.spec.errors import Path, SpecError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *anchor` merges are allowed to be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it below with its own message
            mark = key_node.start_mark
            if first is not None:
                raise SpecError(
                    f"Duplicate key {key!r} in YAML at line {mark.line + 1} (also defined at line "
                    f"{first.line + 1}). Remove one of the entries so the intended value is unambiguous.",
                    line=mark.line + 1,
                    column=mark.column + 1,
                )
            seen[key] = mark
        return super().construct_mapping(node, deep=deep)


@dataclass
class Document:
    """One YAML document: its data and where each path of it sits in the file."""

    data: Any
    index: int  # position among the file's documents, from 0
    line: int  # first line of the document
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path) -> tuple[int, int] | None:
        """(line, column) of `path` (its key, for a mapping entry), or of its nearest known ancestor."""
        for end in range(len(path), -1, -1):
            found = self.keys.get(path[:end]) or self.values.get(path[:end])
            if found:
                return found
        return None

    def line_of(self, path: Path) -> int | None:
        position = self.locate(path)
        return position[0] if position else None


def _record(node: Node, path: Path, doc: Document) -> None:
    doc.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            child = (*path, key_node.value)
            doc.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _record(value_node, child, doc)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, (*path, index), doc)


def _syntax_error(exc: yaml.YAMLError) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    if mark is None:
        return SpecError(f"Invalid YAML: {detail}.")
    return SpecError(
        f"Invalid YAML syntax: {detail}. Check the indentation and quoting around this line.",
        line=mark.line + 1,
        column=mark.column + 1,
    )


def load_documents(text: str) -> list[Document]:
    """Every document of a (multi-document) YAML text, `null` documents included."""
    loader = _Loader(text)
    documents: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            data = loader.construct_document(node)
            doc = Document(data=data, index=len(documents), line=node.start_mark.line + 1)
            _record(node, (), doc)
            documents.append(doc)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc) from None
    finally:
        loader.dispose()
    return documents


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings as `|` literals so scripts read as they were written."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)


def dump_documents(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
