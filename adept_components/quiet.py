"""Silence one import-time notice of torchao, and nothing else.

torchao logs "Skipping import of cpp extensions due to incompatible torch version ..." when
the installed torch is newer than the ones its C++ kernels were built for. torchtune imports
torchao at start-up, and nothing adept-cpt runs uses those kernels, so the notice only alarms.
Importing this module before torchtune drops exactly that record; every other torchao message
and every warning still shows. Under ``tune run`` torchao is imported before our code, so the
install also puts ``adept_cpt_quiet.pth`` (written by ``setup.py``) in site-packages, which adds
the same filter at interpreter start-up.
"""

from __future__ import annotations

import logging

NOTICE = "Skipping import of cpp extensions"


class _CppExtensionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOTICE)


logging.getLogger("torchao").addFilter(_CppExtensionNotice())
