"""Progress bars for the long passes: the layer probe, unit re-scoring and canary evaluation.

On a real model these take minutes (probing 30 layers of SmolLM2 on 2 CPU cores: ~8 minutes),
and a silent minute looks like a hang. One place decides how a bar looks, torchtune's way:
tqdm on stderr, shown on rank 0 only.
"""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar of ``total`` steps; a silent no-op bar when ``enabled`` is False.

    Args:
        total (int): number of updates expected.
        desc (str): what is being done, e.g. ``"probe mask-out"``.
        enabled (bool): show it (rank 0); False on other ranks and in library use.

    Returns:
        tqdm: the bar; call ``update()`` per step and ``close()`` (or use it as a context).
    """
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
