"""An app's `manifest.yml`: the model, its strict loader, and pattern safety.

    model          Manifest, InputSpec, Validation, the input and app id rules, the
                   fingerprint, and `parse_manifest`, the strict YAML loader (unknown
                   fields, duplicate keys and bad values are problems, never crashes)
    regex_safety   refuses patterns that could backtrack catastrophically

Pure: no sockets, no processes. Values are checked by `core.validation`, which panel and
agent share.
"""
