"""Engines that run vitkit models past one process: Ray Data (``vitkit[ray]``).

``batch``: callable classes for ``ray.data.Dataset.map_batches`` (no Ray import of their own);
``ray``: the batch job behind ``vitkit predict|embed --engine ray``, with its ``sources``,
output ``shards`` and the ``ids`` set that makes jobs resumable.
"""

from importlib.util import find_spec

from vitkit.errors import EngineError

INSTALL_HINT = "--engine ray needs Ray: pip install 'vitkit[ray]'"


def require_ray() -> None:
    """Raise an EngineError naming the extra to install, before importing what needs it (the
    engine modules import pyarrow at load time: without the extra that would be a traceback)."""
    missing = [name for name in ("ray", "pyarrow") if find_spec(name) is None]
    if missing:
        raise EngineError(INSTALL_HINT)
