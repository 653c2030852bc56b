"""Build hook: install ``adept_cpt_quiet.pth`` into site-packages, wheel or editable.

``tune run adept_cpt`` imports torchtune, and with it torchao, before any code of ours runs, so
torchao's import-time notice "Skipping import of cpp extensions due to incompatible torch
version ..." cannot be filtered from the recipe (``adept_components/quiet.py`` does it for the
commands that start in our code). A ``.pth`` line that starts with ``import`` runs at
interpreter start-up: this one adds a filter to the ``torchao`` logger that drops exactly that
record. It imports only ``logging``; every other torchao message and every warning still shows.
Everything else about the build is in ``pyproject.toml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "adept_cpt_quiet.pth"
# The same text as adept_components.quiet.NOTICE (a test checks the installed file against it).
PTH_LINE = (
    "import logging; logging.getLogger('torchao').addFilter("
    "lambda record: not str(record.msg).startswith('Skipping import of cpp extensions'))\n"
)


class BuildPyWithPth(build_py):
    """``build_py`` that also puts the ``.pth`` at the root of the wheel (site-packages)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / PTH_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PTH_LINE, encoding="utf-8")


class _StrategyWithPth:
    """An editable-wheel strategy that also writes the ``.pth`` into the editable wheel."""

    def __init__(self, strategy: Any) -> None:
        self._strategy = strategy

    def __enter__(self) -> _StrategyWithPth:
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._strategy.__exit__(*exc)

    def __call__(self, wheel: Any, files: Any, mapping: Any) -> None:
        self._strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_LINE)


cmdclass: dict[str, type] = {"build_py": BuildPyWithPth}
try:  # pip install -e: setuptools builds an editable wheel, which build_py's output skips
    from setuptools.command.editable_wheel import editable_wheel

    if hasattr(editable_wheel, "_select_strategy"):

        class EditableWheelWithPth(editable_wheel):
            def _select_strategy(self, *args: Any, **kwargs: Any) -> Any:
                return _StrategyWithPth(super()._select_strategy(*args, **kwargs))

        cmdclass["editable_wheel"] = EditableWheelWithPth
except ImportError:  # setuptools without PEP 660 support: no editable install to hook
    pass

setup(cmdclass=cmdclass)
