"""Searching what vecmirror mirrors, with the mirror's own model, vector field and metric.

    async with MirrorSearch.open(settings, config) as search:
        hits = await search.knn("docs", text="a small cat", k=5, filter=tag("genre").any_of("pets"))

`SyncMirrorSearch` offers the same calls for scripts.
"""

from vecmirror.query.filters import Filter, num, raw, tag, text
from vecmirror.query.results import Hit
from vecmirror.query.search import MirrorSearch
from vecmirror.query.sync import SyncMirrorSearch

__all__ = ["Filter", "Hit", "MirrorSearch", "SyncMirrorSearch", "num", "raw", "tag", "text"]
