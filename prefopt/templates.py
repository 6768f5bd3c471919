"""Jinja2 prompt and answer templates: data_templates/ by default, overridable file by file with
``template_dir`` (a setting of the ``--config`` file).

Templates render in jinja2's sandboxed environment, so a user's template cannot reach Python internals.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from prefopt.errors import PrefoptError

DEFAULT_DIR = Path(str(files("prefopt.data_templates")))  # data_templates/ of the repo, shipped in the wheel


class Templates:
    def __init__(self, override_dir: str | None = None):
        from jinja2 import FileSystemLoader, StrictUndefined
        from jinja2.sandbox import SandboxedEnvironment

        search = [str(override_dir)] if override_dir else []
        self.env = SandboxedEnvironment(loader=FileSystemLoader(search + [str(DEFAULT_DIR)]),
                                        undefined=StrictUndefined, keep_trailing_newline=False)
        self._cache: dict = {}

    def render(self, name: str, **variables) -> str:
        """The rendered template; a template that is missing, malformed, uses an unknown variable or reaches for
        what the sandbox forbids (``{{ ''.__class__.__mro__ }}``) is a PrefoptError naming file and line."""
        from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError
        from jinja2.sandbox import SecurityError

        try:
            if name not in self._cache:
                self._cache[name] = self.env.get_template(name)
            return self._cache[name].render(**variables).strip()
        except TemplateNotFound:
            raise PrefoptError(f"template {name}: not found in {', '.join(self.env.loader.searchpath)}") from None
        except TemplateSyntaxError as e:
            raise PrefoptError(f"{e.filename or name}:{e.lineno}: template syntax error ({e.message}); "
                               "expected a jinja2 template") from None
        except SecurityError as e:
            raise PrefoptError(f"{self._file(name)}: refused by the sandbox ({e}); templates may only use the "
                               "variables they are given") from None
        except TemplateError as e:
            raise PrefoptError(f"{self._file(name)}: cannot render ({type(e).__name__}: {e}); variables given: "
                               f"{', '.join(sorted(variables)) or 'none'}") from None

    def _file(self, name: str) -> str:
        try:
            return self.env.loader.get_source(self.env, name)[1] or name
        except Exception:  # noqa: BLE001 - only used for the message
            return name
