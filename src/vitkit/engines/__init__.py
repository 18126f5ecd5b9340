"""Engines that run vitkit models past one process: Ray Data (``vitkit[ray]``).

``batch``: callable classes for ``ray.data.Dataset.map_batches`` (no Ray import of their own);
``ray``: the batch job behind ``vitkit predict|embed --engine ray``, with its ``sources``,
output ``shards`` and the ``ids`` set that makes jobs resumable.
"""
