"""Jinja2 prompt and answer templates: data_templates/ by default, overridable file by file with --template-dir.

Templates render in jinja2's sandboxed environment, so a user's template cannot reach Python internals.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data_templates"


class Templates:
    def __init__(self, override_dir: str | None = None):
        from jinja2 import FileSystemLoader, StrictUndefined
        from jinja2.sandbox import SandboxedEnvironment

        search = [str(override_dir)] if override_dir else []
        self.env = SandboxedEnvironment(loader=FileSystemLoader(search + [str(DEFAULT_DIR)]),
                                        undefined=StrictUndefined, keep_trailing_newline=False)
        self._cache: dict = {}

    def render(self, name: str, **variables) -> str:
        if name not in self._cache:
            self._cache[name] = self.env.get_template(name)
        return self._cache[name].render(**variables).strip()
