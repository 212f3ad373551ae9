"""`save_pretrained` for every model class: config.json + deduplicated model.safetensors, written atomically.

The loading side (`checkpoint.load_pretrained`) sits above the model classes it builds; this module sits below
them, so the two never import each other.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import save_model


class CheckpointError(ValueError):
    """A directory that is not a loadable model; the message says what is wrong and what to do."""


class PretrainedMixin:
    """`save_pretrained(dir)` for every model class: config.json + deduplicated model.safetensors, atomically."""

    def save_pretrained(self, directory: str | Path, *, extra_files: dict[str, str | bytes] | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict() | {"architectures": [type(self).__name__], "format": "txl-doc"}
        with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as tmp:
            Path(tmp, "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_model(self, str(Path(tmp, "model.safetensors")), metadata={"format": "pt"})
            for name, content in (extra_files or {}).items():
                mode = "wb" if isinstance(content, bytes) else "w"
                with open(Path(tmp, name), mode) as f:
                    f.write(content)
            for name in os.listdir(tmp):  # each file appears whole, never half-written
                os.replace(Path(tmp, name), directory / name)
