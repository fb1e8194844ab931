"""Partitions shared by the assets: image class x day for ingestion."""

from __future__ import annotations

import dagster as dg

from assets.settings import PARTITIONS_START
from pipelines.sources import CLASSES

class_partitions = dg.StaticPartitionsDefinition(list(CLASSES))
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)
raw_partitions = dg.MultiPartitionsDefinition({"class": class_partitions, "date": daily_partitions})
