"""Llama 3.1 and 3.2 model builders: torchtune's own, re-exported under one roof.

torchtune 0.6.1 builds Llama 3.x correctly; only the names are gathered here so configs can
say ``adept_components.models.llama3_1_8b`` like every other model of this package.
"""

from torchtune.models.llama3_1 import llama3_1_8b, llama3_1_70b
from torchtune.models.llama3_2 import llama3_2_1b, llama3_2_3b

__all__ = ["llama3_1_8b", "llama3_1_70b", "llama3_2_1b", "llama3_2_3b"]
