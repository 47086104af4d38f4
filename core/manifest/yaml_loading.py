"""The YAML of a manifest, read strictly: what PyYAML allows that a manifest must not.

Duplicate keys, merge keys, anchors and aliases are refused, and so is nesting past
`MAX_NESTING_DEPTH` (PyYAML's scanner and composer slow down or recurse with each level).
"""

from __future__ import annotations

from collections.abc import Hashable

import yaml

from core.manifest.fields import short
from core.manifest.model import MAX_MANIFEST_BYTES, MAX_NESTING_DEPTH


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, merge keys, anchors, aliases and deep nesting."""

    def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
        """Scan `[` or `{`, refusing flow collections nested deeper than MAX_NESTING_DEPTH."""
        if self.flow_level >= MAX_NESTING_DEPTH:
            raise self._too_deep()
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column: int) -> bool:
        """Open a block level (indentation), refusing more than MAX_NESTING_DEPTH of them."""
        if len(self.indents) >= MAX_NESTING_DEPTH:
            raise self._too_deep()
        return super().add_indent(column)

    def _too_deep(self) -> yaml.scanner.ScannerError:
        return yaml.scanner.ScannerError(
            None, None, f"nested deeper than {MAX_NESTING_DEPTH} levels", self.get_mark()
        )

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose a node, refusing aliases."""
        # Aliases let a tiny file expand into a huge tree, and no manifest needs them.
        if self.check_event(yaml.AliasEvent):
            event: yaml.events.Event = self.peek_event()  # type: ignore[no-untyped-call]
            mark = event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not allowed", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Hashable, object]:
        """Construct a mapping, refusing duplicate keys and merge keys."""
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not allowed", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(data: bytes, problems: list[str]) -> object:
    """The manifest's YAML, strictly; None (and a problem said) when it cannot be read."""
    if len(data) > MAX_MANIFEST_BYTES:
        problems.append(f"the manifest is larger than {MAX_MANIFEST_BYTES // 1024} KiB")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append("the manifest is not valid UTF-8")
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        problems.append(f"not valid YAML: {error}")
    except ValueError as error:
        # A scalar the resolver typed but cannot build: an integer of more than 4300 digits
        # (Python's int limit) or an impossible timestamp such as 2024-13-45.
        problems.append(f"not valid YAML: a value cannot be read: {short(str(error), 120)}")
    except RecursionError:
        problems.append("not valid YAML: nested too deeply")
    return None
