"""The tqdm bar every long loop of vqfast shows when asked (a no-op bar otherwise)."""
from __future__ import annotations


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    """A tqdm bar over `total` steps; disabled (nothing printed) unless `enabled`."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, mininterval=1.0)
